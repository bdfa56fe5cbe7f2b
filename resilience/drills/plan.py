"""Drill plans: the YAML schema (pydantic, unknown keys refused) and the production-safety rules.

:func:`load_plan` returns a validated :class:`Plan` or raises :class:`ConfigError` whose
problems read ``file: key: reason`` (exit 2), like ``resilience.yml``'s errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from ..config import Name, Strict, _loc, _reason, parse_yaml
from ..errors import ConfigError

LAB, PRODUCTION = "lab", "production"


# --- the `with:` of each action ----------------------------------------------------------------

class _Host(Strict):
    host: Name


class _Line(Strict):
    line: Name


class _Service(Strict):
    host: Name
    service: Name


class _Nothing(Strict):
    pass


class _Isolate(Strict):
    host: Name
    reason: str = "drill"
    force: bool = False


class _RestoreFiles(Strict):
    hosts: list[Name] = Field(min_length=1)
    snapshot: str = "latest"


class _RestoreDatabase(Strict):
    target: Literal["scratch", "live"] = "scratch"
    snapshot: str = "latest"


class _Failover(Strict):
    to: Name | None = None


class _Backup(Strict):
    files: bool = True
    database: bool = True


class _Wait(Strict):
    seconds: float = Field(ge=0, le=3600)




class StepSpec(Strict):
    """One step of ``method`` or ``rollbacks``: an action and its arguments. ``fault: true``
    marks the moment the fault happens (RTO and RPO are measured from its start);
    ``recovered: true`` marks the step whose successful end is the verified recovery."""

    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    name: str | None = None
    fault: bool = False
    recovered: bool = False
    args: Any = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _known_action(self) -> StepSpec:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r} (known: {', '.join(ACTIONS)})")
        model, _lab = ACTIONS[self.action]
        try:
            self.args = model.model_validate(self.with_ or {})
        except ValidationError as exc:
            why = "; ".join(f"with.{_loc(e['loc'])}: {_reason(e)}" for e in exc.errors())
            raise ValueError(f"{why} (action {self.action})") from None
        return self

    def label(self, index: int) -> str:
        return self.name or f"{index}: {self.action}"


class Targets(Strict):
    rto_s: float = Field(gt=0)
    rpo_s: float | None = Field(default=None, gt=0)


class HttpCheck(Strict):
    kind: Literal["http"]
    # "vip" (the site's URL), a member's name, or (lab mode) "internet": the public address
    # fetched from the lab's internet namespace, through gw1 and the active line.
    via: str = "vip"
    retries: int = Field(default=2, ge=0, le=100)


class SqlCheck(Strict):
    kind: Literal["sql"]
    query: str = Field(min_length=1)
    expect: int | float | str | None = None
    min: float | None = None

    @model_validator(mode="after")
    def _some_expectation(self) -> SqlCheck:
        if self.expect is None and self.min is None:
            raise ValueError("give expect (the first column of the first row) or min")
        return self


class LineCheck(Strict):
    kind: Literal["line"]
    active: Name


class IntegrityCheck(Strict):
    kind: Literal["integrity"]
    hosts: list[Name] | None = None
    snapshot: str = "latest"


Check = Annotated[HttpCheck | SqlCheck | LineCheck | IntegrityCheck, Field(discriminator="kind")]


class _Verify(Strict):
    """``verify``: the given checks (default: the plan's steady-state checks), retried."""

    retries: int = Field(default=6, ge=0, le=100)
    checks: list[Check] | None = None


# action name -> (model of its `with:`, lab only?)
ACTIONS: dict[str, tuple[type[Strict], bool]] = {
    "fault.tamper": (_Host, True),
    "fault.untamper": (_Host, True),
    "fault.line_down": (_Line, True),
    "fault.line_up": (_Line, True),
    "fault.stop": (_Service, True),
    "fault.start": (_Service, True),
    "isolate": (_Isolate, False),
    "rejoin": (_Host, False),
    "member.wipe": (_Host, False),
    "restore.files": (_RestoreFiles, False),
    "restore.database": (_RestoreDatabase, False),
    "line.failover": (_Failover, False),
    "line.failback": (_Nothing, False),
    "backup": (_Backup, False),
    "incident.tamper": (_Host, False),
    "wait": (_Wait, False),
    "verify": (_Verify, False),
}


class Plan(Strict):
    """A validated drill plan; ``path`` is where it was read from."""

    title: str = Field(min_length=1)
    description: str = ""
    mode: Literal["lab", "production"]
    site: Name
    targets: Targets
    steady_state: list[Check] = Field(default_factory=list)
    method: list[StepSpec] = Field(min_length=1)
    rollbacks: list[StepSpec] = Field(default_factory=list)
    path: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _rules(self) -> Plan:
        for problem in safety_problems(self):
            raise ValueError(problem)
        marks = [i for i, s in enumerate(self.method) if s.fault]
        if len(marks) > 1:
            raise ValueError("at most one method step may be marked fault: true")
        rec = [i for i, s in enumerate(self.method) if s.recovered]
        if len(rec) > 1:
            raise ValueError("at most one method step may be marked recovered: true")
        if marks and rec and rec[0] < marks[0]:
            raise ValueError("the recovered step must come after the fault step")
        checks = list(self.steady_state) + [c for s in self.method + self.rollbacks
                                            if s.action == "verify" for c in (s.args.checks or [])]
        if self.mode == PRODUCTION and any(c.kind == "http" and c.via == "internet" for c in checks):
            raise ValueError("http checks via internet use the lab's internet namespace: lab mode only")
        if any(s.fault or s.recovered for s in self.rollbacks):
            raise ValueError("rollbacks: fault/recovered marks belong to method steps")
        return self

    def fault_index(self) -> int:
        """The method step the fault is measured from (the marked one, else the first)."""
        return next((i for i, s in enumerate(self.method) if s.fault), 0)

    def recovered_index(self) -> int | None:
        """The method step whose end is the recovery (None: the after-checks are)."""
        return next((i for i, s in enumerate(self.method) if s.recovered), None)


def safety_problems(plan: Plan) -> list[str]:
    """Why ``plan`` is not allowed in its mode (empty: it is). In production a drill may only
    act on an isolated member or a scratch database: no lab faults, no live database restore,
    no line switch, and file restores/wipes only onto members isolated earlier in the method
    and not yet rejoined. ``member.wipe`` requires an isolated member in every mode."""
    problems: list[str] = []
    isolated: set[str] = set()
    for where, steps in (("method", plan.method), ("rollbacks", plan.rollbacks)):
        for i, s in enumerate(steps):
            label = f"{where}.{i}"
            lab_only = ACTIONS[s.action][1]
            if plan.mode == PRODUCTION:
                if lab_only:
                    problems.append(f"{label}: action {s.action} is a lab fault: refused in production mode")
                elif s.action.startswith("line."):
                    problems.append(f"{label}: action {s.action} switches live traffic: refused in production mode")
                elif s.action == "restore.database" and s.args.target == "live":
                    problems.append(f"{label}: a live database restore is refused in production mode "
                                    "(use target: scratch)")
            if where == "method" and s.action == "isolate":
                isolated.add(s.args.host)
            elif where == "method" and s.action == "rejoin":
                isolated.discard(s.args.host)
            elif s.action == "member.wipe" and (where != "method" or s.args.host not in isolated):
                problems.append(f"{label}: member.wipe needs {s.args.host} isolated by an earlier method step")
            elif s.action == "restore.files" and plan.mode == PRODUCTION and where == "method":
                outside = [h for h in s.args.hosts if h not in isolated]
                if outside:
                    problems.append(f"{label}: restore.files onto {', '.join(outside)}, not isolated: "
                                    "refused in production mode (isolate it first)")
    return problems


def load_plan(path: str | Path) -> Plan:
    """Read and validate the drill plan at ``path``. Raises ConfigError (exit 2) whose problems
    are ``file: key: reason`` lines; nothing else escapes."""
    p = Path(path)
    data = parse_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: (top level): a drill plan is a mapping of keys, not {type(data).__name__}"])
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{p}: {_plan_loc(e['loc'])}: {_reason(e)}" for e in exc.errors()]) from None
    plan.path = str(p)
    return plan


def _plan_loc(loc: tuple[Any, ...]) -> str:
    # The discriminated union adds the kind's tag and our step model its class name: noise.
    drop = {"http", "sql", "line", "integrity"}
    return _loc(tuple(x for x in loc if x not in drop)) or "(top level)"
