"""Run a drill plan as one recorded ``drill`` run and measure RTO/RPO.

Order: steady-state checks before (a failure stops the drill: nothing was changed) → the
method's steps in order (the first failure stops them) → on a failure, *every* rollback in
the plan's order (each recorded; a failing rollback does not stop the next) → steady-state
checks after → RTO/RPO against the targets. The run's details carry ``rto_s``, ``rpo_s``,
``targets``, ``plan``, ``passed`` (read by ``resilience report`` and ``resilience status``).

RTO = verified recovery − fault: from the start of the fault step (marked ``fault: true``,
else the first method step) to the end of the step marked ``recovered: true`` (else the end
of the passing steady-state checks after the method). RPO = fault time − the time of the
oldest snapshot a restore of the method used.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ResilienceError, UsageError
from ..evidence import Ledger
from ..evidence.query import list_runs, run_records
from ..evidence.run import FAILED, OK, SKIPPED
from .plan import LAB, Plan, StepSpec

ACTION = "drill"


class _Skip(Exception):
    """An action that has nothing to do (dry run of a lab fault, a wait): recorded skipped."""


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        d = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


# --- measurement (pure: unit-tested) -----------------------------------------------------------

def measure(fault_at: float | None, recovered_at: float | None, fault_wall: datetime | None,
            snapshot_times: list[datetime], targets: dict[str, float | None]) -> dict[str, Any]:
    """RTO/RPO and their verdicts. ``fault_at``/``recovered_at`` are monotonic seconds (None:
    not reached), ``fault_wall`` the fault's wall-clock time, ``snapshot_times`` the times of
    the snapshots the restores used. RPO is measured from the oldest of them (the worst data
    loss). A missing measurement fails its target; a target of None is not judged."""
    rto = round(recovered_at - fault_at, 3) if fault_at is not None and recovered_at is not None else None
    rpo = None
    if fault_wall is not None and snapshot_times:
        rpo = round((fault_wall - min(snapshot_times)).total_seconds(), 3)
    verdict: dict[str, bool | None] = {}
    for key, got in (("rto_s", rto), ("rpo_s", rpo)):
        want = targets.get(key)
        verdict[key] = None if want is None else (got is not None and got <= want)
    return {"rto_s": rto, "rpo_s": rpo, "targets_met": verdict,
            "targets_passed": all(v is not False for v in verdict.values())}


# --- the actions -------------------------------------------------------------------------------

def _lab_faults():
    from ..lab import faults

    return faults


def _do(cfg: Config, ledger: Ledger, plan: Plan, spec: StepSpec, dry_run: bool) -> dict[str, Any]:
    """Carry out one step; returns its details (``run``: the action's own run; ``snapshot_time``
    for restores). Raises on failure, _Skip when there is nothing to do."""
    a, act = spec.args, spec.action
    if act.startswith("fault."):
        if plan.mode != LAB:  # the schema refuses it already; never trust one check
            raise UsageError(f"{act}: lab faults are refused in production mode")
        if dry_run:
            raise _Skip("dry run: lab fault not applied")
        f = _lab_faults()
        fn = {"fault.tamper": lambda: f.tamper(a.host), "fault.untamper": lambda: f.untamper(a.host),
              "fault.line_down": lambda: f.line_down(a.line), "fault.line_up": lambda: f.line_up(a.line),
              "fault.stop": lambda: f.stop_service(a.host, a.service),
              "fault.start": lambda: f.start_service(a.host, a.service)}[act]
        return {"fault": fn()}
    if act == "isolate":
        from ..actions.isolate import isolate

        res = isolate(cfg, ledger, a.host, f"drill: {a.reason}", dry_run=dry_run, force=a.force, quiet=True)
        return {"run": res["run"], "quarantined": res.get("quarantined")}
    if act == "rejoin":
        from ..actions.isolate import rejoin

        return {"run": rejoin(cfg, ledger, a.host, dry_run=dry_run, quiet=True)["run"]}
    if act == "member.wipe":
        return _wipe(cfg, plan, a.host, dry_run)
    if act == "restore.files":
        from ..actions.restore_site import restore_site

        # Members restored by a drill are usually quarantined (isolated first): their direct
        # HTTP check cannot get through; the rejoin that follows checks them.
        res = restore_site(cfg, ledger, plan.site, snapshot=a.snapshot, hosts=a.hosts, files=True,
                           database=False, dry_run=dry_run, check_members=False)
        return {"snapshot": res.get("snapshot"), "snapshot_time": _iso(res.get("snapshot_time")),
                "members": {h: {k: m.get(k) for k in ("added", "changed", "removed", "verified", "applied")}
                            for h, m in res.get("members", {}).items()}}
    if act == "restore.database":
        from ..actions.restore_site import restore_site

        res = restore_site(cfg, ledger, plan.site, snapshot=a.snapshot, files=False, database=True,
                           target=a.target, dry_run=dry_run)
        db = res.get("database") or {}
        return {"target": a.target, "snapshot": db.get("snapshot"), "snapshot_time": _iso(db.get("snapshot_time")),
                "expected_counts": db.get("expected_counts"), "actual_counts": db.get("actual_counts"),
                "rows": sum((db.get("actual_counts") or {}).values()), "kept_database": db.get("kept_database")}
    if act in ("line.failover", "line.failback"):
        from ..control import lines

        res = lines.failover(cfg, ledger, to=a.to, dry_run=dry_run) if act == "line.failover" \
            else lines.failback(cfg, ledger, dry_run=dry_run)
        return {"run": res.get("run"), "from": res.get("from"), "to": res.get("to"), "changed": res.get("changed")}
    if act == "backup":
        from ..actions.backup import backup

        results, code = backup(cfg, ledger, [plan.site], dry_run=dry_run, files=a.files, database=a.database)
        if code:
            raise ResilienceError(f"backup of site {plan.site!r} finished with exit code {code}")
        return {"sites": len(results), "run": next((r.get("run") for r in results if r.get("run")), None)}
    if act == "incident.tamper":
        from .. import runbooks

        res = runbooks.run(cfg, ledger, "tamper", {"site": plan.site, "host": a.host, "source": "drill"},
                           dry_run=dry_run)
        if res["outcome"] != OK:
            raise ResilienceError(f"runbook tamper stopped at step '{res['failed_step']}': {res['error']}")
        return {"run": res["run"], "snapshot_time": _runbook_snapshot_time(ledger, res["run"]),
                "steps": {s["step"]: s["outcome"] for s in res["steps"]}}
    if act == "wait":
        if dry_run:
            raise _Skip(f"dry run: would wait {a.seconds} s")
        time.sleep(a.seconds)
        return {"seconds": a.seconds}
    if act == "verify":
        res = run_checks(cfg, ledger, plan, dry_run=False, retries=a.retries, checks=a.checks)
        if not res["ok"]:
            raise ResilienceError("steady-state checks fail: " + "; ".join(res["failed"]))
        return res
    raise UsageError(f"unknown action {act!r}")  # the schema refuses it first


def _iso(value: Any) -> str | None:
    d = _when(value)
    return d.isoformat() if d else None


def _runbook_snapshot_time(ledger: Ledger, run_id: str) -> str | None:
    for rec in run_records(ledger, run_id):
        if rec.get("type") == "step" and rec.get("step") == "restore files":
            return (rec.get("details") or {}).get("snapshot_time")
    return None


def _wipe(cfg: Config, plan: Plan, host: str, dry_run: bool) -> dict[str, Any]:
    """Empty the site folder of ``host`` (the schema allows it only on an isolated member):
    what a rebuilt server looks like before its content is restored."""
    import shlex

    from ..runbooks.common import on_host

    site = cfg.site(plan.site)
    if site.files is None or host not in site.files.hosts:
        raise UsageError(f"{host}: not a member of site {plan.site!r}")
    path = site.files.path.rstrip("/")
    if path in ("", "/") or path.count("/") < 2:
        raise UsageError(f"refusing to wipe {path!r}: not a site folder")
    count = f"find {shlex.quote(path)} -mindepth 1 | wc -l"
    before = int(on_host(cfg, host, count).stdout.decode().strip() or 0)
    if dry_run:
        raise _Skip(f"dry run: would remove {before} entries under {path} on {host}")
    on_host(cfg, host, f"find {shlex.quote(path)} -mindepth 1 -delete")
    after = int(on_host(cfg, host, count).stdout.decode().strip() or 0)
    if after:
        raise ResilienceError(f"{host}: {after} entries left under {path} after the wipe")
    return {"path": path, "removed_entries": before}


# --- steady-state checks -----------------------------------------------------------------------

def run_checks(cfg: Config, ledger: Ledger, plan: Plan, *, dry_run: bool, retries: int | None = None,
               checks: list | None = None) -> dict[str, Any]:
    """Run ``checks`` (default: the plan's steady-state checks; all read-only). Returns
    ``{"ok", "results", "failed"}``; a check that raises counts as failed with its error."""
    results, failed = [], []
    for i, chk in enumerate(plan.steady_state if checks is None else checks):
        try:
            got = _check(cfg, ledger, plan, chk, retries)
        except Exception as exc:  # noqa: BLE001 - an unreachable target is a failed check
            got = {"ok": False, "error": getattr(exc, "message", None) or str(exc)}
        got = {"check": i, "kind": chk.kind, **got}
        results.append(got)
        if not got["ok"]:
            failed.append(f"{chk.kind} #{i}: {got.get('error') or 'not as expected'}")
    return {"ok": not failed, "results": results, "failed": failed}


def _check(cfg: Config, ledger: Ledger, plan: Plan, chk, retries: int | None) -> dict[str, Any]:
    if chk.kind == "http":
        from ..runbooks.common import site_checks

        if chk.via == "internet":
            return _internet_checks(cfg, plan, chk.retries if retries is None else retries)
        host = None if chk.via == "vip" else chk.via
        res = site_checks(cfg, plan.site, host=host, retries=chk.retries if retries is None else retries)
        bad = [f"{r['url']}: {r['error']}" for r in res["results"] if not r["ok"]]
        return {"ok": res["ok"] is not False, "via": chk.via, "checked": len(res["results"]),
                "error": "; ".join(bad) or None}
    if chk.kind == "sql":
        return _sql(cfg, plan, chk)
    if chk.kind == "line":
        from ..control import lines
        from ..control.ssh import SSH

        st = lines.setup(cfg)
        with SSH() as ssh:
            act = lines.active_state(ssh, st)
        ok = act["active"] == chk.active
        return {"ok": ok, "active": act["active"], "expected": chk.active,
                "error": None if ok else f"active line is {act['active']}, expected {chk.active}"}
    if chk.kind == "integrity":
        from ..actions.integrity import integrity_check

        res = integrity_check(cfg, ledger, plan.site, hosts=chk.hosts, snapshot=chk.snapshot)
        bad = [h for h, m in res["members"].items() if not m["clean"]]
        return {"ok": res["clean"], "run": res["run"], "snapshot": res.get("snapshot"),
                "error": f"differs from snapshot {res.get('short_id')}: {', '.join(bad)}" if bad else None}
    raise UsageError(f"unknown check kind {chk.kind!r}")


def _internet_checks(cfg: Config, plan: Plan, retries: int) -> dict[str, Any]:
    """The site's checks fetched from the lab's internet namespace at the public address (the
    way a citizen reaches the site: internet → active line → gw1 DNAT → VIP)."""
    import hashlib

    from ..lab import topology as T
    from ..lab.hosts import run_in

    results = []
    for c in cfg.site(plan.site).checks:
        url = f"http://{T.PUBLIC_ADDR}{c.path}"
        problem = "not fetched"
        for attempt in range(retries + 1):
            proc = run_in("internet", ["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url], check=False,
                          input=b"", timeout=30)
            body, _, code = proc.stdout.rpartition(b"\n")
            status = int(code or 0) if code.strip().isdigit() else 0
            problems = [] if proc.returncode == 0 else [f"curl exit {proc.returncode}"]
            if status != c.status:
                problems.append(f"status {status}, expected {c.status}")
            if c.contains is not None and c.contains.encode() not in body:
                problems.append(f"body lacks {c.contains!r}")
            if c.sha256 is not None and hashlib.sha256(body).hexdigest() != c.sha256:
                problems.append("body digest differs from the expected one")
            problem = "; ".join(problems)
            if not problems:
                break
            if attempt < retries:
                time.sleep(0.5)
        results.append({"url": url, "ok": not problem, "error": problem or None})
    bad = [f"{r['url']}: {r['error']}" for r in results if not r["ok"]]
    return {"ok": not bad, "via": "internet", "checked": len(results), "error": "; ".join(bad) or None}


def _sql(cfg: Config, plan: Plan, chk) -> dict[str, Any]:
    from ..inventory import load_inventory
    from ..sources.postgres import connect, read_db_password

    db = cfg.site(plan.site).database
    if db is None:
        raise UsageError(f"site {plan.site!r} has no database section: sql checks need one")
    address = load_inventory(cfg.inventory).address(db.host) if cfg.inventory else db.host
    # The site's backup account, in a read-only transaction: a check can never write.
    with connect(address, db.port, db.name, db.user, read_db_password(db.password_file),
                 application="resilience drill", autocommit=False) as conn:
        conn.read_only = True
        row = conn.execute(chk.query).fetchone()
    value = row[0] if row else None
    if chk.expect is not None:
        ok = value is not None and str(value) == str(chk.expect)
        want = f"= {chk.expect}"
    else:
        try:
            ok = value is not None and float(value) >= chk.min
        except (TypeError, ValueError):
            ok = False
        want = f">= {chk.min}"
    return {"ok": ok, "query": chk.query, "value": value, "expected": want,
            "error": None if ok else f"{chk.query!r} gave {value!r}, expected {want}"}


# --- the run -----------------------------------------------------------------------------------

def _plan_summary(plan: Plan) -> dict[str, Any]:
    return {"title": plan.title, "path": plan.path, "mode": plan.mode, "site": plan.site,
            "steps": [s.label(i) for i, s in enumerate(plan.method)],
            "rollbacks": [s.label(i) for i, s in enumerate(plan.rollbacks)]}


def _validate_against(cfg: Config, plan: Plan) -> None:
    """Names in the plan that the config must know: the site and its members."""
    site = cfg.site(plan.site)
    members = set(site.files.hosts) if site.files else set()
    for where, steps in (("method", plan.method), ("rollbacks", plan.rollbacks)):
        for i, s in enumerate(steps):
            hosts = ([s.args.host] if hasattr(s.args, "host") and not s.action.startswith("fault.") else []) \
                + list(getattr(s.args, "hosts", []) or [])
            unknown = [h for h in hosts if h not in members]
            if unknown:
                raise UsageError(f"{plan.path}: {where}.{i}: {', '.join(unknown)} is not a member of site "
                                 f"{plan.site!r} (members: {', '.join(sorted(members)) or 'none'})")
            if s.action == "restore.database" and site.database is None:
                raise UsageError(f"{plan.path}: {where}.{i}: site {plan.site!r} has no database section")


def run_drill(cfg: Config, ledger: Ledger, plan: Plan, *, dry_run: bool = False,
              progress=None) -> dict[str, Any]:
    """Run ``plan`` (see the module doc) as one recorded ``drill`` run. Returns the summary:
    ``run, title, passed, outcome, rto_s, rpo_s, targets, targets_met, failed_step, steps,
    rollbacks_run, checks_before, checks_after``. Never raises for a failed step, check or
    target (``passed`` is False); raises UsageError for a plan the config cannot run (before
    anything is recorded). ``progress(line)`` is called once per finished step."""
    _validate_against(cfg, plan)
    targets = {"rto_s": plan.targets.rto_s, "rpo_s": plan.targets.rpo_s}
    run = ledger.start_run(ACTION, {"plan": plan.path, "title": plan.title, "mode": plan.mode,
                                    "site": plan.site, "targets": targets}, dry_run=dry_run)
    say = progress or (lambda _line: None)
    fault_at = recovered_at = None
    fault_wall: datetime | None = None
    snap_times: list[datetime] = []
    failed_step = error = None
    steps_out: list[dict[str, Any]] = []
    rollbacks_run = False

    def record(name: str, host: str | None, fn) -> tuple[bool, dict[str, Any]]:
        step = run.step(name, host)
        out: dict[str, Any] = {}
        try:
            with step:
                try:
                    out = fn() or {}
                except _Skip as exc:
                    out = {"skipped": str(exc)}
                    step.outcome = SKIPPED
                step.details.update(out)
                if step.outcome is None and out.get("ok") is False:
                    step.outcome = FAILED
            ok = step.outcome != FAILED
        except Exception:  # noqa: BLE001 - recorded by the step; the drill decides what follows
            ok = False
        rec = step.record or {}
        steps_out.append({"step": name, "host": host, "outcome": rec.get("outcome"),
                          "duration_s": rec.get("duration_s"), "error": rec.get("error")})
        say(f"  {rec.get('outcome', '?'):<8} {name:<40} {rec.get('duration_s') or 0:8.2f} s"
            + (f": {rec['error']}" if rec.get("error") else ""))
        return ok, {**out, "error": rec.get("error")}

    with run:
        ok, before = record("steady state before", None, lambda: run_checks(cfg, ledger, plan, dry_run=dry_run))
        if not ok:
            failed_step, error = "steady state before", "; ".join(before.get("failed") or []) or before.get("error")
        else:
            fi, ri = plan.fault_index(), plan.recovered_index()
            for i, spec in enumerate(plan.method):
                if i == fi:
                    fault_at, fault_wall = time.monotonic(), datetime.now(UTC)
                host = getattr(spec.args, "host", None)
                ok, out = record(f"method {spec.label(i)}", host, lambda s=spec: _do(cfg, ledger, plan, s, dry_run))
                if not ok:
                    failed_step, error = f"method {spec.label(i)}", out.get("error")
                    break
                if out.get("snapshot_time") and _when(out["snapshot_time"]):
                    snap_times.append(_when(out["snapshot_time"]))
                if i == ri:
                    recovered_at = time.monotonic()
            if failed_step:
                rollbacks_run = True
                for j, spec in enumerate(plan.rollbacks):
                    record(f"rollback {spec.label(j)}", getattr(spec.args, "host", None),
                           lambda s=spec: _do(cfg, ledger, plan, s, dry_run))
        ok_after, after = record("steady state after", None,
                                 lambda: run_checks(cfg, ledger, plan, dry_run=dry_run))
        if ok_after and not failed_step and recovered_at is None:
            recovered_at = time.monotonic()
        if not ok_after and not failed_step:
            failed_step, error = "steady state after", "; ".join(after.get("failed") or [])
            recovered_at = None
        m = measure(fault_at, recovered_at if not failed_step else None, fault_wall, snap_times, targets)
        passed = not failed_step and m["targets_passed"] and not dry_run
        if dry_run:
            passed = not failed_step  # a dry run proves the plan runs, it measures nothing
        missed = [k for k, v in m["targets_met"].items() if v is False]
        if not failed_step and missed and not dry_run:
            error = "target missed: " + ", ".join(
                f"{k} {m[k]} > {targets[k]}" if m[k] is not None else f"{k} not measured" for k in missed)
        run.details.update(plan=_plan_summary(plan), targets=targets, rto_s=m["rto_s"], rpo_s=m["rpo_s"],
                           targets_met=m["targets_met"], passed=passed, failed_step=failed_step,
                           rollbacks_run=rollbacks_run,
                           fault_time=fault_wall.isoformat() if fault_wall else None,
                           snapshot_times=[t.isoformat() for t in snap_times])
        run.outcome = OK if passed else FAILED
    return {"run": run.id, "title": plan.title, "plan": plan.path, "mode": plan.mode, "dry_run": dry_run,
            "passed": passed, "outcome": run.outcome, "rto_s": m["rto_s"], "rpo_s": m["rpo_s"],
            "targets": targets, "targets_met": m["targets_met"], "failed_step": failed_step, "error": error,
            "rollbacks_run": rollbacks_run, "steps": steps_out,
            "checks_before": before.get("results"), "checks_after": after.get("results")}


# --- list / show -------------------------------------------------------------------------------

def list_drills(ledger: Ledger, folder: str | Path = "drills", recent: int = 20) -> dict[str, Any]:
    """Plans in ``folder`` (each loaded: title, mode, targets, or the first problem) and the
    ``recent`` latest drill runs from the ledger (newest first) with their RTO/RPO and verdict."""
    from .plan import load_plan

    plans = []
    for p in sorted(Path(folder).glob("*.yml")):
        try:
            pl = load_plan(p)
            plans.append({"path": str(p), "title": pl.title, "mode": pl.mode, "site": pl.site,
                          "targets": pl.targets.model_dump(), "valid": True})
        except ResilienceError as exc:
            plans.append({"path": str(p), "valid": False, "error": exc.message})
    ends = {r["run"]: r for r in ledger.records() if r.get("type") == "run-end" and r.get("action") == ACTION}
    runs = []
    for r in reversed([x for x in list_runs(ledger) if x["action"] == ACTION]):
        d = (ends.get(r["run"]) or {}).get("details") or {}
        runs.append({"run": r["run"], "start": r["start"], "outcome": r["outcome"], "dry_run": r["dry_run"],
                     "plan": (r.get("params") or {}).get("plan"), "title": (r.get("params") or {}).get("title"),
                     "passed": d.get("passed"), "rto_s": d.get("rto_s"), "rpo_s": d.get("rpo_s"),
                     "targets": d.get("targets")})
        if len(runs) >= recent:
            break
    return {"plans": plans, "runs": runs}


def show_drill(ledger: Ledger, run_id: str) -> dict[str, Any]:
    """One drill run from the ledger: its parameters, steps and end details. UsageError for an
    unknown id or a run that is not a drill."""
    records = run_records(ledger, run_id)
    start = next((r for r in records if r.get("type") == "run-start"), {})
    if start.get("action") != ACTION:
        raise UsageError(f"run {start.get('run', run_id)} is not a drill (it is {start.get('action')})")
    end = next((r for r in records if r.get("type") == "run-end"), None)
    d = (end or {}).get("details") or {}
    return {"run": start["run"], "params": start.get("params"), "dry_run": start.get("dry_run"),
            "start": start.get("time"), "end": (end or {}).get("time"),
            "outcome": (end or {}).get("outcome", "incomplete"), "duration_s": (end or {}).get("duration_s"),
            **{k: d.get(k) for k in ("passed", "rto_s", "rpo_s", "targets", "targets_met", "failed_step",
                                     "rollbacks_run", "fault_time", "snapshot_times", "plan")},
            "steps": [{"step": r["step"], "host": r.get("host"), "outcome": r.get("outcome"),
                       "start": r.get("start"), "duration_s": r.get("duration_s"), "error": r.get("error")}
                      for r in records if r.get("type") == "step"]}
