"""The line decision as a pure state machine: probe rounds in, actions out.

No I/O and no clock of its own (the caller passes ``now``), so every rule is unit-testable:

- a line goes **down** after ``down_after`` consecutive bad rounds and comes **up** after
  ``up_after`` consecutive good ones (hysteresis: a line that fails every other round never
  changes state, whichever state it is in);
- lines start *up* (as mwan3's ``initial_state online``): a watcher that starts on a dead line
  needs ``down_after`` rounds to act, not ``up_after``;
- when the active line is down (or no line is active) and another line is up, switch to the
  first up line in preference order (**failover**);
- when the preferred line has been up, without a single bad round, for ``failback_hold``
  seconds and another line is active, switch back (**failback**), if ``auto_failback``;
- when every line is down, raise the alarm once; clear it once a line is up again.

A round result of ``None`` for a line means "no data" (e.g. the probe session broke): it
changes no counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

FAILOVER, FAILBACK, ALARM, ALARM_CLEARED, LINE_DOWN, LINE_UP = (
    "failover", "failback", "alarm", "alarm-cleared", "line-down", "line-up")


@dataclass(frozen=True)
class Policy:
    """Thresholds; ``order`` is the preference order, the first one being the primary."""

    order: tuple[str, ...]
    down_after: int = 3
    up_after: int = 5
    failback_hold: float = 60.0
    auto_failback: bool = True

    def __post_init__(self) -> None:
        if not self.order or len(set(self.order)) != len(self.order):
            raise ValueError("order must name each line once")
        if self.down_after < 1 or self.up_after < 1 or self.failback_hold < 0:
            raise ValueError("down_after and up_after must be >= 1, failback_hold >= 0")


@dataclass(frozen=True)
class LineHealth:
    up: bool = True
    good: int = 0          # consecutive good rounds
    bad: int = 0           # consecutive bad rounds
    since: float | None = None  # up and clean (no bad round) since; None: since the start


@dataclass(frozen=True)
class State:
    lines: dict[str, LineHealth]
    active: str | None
    alarm: bool = False
    started: float = 0.0


@dataclass(frozen=True)
class Action:
    """What the caller should do. ``kind`` is one of the module constants; ``line`` is the
    line switched to (failover/failback) or the line that changed (line-down/line-up)."""

    kind: str
    line: str | None = None
    reason: str = ""
    details: dict = field(default_factory=dict, compare=False)


def initial(policy: Policy, active: str | None, now: float) -> State:
    """The state before any round: every line up, ``active`` as read from the gateway."""
    return State({n: LineHealth() for n in policy.order}, active, False, now)


def _update_line(h: LineHealth, ok: bool | None, policy: Policy, now: float) -> LineHealth:
    if ok is None:
        return h
    if ok:
        h = replace(h, good=h.good + 1, bad=0)
        if not h.up and h.good >= policy.up_after:
            h = replace(h, up=True, since=now)
    else:
        # A bad round restarts the failback hold even when the line stays up: a primary
        # must be clean for the whole hold before traffic goes back to it.
        h = replace(h, bad=h.bad + 1, good=0, since=now if h.up else None)
        if h.up and h.bad >= policy.down_after:
            h = replace(h, up=False, since=None)
    return h


def step(state: State, policy: Policy, results: dict[str, bool | None], now: float
         ) -> tuple[State, list[Action]]:
    """Feed one probe round (``{line: good?}``; missing lines count as no data) and return
    the new state and the actions to take, in order. After a switch action the returned
    state already names the new active line: if the switch fails, the caller records that
    and passes ``replace(state, active=actual)``."""
    actions: list[Action] = []
    lines = {}
    for name in policy.order:
        before = state.lines.get(name, LineHealth())
        after = _update_line(before, results.get(name), policy, now)
        if before.up and not after.up:
            actions.append(Action(LINE_DOWN, name, f"{after.bad} bad rounds in a row"))
        elif after.up and not before.up:
            actions.append(Action(LINE_UP, name, f"{after.good} good rounds in a row"))
        lines[name] = after
    up = [n for n in policy.order if lines[n].up]
    active, alarm = state.active, state.alarm

    if not up:
        if not alarm:
            actions.append(Action(ALARM, None, "every line is down", {"active": active}))
            alarm = True
        return State(lines, active, alarm, state.started), actions
    if alarm:
        actions.append(Action(ALARM_CLEARED, None, f"line {up[0]} is up again"))
        alarm = False

    if active not in up:
        why = "no line is active" if active is None else f"active line {active} is down"
        target = up[0]
        kind = FAILBACK if target == policy.order[0] else FAILOVER
        actions.append(Action(kind, target, why))
        active = target
    elif active != policy.order[0] and policy.auto_failback and policy.order[0] in up:
        primary = lines[policy.order[0]]
        up_since = primary.since if primary.since is not None else state.started
        if now - up_since >= policy.failback_hold:
            actions.append(Action(FAILBACK, policy.order[0],
                                  f"{policy.order[0]} up for {now - up_since:.1f}s "
                                  f"(hold {policy.failback_hold:g}s)"))
            active = policy.order[0]
    return State(lines, active, alarm, state.started), actions


def to_json(state: State) -> dict:
    """A JSON-able form of ``state`` (for the watcher's state file under cron)."""
    return {"active": state.active, "alarm": state.alarm, "started": state.started,
            "lines": {n: {"up": h.up, "good": h.good, "bad": h.bad, "since": h.since}
                      for n, h in state.lines.items()}}


def from_json(data: dict, policy: Policy, now: float) -> State:
    """Inverse of :func:`to_json`; lines not in ``data`` start up. Bad data → a fresh state."""
    try:
        lines = {n: LineHealth(bool(v["up"]), int(v["good"]), int(v["bad"]),
                               None if v.get("since") is None else float(v["since"]))
                 for n, v in data.get("lines", {}).items() if n in policy.order}
        state = State({n: lines.get(n, LineHealth()) for n in policy.order},
                      data.get("active"), bool(data.get("alarm")),
                      float(data.get("started", now)))
    except (KeyError, TypeError, ValueError, AttributeError):
        return initial(policy, None, now)
    return state
