"""The runbook engine without the lab: step recording, dry run, failure and resume, report."""

from __future__ import annotations

import json

import pytest

from resilience.config import Config
from resilience.errors import UsageError
from resilience.evidence import Ledger
from resilience.evidence.query import run_records
from resilience.runbooks.engine import Runbook, Skip, Step, execute
from resilience.runbooks.report import severity

CALLS: list[str] = []
BROKEN = {"on": True}


def _ok(name):
    def fn(ctx):
        CALLS.append(name)
        ctx.facts[f"seen_{name}"] = True
        return {"did": name, "dry": ctx.dry_run, "token": "password=hunter2"}
    return fn


def _flaky(ctx):
    CALLS.append("flaky")
    if BROKEN["on"]:
        raise OSError("web9: host unreachable")
    return {"earlier": ctx.results["first"]["did"]}


def _skip(ctx):
    raise Skip("nothing to do here")


def _book() -> Runbook:
    def steps(cfg, params):
        return [Step("first", _ok("first"), "web1"), Step("maybe", _skip), Step("flaky", _flaky, "web9"),
                Step("last", _ok("last"))]

    def validate(cfg, params):
        if not params.get("site"):
            raise UsageError("give --site")
        return params

    def describe(ctx, outcome):
        return {"title": "unit", "scope": f"site {ctx.params['site']}", "nature": "a test",
                "findings": {"first seen": bool(ctx.facts.get("seen_first")),
                             "first lines": {"a.html": "GET /a.html 200", "b.php": None}}}

    return Runbook("unit", steps, validate, describe)


@pytest.fixture
def env(tmp_path):
    CALLS.clear()
    BROKEN["on"] = True
    return Config(evidence={"dir": str(tmp_path / "ev")}), Ledger(tmp_path / "ev"), tmp_path


def _steps(ledger, run_id):
    return [(r["step"], r["outcome"]) for r in run_records(ledger, run_id) if r.get("type") == "step"]


def test_failed_step_stops_the_run_and_resume_starts_there(env):
    cfg, ledger, tmp = env
    first = execute(cfg, ledger, _book(), {"site": "portal"})
    assert first["outcome"] == "failed" and first["failed_step"] == "flaky"
    assert "unreachable" in first["error"]
    assert CALLS == ["first", "flaky"]  # "last" never ran
    assert _steps(ledger, first["run"]) == [("first", "ok"), ("maybe", "skipped"), ("flaky", "failed"),
                                            ("incident report", "ok")]
    end = [r for r in run_records(ledger, first["run"]) if r["type"] == "run-end"][0]
    assert end["outcome"] == "failed" and end["details"]["failed_step"] == "flaky"
    assert first["report"]["report_upward"] is True  # not contained

    BROKEN["on"] = False
    CALLS.clear()
    second = execute(cfg, ledger, _book(), {}, resume=first["run"][:30])
    assert second["outcome"] == "ok" and second["resumes"] == first["run"]
    assert CALLS == ["flaky", "last"]  # done steps are not run again
    steps = {r["step"]: r for r in run_records(ledger, second["run"]) if r.get("type") == "step"}
    assert steps["first"]["outcome"] == "skipped" and steps["first"]["details"]["done_in"] == first["run"]
    assert steps["flaky"]["details"]["earlier"] == "first"  # results carried over
    start = [r for r in run_records(ledger, second["run"]) if r["type"] == "run-start"][0]
    assert start["params"]["resumes"] == first["run"] and start["params"]["site"] == "portal"
    rep = second["report"]
    assert rep["findings"]["first seen"] is True  # facts carried over too
    with pytest.raises(UsageError, match="nothing to resume"):
        execute(cfg, ledger, _book(), {}, resume=second["run"])
    assert ledger.verify().ok


def test_dry_run_reaches_every_step_and_is_recorded(env):
    cfg, ledger, _ = env
    BROKEN["on"] = False
    res = execute(cfg, ledger, _book(), {"site": "portal"}, dry_run=True)
    assert res["outcome"] == "ok" and res["dry_run"]
    recs = [r for r in run_records(ledger, res["run"]) if r.get("type") == "step"]
    assert all(r.get("dry_run") for r in recs)
    assert [r["details"].get("dry") for r in recs if r["step"] in ("first", "last")] == [True, True]
    with pytest.raises(UsageError, match="dry run"):
        execute(cfg, ledger, _book(), {}, resume=res["run"])


def test_report_has_the_required_fields_durations_and_digests(env):
    cfg, ledger, tmp = env
    BROKEN["on"] = False
    res = execute(cfg, ledger, _book(), {"site": "portal"}, report_path=str(tmp / "out" / "r.md"))
    md = (tmp / "out" / "r.md").read_text()
    data = json.loads((tmp / "out" / "r.json").read_text())
    for label in ("信息来源", "影响范围", "事件性质", "事件发展趋势", "采取的措施"):
        assert label in md and label in data["fields_zh"]
    assert data["fields"]["scope"] == "site portal" and data["fields"]["trend"].startswith("contained")
    assert [s["step"] for s in data["timeline"]] == ["first", "maybe", "flaky", "last"]
    assert all(isinstance(s["duration_s"], float) for s in data["timeline"])
    assert "hunter2" not in md + json.dumps(data)  # redacted everywhere
    # A mapping finding is a list, one line per key, not a Python repr.
    assert "  - `a.html`: `GET /a.html 200`\n  - `b.php`: not found" in md and "{'" not in md
    # The report files themselves are artifacts of the run, with their digests.
    rec = [r for r in run_records(ledger, res["run"]) if r.get("step") == "incident report"][0]
    assert {a["name"] for a in rec["artifacts"]} == {"incident-report.md", "incident-report.json"}
    assert all(len(a["sha256"]) == 64 for a in rec["artifacts"])


def test_bad_input_and_wrong_kind_are_usage_errors(env):
    cfg, ledger, _ = env
    with pytest.raises(UsageError):
        execute(cfg, ledger, _book(), {})
    other = ledger.start_run("backup", {})
    other.finish("failed")
    with pytest.raises(UsageError, match="not a unit runbook"):
        execute(cfg, ledger, _book(), {}, resume=other.id)


@pytest.mark.parametrize("kind,facts,outcome,level", [
    ("illegal-content", {}, "ok", "critical"),
    ("tamper", {"public_affected": True}, "ok", "critical"),
    ("tamper", {}, "ok", "major"),
    ("attack", {}, "ok", "minor"),
    ("attack", {"site_down": True}, "ok", "major"),
    ("network", {}, "failed", "major"),
    ("db-failure", {}, "ok", "minor"),
])
def test_severity_rule(kind, facts, outcome, level):
    assert severity(kind, facts, outcome)[0] == level


def test_every_kind_is_registered_with_steps():
    from resilience import runbooks

    for kind in runbooks.KINDS:
        book = runbooks.get(kind)
        assert book.kind == kind
    with pytest.raises(UsageError):
        runbooks.get("nope")


def _grouped_book(fail: str | None, barrier) -> Runbook:
    """Three steps of one group that each wait at a barrier: they only get past it when all
    three run at the same time (sequential steps would time out)."""
    def member(name):
        def fn(ctx):
            barrier.wait(timeout=5)
            CALLS.append(name)
            if name == fail:
                raise OSError(f"{name} broke")
            return {"did": name, "kept": ctx.run.keep_artifact("same-name", data=name.encode())["path"]}
        return fn

    def steps(cfg, params):
        return [Step("before", _ok("before")), *(Step(n, member(n), group="g") for n in ("a", "b", "c")),
                Step("after", _ok("after"))]

    return Runbook("unit", steps, lambda cfg, p: p, lambda ctx, o: {"title": "t", "scope": "s", "nature": "n"})


def test_a_group_runs_its_steps_at_the_same_time_and_a_failure_stops_after_it(env):
    import threading

    cfg, ledger, _ = env
    ok = execute(cfg, ledger, _grouped_book(None, threading.Barrier(3)), {"site": "portal"})
    assert ok["outcome"] == "ok"
    assert CALLS[0] == "before" and sorted(CALLS[1:4]) == ["a", "b", "c"] and CALLS[4] == "after"
    kept = {r["details"]["kept"]: r["details"]["did"] for r in run_records(ledger, ok["run"])
            if r.get("type") == "step" and "kept" in r["details"]}
    assert len(kept) == 3  # three files, none overwritten
    assert all((ledger.dir / path).read_text() == name for path, name in kept.items())

    CALLS.clear()
    bad = execute(cfg, ledger, _grouped_book("b", threading.Barrier(3)), {"site": "portal"})
    assert bad["outcome"] == "failed" and bad["failed_step"] == "b" and "b broke" in bad["error"]
    assert "after" not in CALLS and sorted(CALLS[1:]) == ["a", "b", "c"]  # the group finished
    assert dict(_steps(ledger, bad["run"]))["a"] == "ok"
    CALLS.clear()
    again = execute(cfg, ledger, _grouped_book(None, threading.Barrier(1)), {}, resume=bad["run"])
    assert again["outcome"] == "ok" and CALLS == ["b", "after"]  # a and c were done
    assert ledger.verify().ok
