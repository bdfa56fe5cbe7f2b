"""Incident runbooks (issue 6 item 3, docs/runbooks.md): ``tamper``, ``illegal-content``,
``attack``, ``db-failure``, ``network`` — each a recorded sequence of steps ending with an
incident report. :func:`run` is the entry point for the CLI and for the tamper watch."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UsageError
from .engine import Context, Runbook, Skip, Step, execute

__all__ = ["KINDS", "Context", "Runbook", "Skip", "Step", "get", "run"]

KINDS: dict[str, str] = {
    "tamper": "resilience.runbooks.tamper",
    "illegal-content": "resilience.runbooks.content",
    "attack": "resilience.runbooks.attack",
    "db-failure": "resilience.runbooks.database",
    "network": "resilience.runbooks.network",
}


def get(kind: str) -> Runbook:
    """The runbook named ``kind``; UsageError for an unknown one."""
    if kind not in KINDS:
        raise UsageError(f"unknown runbook {kind!r} (known: {', '.join(KINDS)})")
    return importlib.import_module(KINDS[kind]).RUNBOOK


def run(cfg, ledger, kind: str, params: dict[str, Any], *, dry_run: bool = False, resume: str | None = None,
        report_path: str | None = None) -> dict[str, Any]:
    """Run runbook ``kind`` with ``params`` (e.g. ``{"site": S, "host": H, "source": "watch"}``),
    every step recorded as a step of one run in ``ledger``; ``dry_run`` runs every step in
    dry-run/check mode; ``resume`` (a run id or unique prefix) continues an earlier failed run
    from its first step that did not succeed. Returns the run's summary with the ``report``
    (fields, severity, ``report_upward``, ``paths`` of the Markdown and JSON files). A failed
    step does not raise: ``outcome`` is ``failed`` and ``failed_step`` names it. Raises
    UsageError for bad parameters or a run that cannot be resumed."""
    return execute(cfg, ledger, get(kind), params, dry_run=dry_run, resume=resume, report_path=report_path)
