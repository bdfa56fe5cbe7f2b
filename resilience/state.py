"""Where resilience keeps its own state on the ops host (evidence, caches, locks)."""

from __future__ import annotations

import os
from pathlib import Path

STATE_ENV = "RESILIENCE_STATE_DIR"


def state_dir() -> Path:
    """Return the state folder: ``$RESILIENCE_STATE_DIR``, else /var/lib/resilience for root,
    else ``$XDG_STATE_HOME/resilience`` (default ~/.local/state/resilience). Not created here."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/resilience")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "resilience"


def evidence_dir(config=None) -> Path:
    """Return the evidence folder: the config's ``evidence.dir``, else ``state_dir()/evidence``."""
    if config is not None and config.evidence.dir is not None:
        return Path(config.evidence.dir)
    return state_dir() / "evidence"
