"""The runbook engine: a runbook is a named list of steps run as one recorded run.

Each step is a Python callable ``fn(ctx) -> dict | None`` over a shared :class:`Context`;
what it returns becomes the step's details in the evidence ledger and ``ctx.results[name]``
for later steps. A step that raises :class:`Skip` is recorded ``skipped`` with the reason; a
step that raises anything else is recorded ``failed`` and the run stops there (recorded in
the run's end record as ``failed_step``). ``resume`` names an earlier run of the same
runbook: its steps that ended ``ok``/``skipped`` are not run again (recorded ``skipped``
with ``done_in``, their results carried over), the rest run from the first one that did
not succeed, and the new run's parameters name the old run (``resumes``).

Consecutive steps that share a ``group`` run at the same time (threads): independent work
after a containment step (a restore, a package check, a password change) need not wait for
each other. The group ends when all of its steps have; a failure of any stops the run after
the group, named by the first failed step in list order.

Every run ends with an incident report (see :mod:`resilience.runbooks.report`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import UsageError
from ..evidence import Ledger
from ..evidence.query import run_records
from ..evidence.run import FAILED, OK, SKIPPED, Run


class Skip(Exception):
    """Raised by a step that has nothing to do; the message is the recorded reason."""


@dataclass
class Step:
    """One step: ``name`` (unique within the runbook), the callable, the host it acts on,
    and the ``group`` of neighbouring steps it runs concurrently with (None: alone)."""

    name: str
    fn: Callable[[Context], dict[str, Any] | None]
    host: str | None = None
    group: str | None = None


@dataclass
class Context:
    """What steps share: config, ledger, parameters, the open run, earlier steps' results
    and the incident facts the report is built from (``facts``: free keys per runbook)."""

    cfg: Config
    ledger: Ledger
    kind: str
    params: dict[str, Any]
    dry_run: bool
    run: Run | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    linked_runs: list[str] = field(default_factory=list)

    def link(self, sub: dict[str, Any] | None) -> None:
        """Remember the run id of an action this step called (it records its own run)."""
        if isinstance(sub, dict) and sub.get("run"):
            self.linked_runs.append(sub["run"])


@dataclass
class Runbook:
    """A named runbook: ``steps(params)`` builds the step list, ``validate(cfg, params)``
    raises UsageError for bad input (before anything is recorded), ``describe(ctx, outcome)``
    returns the report's five fields and the severity facts."""

    kind: str
    steps: Callable[[Config, dict[str, Any]], list[Step]]
    validate: Callable[[Config, dict[str, Any]], dict[str, Any]]
    describe: Callable[[Context, str], dict[str, Any]]


def action_name(kind: str) -> str:
    """The ledger action of a runbook's runs."""
    return f"incident-{kind}"


def _earlier(ledger: Ledger, kind: str, resume: str) -> tuple[str, dict[str, Any], dict[str, dict]]:
    """(run id, params, {step: record}) of the run to resume; steps done there (or carried
    over into it from a run it resumed) are those that ended ok or skipped."""
    records = run_records(ledger, resume)
    start = next((r for r in records if r.get("type") == "run-start"), None)
    if start is None or start.get("action") != action_name(kind):
        raise UsageError(f"run {resume!r} is not a {kind} runbook run "
                         f"(it is {start.get('action') if start else 'unknown'})")
    if start.get("dry_run"):
        raise UsageError(f"run {start['run']} was a dry run: nothing to resume")
    end = next((r for r in records if r.get("type") == "run-end"), None)
    if end is not None and end.get("outcome") == OK:
        raise UsageError(f"run {start['run']} succeeded: nothing to resume")
    done = {r["step"]: r for r in records if r.get("type") == "step" and r.get("outcome") in (OK, SKIPPED)
            and r.get("details", {}).get("runbook_step")}
    params = {k: v for k, v in (start.get("params") or {}).items() if k != "resumes"}
    return start["run"], params, done


def _batches(steps: list[Step]) -> list[list[Step]]:
    """Steps in order, neighbours of one group together."""
    out: list[list[Step]] = []
    for st in steps:
        if st.group is not None and out and out[-1][-1].group == st.group:
            out[-1].append(st)
        else:
            out.append([st])
    return out


def _carry_over(ctx: Context, run: Run, st: Step, prev: dict[str, Any]) -> None:
    """Record a step done in the resumed run as skipped here, with its results."""
    ctx.results[st.name] = dict(prev.get("details") or {})
    ctx.facts.update((prev.get("details") or {}).get("facts") or {})
    run.record_step(st.name, host=st.host, outcome=SKIPPED,
                    details={"runbook_step": True, "done_in": prev.get("run"),
                             "previous_outcome": prev.get("outcome"), **(prev.get("details") or {})})


def _run_step(ctx: Context, run: Run, st: Step) -> str | None:
    """Run one step as a recorded step; return None, or its error text when it failed."""
    step = run.step(st.name, st.host)
    step.details["runbook_step"] = True
    before = dict(ctx.facts)
    try:
        with step:
            try:
                out = st.fn(ctx) or {}
            except Skip as exc:
                out = {"skipped": str(exc)}
                step.outcome = SKIPPED
            step.details.update(out)
            # Facts the step learnt, so a resumed run's report still has them.
            step.details["facts"] = {k: v for k, v in ctx.facts.items() if before.get(k) != v}
        ctx.results[st.name] = out
        return None
    except Exception as exc:  # noqa: BLE001 - any failure stops the runbook, recorded
        return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def execute(cfg: Config, ledger: Ledger, book: Runbook, params: dict[str, Any], *, dry_run: bool = False,
            resume: str | None = None, report_path: str | None = None) -> dict[str, Any]:
    """Run ``book`` (or resume run ``resume`` of it) and write its report. Returns
    ``{"run", "kind", "outcome", "failed_step", "error", "steps", "report", "resumes"}``;
    never raises for a failed step (the outcome says so), raises UsageError for bad input."""
    from .report import write_report

    done: dict[str, dict] = {}
    old = None
    if resume:
        if dry_run:
            raise UsageError("--resume and --dry-run do not go together: a resume changes what is left")
        old, old_params, done = _earlier(ledger, book.kind, resume)
        # The old run's parameters are the incident; only a few may be given again.
        params = {**old_params, **{k: v for k, v in params.items() if v is not None and k in ("wait",)}}
    params = book.validate(cfg, dict(params))
    steps = book.steps(cfg, params)
    ctx = Context(cfg, ledger, book.kind, params, dry_run)
    run = ledger.start_run(action_name(book.kind), {**params, "resumes": old}, dry_run=dry_run)
    ctx.run = run
    failed_step = error = None
    t0 = time.monotonic()
    with run:
        for batch in _batches(steps):
            todo = []
            for st in batch:
                if st.name in done:
                    _carry_over(ctx, run, st, done[st.name])
                else:
                    todo.append(st)
            if len(todo) > 1:
                with ThreadPoolExecutor(len(todo), thread_name_prefix="runbook") as pool:
                    errors = list(pool.map(lambda st: _run_step(ctx, run, st), todo))
            else:
                errors = [_run_step(ctx, run, st) for st in todo]
            bad = next(((st, e) for st, e in zip(todo, errors, strict=True) if e is not None), None)
            if bad is not None:
                failed_step, error = bad[0].name, bad[1]
                break
        outcome = FAILED if failed_step else OK
        run.details.update(failed_step=failed_step, linked_runs=ctx.linked_runs, resumes=old)
        with run.step("incident report") as rstep:
            report = write_report(ctx, book, outcome, failed_step, error, time.monotonic() - t0, report_path)
            for kind in ("markdown", "json"):
                rstep.artifact(f"incident-report.{'md' if kind == 'markdown' else 'json'}",
                               path=report["paths"][kind])
            rstep.details.update(severity=report["severity"], report_upward=report["report_upward"],
                                 paths=report["paths"])
        run.outcome = outcome
    return {"run": run.id, "kind": book.kind, "dry_run": dry_run, "outcome": outcome,
            "failed_step": failed_step, "error": error, "resumes": old, "params": params,
            "steps": [{"step": s["step"], "host": s.get("host"), "outcome": s["outcome"],
                       "duration_s": s.get("duration_s"), "error": s.get("error")}
                      for s in run.steps if s.get("step") in {x.name for x in steps}],
            "linked_runs": ctx.linked_runs, "report": report}
