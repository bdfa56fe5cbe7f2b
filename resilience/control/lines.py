"""Line failover: status, failover/failback (a recorded switch), and the watcher.

A switch is one evidence run (``line-failover`` / ``line-failback``) of steps:

1. ``decision`` — why, from which line to which, the probe data behind it;
2. ``playbook line_switch.yml`` — the gateway's default route, through Ansible
   (see :mod:`resilience.control.switch`); check mode with ``dry_run``;
3. ``upstream`` — the configured ``lines.upstream_command`` on the ops host, with ``{line}``
   substituted (in production the DNS/BGP change outside the site; in the lab
   ``resilience lab upstream LINE``); not run with ``dry_run``;
4. ``verify`` — the gateway's default route (and the upstream, when
   ``lines.upstream_status_command`` is set) read back.

The watcher feeds probe rounds (:mod:`resilience.control.probe`) to the pure state machine
(:mod:`resilience.control.hysteresis`) and carries out its actions; an alarm (every line
down) and its clearing are runs of their own, sent to the notification hooks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .. import notify
from ..config import Config, LinesConfig
from ..errors import ResilienceError, TemporaryError, UsageError
from ..evidence.redact import redact_text
from ..fsutil import atomic_write
from ..state import state_dir
from . import hysteresis as H
from .probe import Gateway, ProbeStream, Round, gateway_from_inventory, lines_config, probe_rounds
from .ssh import SSH, target_for
from .switch import ArmedSwitch, NotArmed, switch_gateway


@dataclass(frozen=True)
class Setup:
    """Everything a line action needs, read once: config section, gateway, policy."""

    cfg: Config
    lc: LinesConfig
    gw: Gateway
    policy: H.Policy


def setup(cfg: Config, *, interval: float | None = None, failback_hold: float | None = None,
          down_after: int | None = None, up_after: int | None = None) -> Setup:
    """Read the lines section and the gateway's inventory variables; keyword arguments
    override the config (the CLI's ``watch`` options). UsageError when something is missing."""
    lc = lines_config(cfg)
    updates = {k: v for k, v in (("interval", interval), ("failback_hold", failback_hold),
                                 ("down_after", down_after), ("up_after", up_after))
               if v is not None}
    if updates:
        lc = lc.model_copy(update=updates)
    gw = gateway_from_inventory(cfg)
    policy = H.Policy(gw.order, lc.down_after, lc.up_after, lc.failback_hold, lc.auto_failback)
    return Setup(cfg, lc, gw, policy)


# --- reading the active line ----------------------------------------------------------------

def _hook_argv(argv: list[str], **subst: str) -> list[str]:
    out = [a.format_map(_Subst(subst)) for a in argv]
    if out[0] == "resilience":
        # This very installation, whatever PATH cron gives us.
        script = Path(sys.executable).with_name("resilience")
        out[0:1] = [str(script)] if script.exists() else [sys.executable, "-m", "resilience"]
    return out


class _Subst(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def run_hook(lc: LinesConfig, argv: list[str], **subst: str) -> dict:
    """Run a configured hook command (no shell) and return ``{argv, rc, stdout, error}``.
    Raises ResilienceError when it cannot start, fails or times out."""
    full = _hook_argv(argv, **subst)
    try:
        proc = subprocess.run(full, capture_output=True, text=True, timeout=lc.hook_timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ResilienceError(f"hook {os.path.basename(full[0])} timed out after "
                              f"{lc.hook_timeout:g}s") from None
    except OSError as exc:
        raise ResilienceError(f"hook {full[0]}: cannot run: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        raise ResilienceError(f"hook {os.path.basename(full[0])} failed (exit "
                              f"{proc.returncode}): {redact_text(tail)}")
    return {"argv": full, "rc": 0, "stdout": redact_text(proc.stdout.strip())[:500]}


def gateway_line(ssh: SSH, st: Setup) -> str | None:
    """The line the gateway's default route uses now (None: no route, or no line's)."""
    proc = ssh.run(target_for(st.cfg, st.gw.host), "ip -4 route show default", timeout=15)
    for text in proc.stdout.decode("utf-8", "replace").splitlines():
        parts = text.split()
        if "via" in parts[:-1]:
            line = st.gw.line_by_gateway(parts[parts.index("via") + 1])
            if line:
                return line
    return None


def upstream_line(st: Setup) -> str | None:
    """What ``lines.upstream_status_command`` prints (a line name), or None when it is not
    configured or names no line."""
    if not st.lc.upstream_status_command:
        return None
    out = run_hook(st.lc, st.lc.upstream_status_command, gateway=st.gw.host)["stdout"]
    name = out.split()[0] if out.split() else ""
    return name if name in st.gw.lines else None


def active_state(ssh: SSH, st: Setup) -> dict:
    """``{"active", "gateway", "upstream"}``: ``active`` is the gateway's line when the
    upstream agrees (or cannot be read: no status command), else None — a switch half done."""
    gw = gateway_line(ssh, st)
    if st.lc.upstream_status_command:
        up = upstream_line(st)
        return {"active": gw if gw == up else None, "gateway": gw, "upstream": up}
    return {"active": gw, "gateway": gw, "upstream": "unknown"}


# --- status -------------------------------------------------------------------------------

def status(cfg: Config, *, rounds: int = 1) -> dict:
    """Probe every line for ``rounds`` rounds now and read the active line.

    Returns ``{"active", "gateway", "routes", "lines": {NAME: {"healthy", "active",
    "interface", "address", "next_hop", "loss_pct", "rtt_ms", "answered", "sent",
    "targets_answered"}}, "policy"}``. A line is healthy when its last round was good
    (``reliability`` targets answered)."""
    st = setup(cfg)
    with SSH() as ssh:
        got = probe_rounds(ssh, cfg, st.gw, rounds)
        act = active_state(ssh, st)
    last = got[-1]
    lines = {}
    for name, spec in st.gw.lines.items():
        lr = last.lines[name]
        lines[name] = {"healthy": lr.good(st.lc.reliability), "active": act["active"] == name,
                       "interface": spec.interface, "address": spec.address,
                       "next_hop": spec.gateway, **lr.as_dict()}
    return {"active": act["active"], "gateway": st.gw.host,
            "routes": {"gateway": act["gateway"], "upstream": act["upstream"]},
            "lines": lines, "policy": policy_dict(st)}


def policy_dict(st: Setup) -> dict:
    lc = st.lc
    return {"primary": st.gw.order[0], "interval_s": lc.interval, "timeout_s": lc.probe_timeout,
            "down_after": lc.down_after, "up_after": lc.up_after, "reliability": lc.reliability,
            "failback_hold_s": lc.failback_hold, "auto_failback": lc.auto_failback,
            "targets": list(st.gw.targets)}


# --- switching ----------------------------------------------------------------------------

def switch(st: Setup, ledger, to: str, *, kind: str, reason: str, dry_run: bool = False,
           previous: str | None = None, evidence: dict | None = None,
           ssh: SSH | None = None, armed: ArmedSwitch | None = None) -> dict:
    """Make line ``to`` the active one: gateway route (playbook; through ``armed`` when given
    and still waiting), then the upstream hook, then read back. One evidence run ``line-KIND``. Returns ``{"run", "from", "to", "changed",
    "dry_run", "state", "elapsed_s"}``; raises ResilienceError (run recorded as failed) when
    a step fails."""
    if to not in st.gw.lines:
        raise UsageError(f"unknown line {to!r} (lines of {st.gw.host}: {', '.join(st.gw.order)})")
    t0 = time.monotonic()
    own_ssh = ssh is None
    ssh = ssh or SSH()
    run = ledger.start_run(f"line-{kind}", {"to": to, "from": previous, "gateway": st.gw.host,
                                            "reason": reason}, dry_run=dry_run)
    try:
        with run:
            run.record_step("decision", host=st.gw.host, details={
                "from": previous, "to": to, "reason": reason, **(evidence or {})})
            hook = {}
            subst = {"line": to, "previous": previous or "", "gateway": st.gw.host}

            def upstream_now() -> None:
                # Called once the gateway has switched; with an armed ansible-playbook that is
                # before ansible has finished the play (~0.5-1 s of exit it need not wait for).
                t = time.monotonic()
                try:
                    hook["result"] = run_hook(st.lc, st.lc.upstream_command, **subst)
                except ResilienceError as exc:
                    hook["error"] = exc
                hook["elapsed_s"] = round(time.monotonic() - t, 3)

            early = upstream_now if st.lc.upstream_command and not dry_run else None
            result = None
            if armed is not None:
                try:
                    result = armed.fire(to, run=run, on_switched=early)
                except NotArmed:
                    result = None  # nothing changed: fall through to a cold run
            if result is None:
                result = switch_gateway(st.cfg, st.lc.playbook, st.gw.host, to, check=dry_run,
                                        run=run)
            with run.step("upstream") as step:
                if not st.lc.upstream_command:
                    step.details["note"] = "no lines.upstream_command configured"
                    step.outcome = "skipped"
                elif dry_run:
                    step.details["would_run"] = _hook_argv(st.lc.upstream_command, **subst)
                    step.outcome = "skipped"
                else:
                    if not hook:
                        upstream_now()
                    step.details["elapsed_s"] = hook["elapsed_s"]
                    if "error" in hook:
                        raise hook["error"]
                    step.details.update(hook["result"])
            state = None
            if not dry_run:
                with run.step("verify", host=st.gw.host) as step:
                    state = active_state(ssh, st)
                    step.details.update(state)
                    if state["gateway"] != to or state["upstream"] not in (to, "unknown"):
                        raise ResilienceError(
                            f"after the switch the gateway uses {state['gateway']} and the "
                            f"upstream {state['upstream']}, not {to}")
            elapsed = round(time.monotonic() - t0, 3)
            run.details.update({"to": to, "changed": result["changed"], "elapsed_s": elapsed})
    finally:
        if own_ssh:
            ssh.close()
    return {"run": run.id, "action": kind, "from": previous, "to": to,
            "changed": result["changed"], "dry_run": dry_run, "state": state,
            "elapsed_s": elapsed}


def _check_target(ssh: SSH, st: Setup, to: str, force: bool) -> dict:
    """Probe once and refuse to switch to a line that does not answer (unless ``force``)."""
    rnd = probe_rounds(ssh, st.cfg, st.gw, 1)[-1]
    probe = {n: lr.as_dict() for n, lr in rnd.lines.items()}
    if not rnd.lines[to].good(st.lc.reliability) and not force:
        raise ResilienceError(f"line {to} does not answer its probes "
                              f"({rnd.lines[to].answered}/{rnd.lines[to].total}); "
                              "use --force to switch anyway")
    return probe


def failover(cfg: Config, ledger, *, to: str | None = None, dry_run: bool = False,
             force: bool = False) -> dict:
    """Manual failover to ``to`` (default: the first line that is not active now)."""
    st = setup(cfg)
    if to is not None and to not in st.gw.lines:
        raise UsageError(f"unknown line {to!r} (lines of {st.gw.host}: {', '.join(st.gw.order)})")
    with SSH() as ssh:
        now = active_state(ssh, st)
        target = to or next(n for n in st.gw.order if n != now["gateway"])
        probe = _check_target(ssh, st, target, force)
        return switch(st, ledger, target, kind="failover", reason="manual failover",
                      dry_run=dry_run, previous=now["gateway"], evidence={"probe": probe},
                      ssh=ssh)


def failback(cfg: Config, ledger, *, dry_run: bool = False, force: bool = False) -> dict:
    """Manual failback to the primary line (refused while it does not answer, unless
    ``force``)."""
    st = setup(cfg)
    with SSH() as ssh:
        now = active_state(ssh, st)
        probe = _check_target(ssh, st, st.gw.order[0], force)
        return switch(st, ledger, st.gw.order[0], kind="failback", reason="manual failback",
                      dry_run=dry_run, previous=now["gateway"], evidence={"probe": probe},
                      ssh=ssh)


# --- the watcher --------------------------------------------------------------------------

def state_file(gateway: str) -> Path:
    """Where ``watch --once`` keeps the hysteresis counters between cron runs."""
    return state_dir() / f"lines-{gateway}.json"


class Watcher:
    """Carries out the state machine's actions. ``emit`` gets one dict per event (the CLI
    prints it); every switch, alarm and line change is an evidence run."""

    def __init__(self, st: Setup, ledger, ssh: SSH, *, dry_run: bool = False,
                 emit: Callable[[dict], None] = lambda e: None):
        self.st, self.ledger, self.ssh, self.dry_run, self.emit = st, ledger, ssh, dry_run, emit
        self.recent: list[dict] = []  # the last rounds, kept as evidence for a decision
        self.armed: ArmedSwitch | None = None
        self.announced = False  # the "armed" event of the current armed playbook was sent

    def arm(self) -> None:
        """Start the next switch's playbook now, if ``lines.arm`` (see ArmedSwitch)."""
        if self.st.lc.arm and (self.armed is None or not self.armed.alive()):
            self.armed = ArmedSwitch(self.st.cfg, self.st.lc.playbook, self.st.gw.host,
                                     check=self.dry_run)
            self.armed.arm()
            self.announced = False

    def close(self) -> None:
        if self.armed is not None:
            self.armed.disarm()
            self.armed = None

    def handle(self, state: H.State, rnd: Round, now: float) -> H.State:
        """Feed one round; do what it decides; return the state to continue with."""
        results = rnd.results(self.st.lc.reliability)
        self.recent = (self.recent + [{"round": rnd.seq, **{
            n: {"good": results[n], **lr.as_dict()} for n, lr in rnd.lines.items()}}])[-10:]
        if self.armed is not None and not self.announced and self.armed.ready():
            self.announced = True
            self.emit({"event": "armed", "time": time.time()})
        before = state.active
        decided = time.time()
        state, actions = H.step(state, self.st.policy, results, now)
        # The switch first: recording "line down" can wait, the traffic cannot. The switch's
        # own decision step carries the same rounds.
        switching = (H.FAILOVER, H.FAILBACK)
        for act in sorted(actions, key=lambda a: a.kind not in switching):
            state = self._do(state, act, before, decided)
        return state

    def _do(self, state: H.State, act: H.Action, before: str | None, decided: float) -> H.State:
        ev = {"event": act.kind, "line": act.line, "reason": act.reason,
              "decided": decided, "time": time.time(), "dry_run": self.dry_run}
        if act.kind in (H.FAILOVER, H.FAILBACK):
            try:
                armed, self.armed = self.armed, None
                try:
                    res = switch(self.st, self.ledger, act.line, kind=act.kind,
                                 reason=act.reason, dry_run=self.dry_run, previous=before,
                                 evidence={"rounds": self.recent}, ssh=self.ssh, armed=armed)
                finally:
                    if armed is not None:
                        armed.disarm()  # no-op when it fired
                    self.arm()
                ev.update({"from": before, "run": res["run"], "elapsed_s": res["elapsed_s"],
                           "changed": res["changed"]})
                self._notify(f"lines.{act.kind}", f"{act.kind} {before} -> {act.line}: "
                             f"{act.reason}", "warning" if act.kind == H.FAILOVER else "info", ev)
            except (ResilienceError, OSError) as exc:
                ev.update({"event": f"{act.kind}-failed", "from": before,
                           "error": redact_text(str(exc))})
                self._notify(f"lines.{act.kind}-failed", f"{act.kind} to {act.line} failed: "
                             f"{exc}", "critical", ev)
                # Whatever the gateway really uses now is what the next round starts from.
                state = replace(state, active=self._actual())
        else:
            run = self.ledger.start_run(f"line-{act.kind}", {"line": act.line, "reason": act.reason,
                                                            "gateway": self.st.gw.host},
                                        dry_run=self.dry_run)
            with run:
                run.record_step(act.kind, host=self.st.gw.host,
                                details={"line": act.line, "reason": act.reason,
                                         "active": state.active, "rounds": self.recent})
                if act.kind in (H.ALARM, H.ALARM_CLEARED):
                    severity = "critical" if act.kind == H.ALARM else "info"
                    summary = ("every line of " + self.st.gw.host + " is down"
                               if act.kind == H.ALARM else f"{self.st.gw.host}: {act.reason}")
                    with run.step("notify") as step:
                        step.details["sent"] = self._notify(
                            "lines.all-down" if act.kind == H.ALARM else "lines.recovered",
                            summary, severity, ev)
            ev["run"] = run.id
        self.emit(ev)
        return state

    def _notify(self, name: str, summary: str, severity: str, ev: dict) -> list[dict]:
        payload = notify.event(name, summary, severity=severity, details={
            "gateway": self.st.gw.host, **{k: v for k, v in ev.items()
                                           if k not in ("time", "decided")}})
        return notify.send(self.st.cfg.notify, payload)

    def _actual(self) -> str | None:
        try:
            return gateway_line(self.ssh, self.st)
        except ResilienceError:
            return None


def watch(cfg: Config, ledger, *, once: bool = False, dry_run: bool = False,
          emit: Callable[[dict], None] = lambda e: None, max_seconds: float | None = None,
          **overrides) -> dict:
    """Watch the lines and act. ``once``: one probe round, counters kept in
    :func:`state_file` between runs (for cron). Otherwise run until Ctrl-C (or
    ``max_seconds``), reconnecting the probe session when it breaks. Returns a summary."""
    st = setup(cfg, **overrides)
    with SSH() as ssh:
        watcher = Watcher(st, ledger, ssh, dry_run=dry_run, emit=emit)
        if once:
            return _once(st, watcher, ssh)
        state = H.initial(st.policy, gateway_line(ssh, st), time.monotonic())
        watcher.arm()
        try:
            return _loop(st, watcher, ssh, state, emit, max_seconds)
        finally:
            watcher.close()


def _loop(st: Setup, watcher: Watcher, ssh: SSH, state: H.State, emit, max_seconds) -> dict:
    emit({"event": "watching", "active": state.active, "time": time.time(),
          "policy": policy_dict(st)})
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    rounds = 0
    while deadline is None or time.monotonic() < deadline:
        try:
            with ProbeStream(ssh, target_for(st.cfg, st.gw.host), st.gw,
                             interval=st.lc.interval, timeout=st.lc.probe_timeout) as stream:
                for rnd in stream:
                    rounds += 1
                    state = watcher.handle(state, rnd, time.monotonic())
                    if deadline is not None and time.monotonic() >= deadline:
                        break
        except TemporaryError as exc:
            # The gateway itself is unreachable from the ops host: no data, no decision.
            emit({"event": "probe-error", "error": str(exc), "time": time.time()})
            time.sleep(min(5.0, max(1.0, st.lc.interval)))
    return {"rounds": rounds, "active": state.active, "alarm": state.alarm}


def _once(st: Setup, watcher: Watcher, ssh: SSH) -> dict:
    path = state_file(st.gw.host)
    now = time.time()
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    state = H.from_json(saved, st.policy, now)
    # The gateway is the truth about the active line, whatever the file says.
    state = replace(state, active=gateway_line(ssh, st))
    rnd = probe_rounds(ssh, st.cfg, st.gw, 1)[-1]
    state = watcher.handle(state, rnd, now)
    if not watcher.dry_run:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, json.dumps(H.to_json(state)).encode())
    return {"rounds": 1, "active": state.active, "alarm": state.alarm,
            "lines": {n: {"up": h.up, "good": h.good, "bad": h.bad}
                      for n, h in state.lines.items()}}
