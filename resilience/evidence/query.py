"""Read runs back out of the ledger for display and reports."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from .ledger import Ledger


def list_runs(ledger: Ledger) -> list[dict[str, Any]]:
    """One summary per run, oldest first: id, action, start, end, outcome, steps, dry_run.
    A run with no end record (crashed or still running) has outcome ``incomplete``."""
    runs: dict[str, dict[str, Any]] = {}
    for rec in ledger.records():
        rid = rec.get("run")
        if not rid:
            continue
        kind = rec.get("type")
        if kind == "run-start":
            runs[rid] = {
                "run": rid,
                "action": rec.get("action"),
                "start": rec.get("time"),
                "end": None,
                "outcome": "incomplete",
                "steps": 0,
                "dry_run": bool(rec.get("dry_run")),
                "params": rec.get("params", {}),
            }
        elif rid in runs and kind == "step":
            runs[rid]["steps"] += 1
        elif rid in runs and kind == "run-end":
            runs[rid].update(end=rec.get("time"), outcome=rec.get("outcome"), duration_s=rec.get("duration_s"))
    return list(runs.values())


def run_records(ledger: Ledger, run_id: str) -> list[dict[str, Any]]:
    """Every record of one run, in ledger order. A unique prefix of the id is accepted."""
    matches = {r["run"] for r in ledger.records() if r.get("run", "").startswith(run_id)}
    if not matches:
        raise UsageError(f"no run {run_id!r} in the ledger")
    if len(matches) > 1:
        raise UsageError(f"run id {run_id!r} is ambiguous ({len(matches)} runs match)")
    rid = matches.pop()
    return [r for r in ledger.records() if r.get("run") == rid]
