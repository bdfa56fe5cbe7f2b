"""``resilience status``: the state of every site at a glance, and what needs attention.

Everything about the past comes from the evidence ledger (one pass over its records, never
the repository: status is the first thing an operator runs and must answer in seconds). The
present — balancer state and quarantine of each member, the active line — is read over SSH
in background threads bounded by ``status.timeout``; what does not answer in time is
reported as ``unknown: <reason>`` and counts as needing attention (nobody can vouch for it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .config import Config
from .evidence import Ledger

# Balancer states that mean a member was taken out on purpose (isolate: DRAIN then MAINT).
_ISOLATED_STATES = ("MAINT", "DRAIN")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def human_age(seconds: float | None) -> str:
    """``3d 2h``, ``5h 10m``, ``42m``, ``15s`` — two units at most."""
    if seconds is None:
        return "?"
    s = int(max(0, seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{s // 60}m" if s >= 60 else f"{s}s"


def _site_of_step(name: str) -> tuple[str, str] | None:
    """(site, part) of a backup step's name: ``backup files of SITE``, ``store database DB of SITE``."""
    if name.startswith("backup files of "):
        return name[len("backup files of "):], "files"
    if name.startswith("store database ") and " of " in name:
        return name.rsplit(" of ", 1)[1], "database"
    return None


def ledger_history(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Every non-dry run of the actions status cares about (backup, verify, drill), by id, in
    ledger order: ``{action, start, end, outcome, params, details, error, parts}`` where
    ``parts`` maps (site, part) of a backup to ``{outcome, snapshot}``. One pass over the
    records (the same source as :mod:`resilience.evidence.query`)."""
    runs: dict[str, dict[str, Any]] = {}
    for rec in ledger.records():
        rid, kind = rec.get("run"), rec.get("type")
        if not rid:
            continue
        if kind == "run-start":
            if rec.get("dry_run") or rec.get("action") not in ("backup", "verify", "drill"):
                continue
            runs[rid] = {"run": rid, "action": rec.get("action"), "start": rec.get("time"), "end": None,
                         "outcome": "incomplete", "params": rec.get("params") or {}, "details": {},
                         "error": None, "parts": {}}
        elif rid not in runs:
            continue
        elif kind == "step":
            where = _site_of_step(str(rec.get("step", "")))
            if where is not None and runs[rid]["action"] == "backup":
                runs[rid]["parts"][where] = {"outcome": rec.get("outcome"),
                                             "snapshot": (rec.get("details") or {}).get("snapshot"),
                                             "error": rec.get("error")}
        elif kind == "run-end":
            runs[rid].update(end=rec.get("time"), outcome=rec.get("outcome"),
                             details=rec.get("details") or {}, error=rec.get("error"))
    return runs


def _stamp(run: dict[str, Any], now: datetime) -> dict[str, Any]:
    t = _parse_time(run.get("start"))
    return {"run": run["run"], "time": run.get("start"), "age_s": (now - t).total_seconds() if t else None}


def _backup_of(cfg: Config, site: str, runs: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    s = cfg.site(site)
    wanted = [p for p, there in (("files", s.files), ("database", s.database)) if there is not None]
    last_good: dict[str, dict[str, Any]] = {}
    last_run = None
    for run in runs:
        if run["action"] != "backup" or site not in (run["params"].get("sites") or []):
            continue
        if run["outcome"] == "incomplete":
            continue  # running now, or crashed: it cannot be judged; the age check catches a crash
        mine = {part: v for (name, part), v in run["parts"].items() if name == site}
        if run["outcome"] == "failed" and not mine:
            outcome = "failed"  # failed before reaching this site (repository, lock…)
        elif any(v["outcome"] == "failed" for v in mine.values()):
            outcome = "failed"
        elif any(v["outcome"] == "partial" for v in mine.values()):
            outcome = "partial"
        else:
            outcome = "ok" if mine else run["outcome"]
        errors = [v["error"] for v in mine.values() if v.get("error")] or ([run["error"]] if run["error"] else [])
        last_run = {**_stamp(run, now), "outcome": outcome, "error": errors[0] if errors else None}
        for part, v in mine.items():
            if v["outcome"] == "ok" and v.get("snapshot"):
                last_good[part] = {**_stamp(run, now), "snapshot": v["snapshot"]}
    good = None
    if last_good:
        # The site is only as fresh as its stalest part.
        oldest = min((last_good[p] for p in wanted if p in last_good), key=lambda x: x["time"],
                     default=next(iter(last_good.values())))
        missing = [p for p in wanted if p not in last_good]
        good = {"time": oldest["time"], "age_s": oldest["age_s"], "run": oldest["run"],
                **{p: last_good.get(p) for p in wanted}, "missing": missing}
    return {"last_good": good, "last_run": last_run, "parts": wanted}


def _latest(runs: list[dict[str, Any]], action: str, now: datetime,
            match: Callable[[dict[str, Any]], bool] = lambda r: True) -> dict[str, Any] | None:
    done = [r for r in runs if r["action"] == action and r["outcome"] != "incomplete" and match(r)]
    return done[-1] if done else None


def _verify_of(runs: list[dict[str, Any]], now: datetime) -> dict[str, Any] | None:
    r = _latest(runs, "verify", now)
    if r is None:
        return None
    return {**_stamp(r, now), "ok": r["outcome"] == "ok", "outcome": r["outcome"],
            "read_data": r["params"].get("read_data"), "error": r["error"]}


def _drill_of(site: str, runs: list[dict[str, Any]], now: datetime) -> dict[str, Any] | None:
    r = _latest(runs, "drill", now, lambda r: r["params"].get("site") in (site, None))
    if r is None:
        return None
    d, p = r["details"], r["params"]
    error = r["error"]
    if error is None and r["outcome"] != "ok":
        # A drill that ran to its end records why it failed in its details, not as an error.
        missed = [k for k, v in (d.get("targets_met") or {}).items() if v is False]
        error = (f"step {d['failed_step']!r} failed" if d.get("failed_step")
                 else f"target missed: {', '.join(missed)}" if missed else None)
    # Drill runs record rto_s/rpo_s/targets; an older or aborted one may lack them.
    return {**_stamp(r, now), "ok": r["outcome"] == "ok", "outcome": r["outcome"],
            "plan": p.get("plan"), "title": p.get("title"), "rto_s": d.get("rto_s"), "rpo_s": d.get("rpo_s"),
            "targets": d.get("targets") or p.get("targets"), "targets_met": d.get("targets_met"),
            "error": error}


class _Background:
    """Run ``fn`` in a daemon thread; :meth:`result` waits until a shared deadline. A daemon
    thread, because a member that hangs must not keep the command from exiting."""

    def __init__(self, fn: Callable[[], Any]):
        self.value: Any = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except Exception as exc:  # noqa: BLE001 - reported as "unknown: <reason>"
            from .evidence.redact import redact_text

            self.error = redact_text(getattr(exc, "message", None) or str(exc) or type(exc).__name__)

    def result(self, deadline: float, timeout: float) -> tuple[Any, str | None]:
        self.thread.join(max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            return None, f"no answer within {timeout:g}s"
        return self.value, self.error


def _read_members(cfg: Config, site: str) -> list[dict[str, Any]]:
    from .control.cluster import members

    return members(cfg, site)


def _read_line(cfg: Config) -> dict[str, Any]:
    from .control import lines
    from .control.ssh import SSH

    st = lines.setup(cfg)
    with SSH() as ssh:
        act = lines.active_state(ssh, st)
    return {**act, "primary": st.gw.order[0], "lines": list(st.gw.order)}


def _member_view(m: dict[str, Any]) -> dict[str, Any]:
    state = m.get("balancer_state") or "absent"
    isolated = bool(m.get("quarantined")) or state.split()[0] in _ISOLATED_STATES
    return {"host": m["host"], "balancer_state": state, "serving": m.get("serving"),
            "quarantined": m.get("quarantined"), "isolated": isolated}


def collect(cfg: Config, ledger: Ledger, *, now: datetime | None = None) -> dict[str, Any]:
    """The whole status: ``{ok, attention: [reason…], time, sites: {NAME: {backup, verify,
    drill, members}}, verify, line, ledger, thresholds}``. ``ok`` is False when any reason
    was found; nothing here raises for an unreachable host or a damaged ledger."""
    now = now or datetime.now(UTC)
    sc = cfg.status
    timeout = sc.timeout
    # Unreachable hosts must fail within the status budget, not ssh's usual connect timeout.
    fast = cfg.model_copy(update={"ssh": cfg.ssh.model_copy(
        update={"connect_timeout": min(cfg.ssh.connect_timeout, max(1.0, timeout - 1))})})
    deadline = time.monotonic() + timeout
    remote_members = {name: _Background(lambda n=name: _read_members(fast, n))
                      for name, s in sorted(cfg.sites.items()) if s.balancer is not None and s.files is not None}
    remote_line = _Background(lambda: _read_line(fast)) if cfg.lines is not None else None

    attention: list[str] = []
    try:
        verified = ledger.verify()
        ledger_view = {**verified.as_dict(), "dir": str(ledger.dir)}
        if not verified.ok:
            attention.append(f"evidence ledger does not verify: {verified.reason}")
        # Shown even when the ledger does not verify (marked so above) rather than nothing.
        runs = list(ledger_history(ledger).values())
    except Exception as exc:  # noqa: BLE001 - a damaged ledger is a finding, not a crash
        ledger_view = {"ok": False, "reason": getattr(exc, "message", str(exc)), "dir": str(ledger.dir)}
        attention.append(f"evidence ledger unreadable: {ledger_view['reason']}")
        runs = []

    verify = _verify_of(runs, now)
    if sc.max_verify_age is not None:
        if verify is None:
            attention.append("no verify recorded")
        elif verify["age_s"] is not None and verify["age_s"] > sc.max_verify_age:
            attention.append(f"last verify is {human_age(verify['age_s'])} old (max {human_age(sc.max_verify_age)})")
    if verify is not None and not verify["ok"]:
        attention.append(f"last verify {verify['outcome']}: {verify['error'] or 'damage found'} (run {verify['run']})")

    sites: dict[str, Any] = {}
    for name in sorted(cfg.sites):
        b = _backup_of(cfg, name, runs, now)
        drill = _drill_of(name, runs, now)
        sites[name] = {"backup": b, "verify": verify, "drill": drill, "members": None}
        good, last = b["last_good"], b["last_run"]
        if good is None:
            attention.append(f"{name}: no good backup recorded")
        else:
            if sc.max_backup_age is not None and good["age_s"] is not None and good["age_s"] > sc.max_backup_age:
                attention.append(f"{name}: last good backup is {human_age(good['age_s'])} old "
                                 f"(max {human_age(sc.max_backup_age)})")
            if good["missing"]:
                attention.append(f"{name}: no good backup of its {', '.join(good['missing'])}")
        if last is not None and last["outcome"] in ("failed", "partial"):
            attention.append(f"{name}: last backup {last['outcome']}"
                             + (f": {last['error']}" if last.get("error") else "") + f" (run {last['run']})")
        if drill is None:
            if sc.max_drill_age is not None:
                attention.append(f"{name}: no drill recorded")
        else:
            if not drill["ok"]:
                attention.append(f"{name}: last drill {drill['outcome']}"
                                 + (f": {drill['error']}" if drill.get("error") else "") + f" (run {drill['run']})")
            if sc.max_drill_age is not None and drill["age_s"] is not None and drill["age_s"] > sc.max_drill_age:
                attention.append(f"{name}: last drill is {human_age(drill['age_s'])} old "
                                 f"(max {human_age(sc.max_drill_age)})")

    for name, job in remote_members.items():
        value, error = job.result(deadline, timeout)
        if error is not None:
            sites[name]["members"] = {"unknown": error}
            attention.append(f"{name}: members unknown: {error}")
            continue
        view = [_member_view(m) for m in value]
        sites[name]["members"] = view
        for m in view:
            if m["quarantined"] is None:
                attention.append(f"{name}: {m['host']}: quarantine unknown (host did not answer)")
            if m["isolated"]:
                why = "quarantined" if m["quarantined"] else f"balancer {m['balancer_state']}"
                attention.append(f"{name}: {m['host']} is isolated ({why})")
            elif not m["serving"]:
                attention.append(f"{name}: {m['host']} is not serving (balancer {m['balancer_state']})")

    line = None
    if remote_line is not None:
        value, error = remote_line.result(deadline, timeout)
        if error is not None:
            line = {"unknown": error}
            attention.append(f"line unknown: {error}")
        else:
            line = value
            if value["active"] is None:
                attention.append(f"no active line (gateway {value['gateway']}, upstream {value['upstream']})")
            elif value["active"] != value["primary"]:
                attention.append(f"standby line {value['active']} is active (primary {value['primary']})")

    return {"ok": not attention, "attention": attention, "time": now.isoformat(timespec="seconds"),
            "sites": sites, "verify": verify, "line": line, "ledger": ledger_view,
            "thresholds": {"max_backup_age_s": sc.max_backup_age, "max_verify_age_s": sc.max_verify_age,
                           "max_drill_age_s": sc.max_drill_age, "timeout_s": timeout}}
