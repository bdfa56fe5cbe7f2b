"""Which snapshots a retention policy keeps (grandfather-father-son), as a pure function.

Semantics (the same as restic's, so operators can reason from its documentation):
- snapshots are considered newest first;
- ``keep_last N`` keeps the N newest;
- ``keep_hourly/daily/weekly/monthly/yearly N`` keep the newest snapshot of each of the N
  most recent hours/days/ISO weeks/months/years that have a snapshot;
- ``keep_within D`` keeps everything taken within D before the newest snapshot (not before
  *now*, so a backup that has been failing for a week does not let retention eat the last
  good ones);
- buckets are computed in the ops host's local time unless a time zone is given.
A policy that keeps nothing is refused: forgetting every snapshot is never a default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, tzinfo
from typing import Any, Protocol

from ..config import parse_duration
from ..errors import UsageError


class Dated(Protocol):
    id: str

    @property
    def datetime(self) -> datetime: ...


@dataclass(frozen=True)
class Policy:
    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None

    def empty(self) -> bool:
        return all(getattr(self, f.name) in (None, 0, "") for f in fields(self))

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> Policy:
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, 0, "")}


_BUCKETS = (
    ("keep_hourly", "hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("keep_monthly", "monthly", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly", lambda t: (t.year,)),
)


def select(snapshots: Sequence[Dated], policy: Policy, tz: tzinfo | None = None
           ) -> tuple[list[Dated], list[Dated], dict[str, list[str]]]:
    """Split ``snapshots`` into (keep, forget) under ``policy``; ``reasons`` maps each kept
    snapshot id to the rules that keep it. Both lists are newest first."""
    if policy.empty():
        raise UsageError("no retention policy: give at least one --keep-* option or set 'retention' in the config")
    ordered = sorted(snapshots, key=lambda s: (s.datetime, s.id), reverse=True)
    reasons: dict[str, list[str]] = {s.id: [] for s in ordered}
    if policy.keep_last:
        for s in ordered[: policy.keep_last]:
            reasons[s.id].append("last")
    for attr, label, bucket in _BUCKETS:
        limit = getattr(policy, attr)
        if not limit:
            continue
        seen: list[tuple] = []
        for s in ordered:
            b = bucket(s.datetime.astimezone(tz))
            if b in seen:
                continue
            if len(seen) >= limit:
                break
            seen.append(b)
            reasons[s.id].append(label)
    if policy.keep_within and ordered:
        span = timedelta(seconds=parse_duration(policy.keep_within))
        newest = ordered[0].datetime
        for s in ordered:
            if newest - s.datetime <= span:
                reasons[s.id].append("within " + policy.keep_within)
    keep = [s for s in ordered if reasons[s.id]]
    forget = [s for s in ordered if not reasons[s.id]]
    return keep, forget, {k: v for k, v in reasons.items() if v}
