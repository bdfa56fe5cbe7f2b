"""Snapshots: the named, timestamped root of one backup.

Stored as ``snapshots/<sha256 of the stored bytes>`` (sealed, zstd JSON). Fields: ``time``
(UTC ISO 8601), ``tree`` (root tree id), ``site``, ``kind`` (``files`` or ``database``),
``source`` {host, path, listed_at …}, ``hostname``/``username`` (of the ops host), ``parent``,
``tags``, ``summary`` (counts and bytes), ``meta`` (source-specific: row counts, versions…).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class Snapshot:
    time: str
    tree: str
    site: str
    kind: str = "files"
    source: dict[str, Any] = field(default_factory=dict)
    hostname: str = ""
    username: str = ""
    parent: str | None = None
    tags: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    program_version: str = ""
    id: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def datetime(self) -> datetime:
        return parse_time(self.time)

    def to_json(self) -> bytes:
        doc = asdict(self)
        doc.pop("id")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes, snap_id: str) -> Snapshot:
        try:
            doc = json.loads(raw)
            known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc and k != "id"}
            return cls(**known, id=snap_id)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"malformed snapshot: {exc}") from None

    def public(self) -> dict[str, Any]:
        """The snapshot as shown by ``snapshots --json``."""
        doc = asdict(self)
        doc["short_id"] = self.short_id
        return doc


def now_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
