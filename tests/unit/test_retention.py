"""Retention selection (grandfather-father-son), table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from resilience.errors import UsageError
from resilience.repository.retention import Policy, select


@dataclass
class S:
    id: str
    when: datetime

    @property
    def datetime(self) -> datetime:
        return self.when


def snaps(*stamps: str) -> list[S]:
    return [S(t, datetime.fromisoformat(t).replace(tzinfo=UTC)) for t in stamps]


# Two snapshots a day at 01:00 and 13:00 for 60 days ending 2026-11-27.
def daily_history() -> list[S]:
    out, t = [], datetime(2026, 9, 29, 1, tzinfo=UTC)
    while t <= datetime(2026, 11, 27, 13, tzinfo=UTC):
        out.append(S(t.isoformat(), t))
        t += timedelta(hours=12)
    return out


CASES = [
    # (snapshots, policy, ids kept)
    (snaps("2026-01-01T00:00", "2026-01-02T00:00", "2026-01-03T00:00"), Policy(keep_last=2),
     {"2026-01-03T00:00", "2026-01-02T00:00"}),
    (snaps("2026-01-01T01:00", "2026-01-01T13:00", "2026-01-02T01:00"), Policy(keep_daily=5),
     {"2026-01-01T13:00", "2026-01-02T01:00"}),
    (snaps("2026-01-01T10:05", "2026-01-01T10:55", "2026-01-01T11:10"), Policy(keep_hourly=1), {"2026-01-01T11:10"}),
    (snaps("2026-01-01T10:05", "2026-01-01T10:55", "2026-01-01T11:10"), Policy(keep_hourly=2),
     {"2026-01-01T11:10", "2026-01-01T10:55"}),
    # ISO weeks: 2026-01-04 is a Sunday (week 1), 2026-01-05 a Monday (week 2).
    (snaps("2026-01-03T00:00", "2026-01-04T00:00", "2026-01-05T00:00"), Policy(keep_weekly=2),
     {"2026-01-05T00:00", "2026-01-04T00:00"}),
    (snaps("2025-12-31T23:00", "2026-01-15T00:00", "2026-01-31T00:00", "2026-02-01T00:00"), Policy(keep_monthly=2),
     {"2026-02-01T00:00", "2026-01-31T00:00"}),
    (snaps("2024-06-01T00:00", "2025-06-01T00:00", "2025-12-01T00:00", "2026-03-01T00:00"), Policy(keep_yearly=3),
     {"2026-03-01T00:00", "2025-12-01T00:00", "2024-06-01T00:00"}),
    (snaps("2026-01-01T00:00", "2026-01-05T00:00", "2026-01-09T00:00", "2026-01-10T00:00"), Policy(keep_within="5d"),
     {"2026-01-10T00:00", "2026-01-09T00:00", "2026-01-05T00:00"}),
    # Rules combine: a snapshot kept by any rule stays.
    (snaps("2026-01-01T00:00", "2026-01-02T00:00", "2026-03-01T00:00"), Policy(keep_last=1, keep_monthly=2),
     {"2026-03-01T00:00", "2026-01-02T00:00"}),
    # keep_within counts back from the newest snapshot, not from now.
    (snaps("2020-01-01T00:00", "2020-01-02T00:00"), Policy(keep_within="1d"), {"2020-01-01T00:00", "2020-01-02T00:00"}),
    ([], Policy(keep_last=3), set()),
]


@pytest.mark.parametrize(("history", "policy", "kept"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_selection(history, policy, kept):
    keep, forget, reasons = select(history, policy, tz=UTC)
    assert {s.id for s in keep} == kept
    assert {s.id for s in forget} == {s.id for s in history} - kept
    assert set(reasons) == kept


def test_gfs_on_sixty_days():
    history = daily_history()
    keep, forget, reasons = select(history, Policy(keep_daily=7, keep_weekly=4, keep_monthly=12), tz=UTC)
    days = {s.when.date() for s in keep if "daily" in reasons[s.id]}
    assert len(days) == 7 and max(days).isoformat() == "2026-11-27"
    assert all(s.when.hour == 13 for s in keep)  # the newest of each bucket
    assert len([s for s in keep if "monthly" in reasons[s.id]]) == 3  # Sep, Oct, Nov
    assert len(keep) + len(forget) == len(history)
    assert len(keep) < 15


def test_empty_policy_is_refused():
    with pytest.raises(UsageError, match="no retention policy"):
        select(snaps("2026-01-01T00:00"), Policy())
