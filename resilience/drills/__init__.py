"""Recovery drills (issue 7, docs/drills.md): declarative plans in ``drills/*.yml``, run as one
recorded ``drill`` run with measured RTO/RPO compared against the plan's targets."""

from __future__ import annotations

from .plan import ACTIONS, Plan, load_plan
from .runner import list_drills, run_drill, show_drill

__all__ = ["ACTIONS", "Plan", "list_drills", "load_plan", "run_drill", "show_drill"]
