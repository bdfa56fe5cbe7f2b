"""The content quarantine: sha256 digests of files that must never come back (illegal
content removed by the ``illegal-content`` runbook).

Kept in ``<state dir>/content-quarantine.json`` on the ops host (``RESILIENCE_STATE_DIR``
moves it), next to the other state restores read. :func:`filter_items` is the one hook into
the restore path (``targets.files.plan_member``): a snapshot entry whose file content is
quarantined is treated as absent, so a restore neither sends it nor keeps a copy already
on a member. Snapshots themselves are not rewritten (they stay verifiable evidence).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write
from ..state import state_dir

FILE_NAME = "content-quarantine.json"


def path() -> Path:
    """Where the quarantine list lives."""
    return state_dir() / FILE_NAME


def load() -> dict[str, dict[str, Any]]:
    """{sha256: {"paths", "site", "run", "time", "reason"}}; {} when there is none."""
    try:
        data = json.loads(path().read_text())
    except FileNotFoundError:
        return {}
    return dict(data.get("sha256", {}))


def digests() -> frozenset[str]:
    """The quarantined digests."""
    return frozenset(load())


def add(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Add ``{sha256: info}`` (info gets a time) and write the list atomically (0600)."""
    cur = load()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for digest, info in entries.items():
        merged = dict(cur.get(digest, {}), **info)
        merged["paths"] = sorted(set(cur.get(digest, {}).get("paths", [])) | set(info.get("paths", [])))
        merged.setdefault("time", now)
        cur[digest] = merged
    _write(cur)
    return cur


def remove(digests_: list[str]) -> None:
    """Lift the quarantine of these digests (an operator's decision; tests' clean-up)."""
    cur = load()
    for d in digests_:
        cur.pop(d, None)
    _write(cur)


def _write(entries: dict[str, dict[str, Any]]) -> None:
    p = path()
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(p, json.dumps({"version": 1, "sha256": entries}, indent=2, sort_keys=True).encode())


def filter_items(items: list) -> list:
    """``items`` (snapshot entries ``(path, node)``) without the files whose sha256 is
    quarantined. Returns the same list object when nothing is quarantined (the common case)."""
    bad = digests()
    if not bad:
        return items
    return [(rel, node) for rel, node in items if node.get("sha256") not in bad]
