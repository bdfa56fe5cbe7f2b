"""Drill plans and the drill runner without the lab: schema errors, production-safe rules,
RTO/RPO arithmetic, rollbacks on failure (in order, all of them), exit codes — with real local
actions (a localhost site, a local repository, waits) and the real ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from resilience.drills import load_plan
from resilience.drills.runner import measure
from resilience.errors import ConfigError
from resilience.evidence import Ledger
from resilience.evidence.query import run_records

from .engine_helpers import PASSWORD, write_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def _plan(tmp_path: Path, text: str, name: str = "plan.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """\
title: t
mode: {mode}
site: portal
targets: {{rto_s: {rto}}}
"""


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_plan(path)
    return exc.value.problems


# --- schema -------------------------------------------------------------------------------------

def test_shipped_plans_are_valid():
    plans = sorted((REPO_ROOT / "drills").glob("*.yml"))
    names = {p.name for p in plans}
    assert {"quarterly-tamper.yml", "database-scratch.yml", "line-failover.yml",
            "full-member-restore.yml"} <= names
    for p in plans:
        plan = load_plan(p)
        assert plan.targets.rto_s > 0 and plan.method
    assert load_plan(REPO_ROOT / "drills" / "database-scratch.yml").mode == "production"


def test_unknown_key_names_file_key_and_reason(tmp_path):
    p = _plan(tmp_path, BASE.format(mode="lab", rto=10) + "method: [{action: wait, with: {seconds: 0}}]\nowner: x\n")
    assert _problems(p) == [f"{p}: owner: unknown key"]


def test_unknown_key_inside_with_and_step(tmp_path):
    p = _plan(tmp_path, BASE.format(mode="lab", rto=10) + "method: [{action: wait, with: {second: 1}}]\n")
    (msg,) = _problems(p)
    assert msg.startswith(f"{p}: method.0: ") and "with.second: unknown key" in msg
    p = _plan(tmp_path, BASE.format(mode="lab", rto=10) + "method: [{action: wait, with: {seconds: 0}, when: x}]\n")
    assert _problems(p) == [f"{p}: method.0.when: unknown key"]


def test_bad_action_is_refused(tmp_path):
    p = _plan(tmp_path, BASE.format(mode="lab", rto=10) + "method: [{action: fault.meteor}]\n")
    (msg,) = _problems(p)
    assert msg.startswith(f"{p}: method.0: unknown action 'fault.meteor'")


def test_bad_values_and_missing_keys(tmp_path):
    p = _plan(tmp_path, "title: t\nmode: staging\nsite: portal\ntargets: {rto_s: -1}\nmethod: []\n")
    got = _problems(p)
    assert f"{p}: mode: unsupported value (expected 'lab' or 'production')" in got
    assert any(x.startswith(f"{p}: targets.rto_s: must be greater than 0") for x in got)
    assert f"{p}: method: needs at least 1 item(s)" in got
    p = _plan(tmp_path, "title: t\nmode: lab\nsite: portal\nmethod: [{action: wait, with: {seconds: 0}}]\n")
    assert _problems(p) == [f"{p}: targets: required key is missing"]
    p = _plan(tmp_path, BASE.format(mode="lab", rto=1) + "steady_state: [{kind: dns}]\n"
              "method: [{action: wait, with: {seconds: 0}}]\n")
    assert _problems(p)[0].startswith(f"{p}: steady_state.0: ")


@pytest.mark.parametrize("step, reason", [
    ("{action: fault.tamper, with: {host: web1}}", "is a lab fault: refused in production mode"),
    ("{action: fault.line_down, with: {line: primary}}", "is a lab fault: refused in production mode"),
    ("{action: restore.database, with: {target: live}}", "live database restore is refused in production"),
    ("{action: line.failover}", "switches live traffic: refused in production mode"),
    ("{action: restore.files, with: {hosts: [web1]}}", "web1, not isolated: refused in production mode"),
])
def test_production_plan_refuses_unsafe_steps(tmp_path, step, reason):
    p = _plan(tmp_path, BASE.format(mode="production", rto=10) + f"method: [{step}]\n")
    (msg,) = _problems(p)
    assert msg.startswith(f"{p}: (top level): method.0: ") and reason in msg
    # The same step is allowed in a lab plan.
    load_plan(_plan(tmp_path, BASE.format(mode="lab", rto=10) + f"method: [{step}]\n", "lab.yml"))


def test_production_plan_may_restore_an_isolated_member_and_wipe_needs_isolation(tmp_path):
    ok = BASE.format(mode="production", rto=10) + """\
method:
  - {action: isolate, with: {host: web2}}
  - {action: member.wipe, with: {host: web2}}
  - {action: restore.files, with: {hosts: [web2]}}
  - {action: rejoin, with: {host: web2}}
"""
    load_plan(_plan(tmp_path, ok))
    bad = BASE.format(mode="lab", rto=10) + "method: [{action: member.wipe, with: {host: web2}}]\n"
    (msg,) = _problems(_plan(tmp_path, bad, "bad.yml"))
    assert "member.wipe needs web2 isolated by an earlier method step" in msg


def test_fault_and_recovered_marks(tmp_path):
    text = BASE.format(mode="lab", rto=10) + """\
method:
  - {action: wait, with: {seconds: 0}, recovered: true}
  - {action: wait, with: {seconds: 0}, fault: true}
"""
    (msg,) = _problems(_plan(tmp_path, text))
    assert "the recovered step must come after the fault step" in msg


def test_yaml_errors_are_one_line(tmp_path):
    p = _plan(tmp_path, "title: [unclosed\n")
    (msg,) = _problems(p)
    assert msg.startswith(f"{p}: line ") and "malformed YAML" in msg


# --- RTO / RPO arithmetic -----------------------------------------------------------------------

def test_measure_rto_rpo_and_verdicts():
    fault = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    snaps = [fault - timedelta(hours=2), fault - timedelta(hours=26)]
    m = measure(100.0, 142.5, fault, snaps, {"rto_s": 60, "rpo_s": 86400})
    assert m["rto_s"] == 42.5
    assert m["rpo_s"] == 26 * 3600  # the oldest snapshot used: the worst loss
    assert m["targets_met"] == {"rto_s": True, "rpo_s": False} and not m["targets_passed"]
    m = measure(100.0, 100.0005, fault, snaps[:1], {"rto_s": 0.001, "rpo_s": 7200})
    assert m["targets_met"] == {"rto_s": True, "rpo_s": True} and m["targets_passed"]


def test_measure_missing_figures():
    # Never recovered: no RTO, its target fails. No restore: no RPO; a null target is not judged.
    m = measure(5.0, None, None, [], {"rto_s": 60, "rpo_s": None})
    assert m["rto_s"] is None and m["rpo_s"] is None
    assert m["targets_met"] == {"rto_s": False, "rpo_s": None} and not m["targets_passed"]
    m = measure(5.0, 6.0, datetime.now(UTC), [], {"rto_s": 60, "rpo_s": 10})
    assert m["targets_met"]["rpo_s"] is False  # a target that could not be measured fails


# --- runs through the CLI with real local actions -----------------------------------------------

@pytest.fixture
def env(tmp_path):
    site = tmp_path / "site"
    (site / "a").mkdir(parents=True)
    (site / "a" / "index.html").write_text("hello")
    repo = tmp_path / "repo"
    (tmp_path / "pass").write_bytes(PASSWORD)
    cfg = write_config(tmp_path, site, repo)
    text = cfg.read_text().replace("repository: {", f"repository: {{password_file: {tmp_path / 'pass'}, ")
    cfg.write_text(text)
    return {"cfg": str(cfg), "tmp": tmp_path, "repo": repo, "ledger": Ledger(tmp_path / "evidence")}


def _steps(ledger: Ledger, run_id: str) -> list[tuple[str, str]]:
    return [(r["step"], r["outcome"]) for r in run_records(ledger, run_id) if r.get("type") == "step"]


def _end(ledger: Ledger, run_id: str) -> dict:
    return next(r for r in run_records(ledger, run_id) if r.get("type") == "run-end")


def test_passing_drill_records_rto_targets_and_plan(cli, env):
    assert cli("--config", env["cfg"], "init").code == 0
    p = _plan(env["tmp"], BASE.format(mode="production", rto=120) + """\
method:
  - {name: backup the site, action: backup, with: {database: false}, fault: true}
  - {name: settle, action: wait, with: {seconds: 0.05}, recovered: true}
rollbacks:
  - {action: wait, with: {seconds: 0}}
""")
    r = cli("--config", env["cfg"], "drill", "run", str(p), "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["passed"] and not res["rollbacks_run"] and res["rpo_s"] is None
    assert 0.05 <= res["rto_s"] < 60
    end = _end(env["ledger"], res["run"])
    d = end["details"]
    assert end["action"] == "drill" and end["outcome"] == "ok"
    assert d["rto_s"] == res["rto_s"] and d["targets"] == {"rto_s": 120.0, "rpo_s": None}
    assert d["passed"] is True and d["plan"]["title"] == "t" and d["plan"]["mode"] == "production"
    assert _steps(env["ledger"], res["run"]) == [
        ("steady state before", "ok"), ("method backup the site", "ok"), ("method settle", "ok"),
        ("steady state after", "ok")]
    # list and show read it back from the ledger.
    shown = json.loads(cli("--config", env["cfg"], "drill", "show", res["run"], "--json").out)
    assert shown["passed"] and shown["rto_s"] == res["rto_s"] and len(shown["steps"]) == 4
    listed = cli("--config", env["cfg"], "drill", "list", "--dir", str(env["tmp"]), "--json")
    assert listed.code == 0
    got = json.loads(listed.out)
    assert got["runs"][0]["run"] == res["run"] and got["plans"][0]["valid"]


def test_failed_step_runs_every_rollback_in_order(cli, env):
    # No repository was initialised: the backup step fails for real.
    p = _plan(env["tmp"], BASE.format(mode="production", rto=120) + """\
method:
  - {name: first, action: wait, with: {seconds: 0}, fault: true}
  - {name: backup, action: backup, with: {database: false}}
  - {name: never, action: wait, with: {seconds: 0}}
rollbacks:
  - {name: r1, action: wait, with: {seconds: 0.01}}
  - {name: r2 fails too, action: backup, with: {database: false}}
  - {name: r3, action: wait, with: {seconds: 0}}
""")
    r = cli("--config", env["cfg"], "drill", "run", str(p), "--json")
    assert r.code == 1
    assert "step 'method backup' failed" in r.err and r.err.count("\n") == 1
    res = json.loads(r.out)
    assert res["passed"] is False and res["rollbacks_run"] and res["rto_s"] is None
    assert _steps(env["ledger"], res["run"]) == [
        ("steady state before", "ok"), ("method first", "ok"), ("method backup", "failed"),
        ("rollback r1", "ok"), ("rollback r2 fails too", "failed"), ("rollback r3", "ok"),
        ("steady state after", "ok")]
    end = _end(env["ledger"], res["run"])
    assert end["outcome"] == "failed" and end["details"]["failed_step"] == "method backup"
    assert end["details"]["rollbacks_run"] is True and end["details"]["passed"] is False


def test_missed_rto_target_exits_1(cli, env):
    p = _plan(env["tmp"], BASE.format(mode="production", rto=0.001) + """\
method:
  - {action: wait, with: {seconds: 0.05}, fault: true, recovered: true}
""")
    r = cli("--config", env["cfg"], "drill", "run", str(p))
    assert r.code == 1 and "target missed: rto_s" in r.err
    assert "RTO" in r.out and "MISSED" in r.out
    run_id = next(x["run"] for x in env["ledger"].records() if x.get("action") == "drill")
    d = _end(env["ledger"], run_id)["details"]
    assert d["targets_met"]["rto_s"] is False and d["rto_s"] >= 0.05 and not d["passed"]


def test_dry_run_changes_nothing_and_skips_waits(cli, env):
    p = _plan(env["tmp"], BASE.format(mode="production", rto=1) + """\
method:
  - {action: wait, with: {seconds: 30}}
""")
    r = cli("--config", env["cfg"], "drill", "run", str(p), "--dry-run", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["dry_run"] and res["steps"][1]["outcome"] == "skipped"


def test_bad_plan_and_unknown_member_exit_2_with_nothing_recorded(cli, env):
    p = _plan(env["tmp"], BASE.format(mode="lab", rto=1) + "method: [{action: fault.tamper, with: {host: web1}}]\n"
              "color: red\n")
    r = cli("--config", env["cfg"], "drill", "run", str(p))
    assert r.code == 2 and r.err.strip() == f"resilience: error: {p}: color: unknown key"
    p = _plan(env["tmp"], BASE.format(mode="lab", rto=1) + "method: [{action: rejoin, with: {host: web9}}]\n")
    r = cli("--config", env["cfg"], "drill", "run", str(p))
    assert r.code == 2 and "web9 is not a member of site 'portal'" in r.err and "Traceback" not in r.err
    assert cli("--config", env["cfg"], "drill", "run", str(env["tmp"] / "nope.yml")).code == 2
    assert not [x for x in env["ledger"].records() if x.get("action") == "drill"] if \
        (env["tmp"] / "evidence").exists() else True
    assert cli("--config", env["cfg"], "drill", "show", "nosuchrun").code == 2


def test_internet_checks_are_lab_only(tmp_path):
    text = BASE.format(mode="production", rto=10) + """\
method:
  - {action: verify, with: {checks: [{kind: http, via: internet}, {kind: line, active: standby}]}}
"""
    (msg,) = _problems(_plan(tmp_path, text))
    assert "via internet use the lab's internet namespace: lab mode only" in msg
    plan = load_plan(_plan(tmp_path, text.replace("production", "lab"), "lab.yml"))
    assert [c.kind for c in plan.method[0].args.checks] == ["http", "line"]
