"""``resilience status`` from a real evidence ledger built in a tmp folder through the Run API."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from resilience.config import load_config
from resilience.evidence import Ledger
from resilience.status import collect


def _config(tmp_path, *, status=None, balancer=False) -> str:
    # Hosts nobody answers for: port 1 on loopback refuses at once. Only a balanced site is
    # read over SSH by status; the database host is never contacted.
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {
        h: {"ansible_host": "127.0.0.1", "ansible_port": 1} for h in ("web1", "lb1", "db1")}}}))
    (tmp_path / "known_hosts").write_text("")
    site = {"files": {"hosts": ["localhost"], "path": str(tmp_path / "www")},
            "database": {"host": "db1", "name": "portal"}}
    doc = {"version": 1, "repository": {"url": str(tmp_path / "repo")},
           "evidence": {"dir": str(tmp_path / "evidence")}, "inventory": "hosts.yml",
           "ssh": {"known_hosts": str(tmp_path / "known_hosts"), "connect_timeout": 2},
           "sites": {"portal": site},
           "status": status or {"max_backup_age": "26h", "max_verify_age": "8d", "max_drill_age": "100d"}}
    if balancer:
        site["files"]["hosts"] = ["web1"]
        site["balancer"] = {"host": "lb1", "backend": "portal"}
    path = tmp_path / "resilience.yml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _backup(ledger: Ledger, site="portal", *, files_ok=True, db_ok=True) -> str:
    run = ledger.start_run("backup", {"sites": [site], "files": True, "database": True})
    with run:
        with run.step(f"backup files of {site}", host="localhost") as step:
            step.details.update(snapshot="f1" * 32, files_new=3)
            if not files_ok:
                step.outcome = "failed"
        with run.step(f"store database portal of {site}", host="localhost") as step:
            step.details.update(snapshot="d2" * 32, tables=4, rows=100)
            if not db_ok:
                step.outcome = "failed"
    return run.id


def _verify(ledger: Ledger, ok=True) -> str:
    run = ledger.start_run("verify", {"read_data": 0.1})
    with run:
        with run.step("verify repository") as step:
            step.details.update(damaged_snapshots=[] if ok else ["f1f1f1f1"])
            if not ok:
                step.outcome = "failed"
        run.outcome = "ok" if ok else "failed"
    return run.id


def _drill(ledger: Ledger, rto: float | None = 42.0, ok=True) -> str:
    targets = {"rto_s": 300, "rpo_s": 86400}
    run = ledger.start_run("drill", {"plan": "drills/quarterly-tamper.yml", "title": "Quarterly tamper recovery",
                                     "site": "portal", "targets": targets})
    with run:
        run.record_step("fault", details={"fault": "tamper web1"})
        if rto is not None:
            run.details.update(rto_s=rto, rpo_s=600.0, targets=targets, passed=ok)
        run.outcome = "ok" if ok else "failed"
    return run.id


def test_fresh_backup_verify_and_drill_is_ok_exit_0(cli, tmp_path):
    cfg = _config(tmp_path)
    ledger = Ledger(tmp_path / "evidence")
    backup_run = _backup(ledger)
    _verify(ledger)
    _drill(ledger)

    r = cli("--config", cfg, "status", "--json")
    assert r.code == 0, r.out
    res = json.loads(r.out)
    assert res["ok"] is True and res["attention"] == []
    site = res["sites"]["portal"]
    good = site["backup"]["last_good"]
    assert good["run"] == backup_run and good["age_s"] < 60
    assert good["files"]["snapshot"] == "f1" * 32 and good["database"]["snapshot"] == "d2" * 32
    assert site["verify"]["ok"] is True and site["verify"]["read_data"] == 0.1
    assert site["drill"]["rto_s"] == 42.0 and site["drill"]["targets"]["rto_s"] == 300
    assert res["ledger"]["ok"] is True
    assert site["members"] is None and res["line"] is None  # not configured: nothing to read

    r = cli("--config", cfg, "status")
    assert r.code == 0
    assert ": ok" in r.out.splitlines()[0]
    assert "files f1f1f1f1" in r.out and "RTO 42s (target 300s)" in r.out


def test_old_backup_needs_attention_with_the_reason(tmp_path):
    cfg = load_config(_config(tmp_path))
    ledger = Ledger(tmp_path / "evidence")
    _backup(ledger)
    _verify(ledger)
    _drill(ledger)
    assert collect(cfg, ledger)["ok"] is True
    later = datetime.now(UTC) + timedelta(hours=30)
    res = collect(cfg, ledger, now=later)
    assert res["ok"] is False
    assert res["attention"] == ["portal: last good backup is 1d 6h old (max 1d 2h)"]
    much_later = datetime.now(UTC) + timedelta(days=120)
    reasons = collect(cfg, ledger, now=much_later)["attention"]
    assert any(r.startswith("last verify is 120d") for r in reasons)
    assert any(r.startswith("portal: last drill is 120d") for r in reasons)


def test_failed_verify_needs_attention_exit_1(cli, tmp_path):
    cfg = _config(tmp_path)
    ledger = Ledger(tmp_path / "evidence")
    _backup(ledger)
    _drill(ledger)
    _verify(ledger, ok=True)
    bad = _verify(ledger, ok=False)
    r = cli("--config", cfg, "status", "--json")
    assert r.code == 1
    res = json.loads(r.out)
    assert res["verify"]["ok"] is False and res["verify"]["run"] == bad
    assert len(res["attention"]) == 1 and res["attention"][0].startswith("last verify failed")
    r = cli("--config", cfg, "status")
    assert r.code == 1 and "ATTENTION (1)" in r.out and "verify   FAILED" in r.out


def test_failed_last_backup_keeps_the_last_good_one_and_says_so(tmp_path):
    cfg = load_config(_config(tmp_path))
    ledger = Ledger(tmp_path / "evidence")
    good = _backup(ledger)
    _verify(ledger)
    _drill(ledger)
    failed = _backup(ledger, db_ok=False)
    res = collect(cfg, ledger)
    b = res["sites"]["portal"]["backup"]
    # the files of the failed run are newer; the database's last good one is the first run
    assert b["last_good"]["database"]["run"] == good and b["last_good"]["files"]["run"] == failed
    assert b["last_run"]["outcome"] == "failed"
    assert res["attention"] == [f"portal: last backup failed (run {failed})"]


def test_no_history_lists_every_missing_record(tmp_path):
    res = collect(load_config(_config(tmp_path)), Ledger(tmp_path / "evidence"))
    assert res["attention"] == ["no verify recorded", "portal: no good backup recorded",
                                "portal: no drill recorded"]
    quiet = _config(tmp_path, status={"max_verify_age": None, "max_drill_age": None})
    assert collect(load_config(quiet), Ledger(tmp_path / "evidence"))["attention"] == [
        "portal: no good backup recorded"]


def test_a_drill_without_figures_is_shown_not_crashed(cli, tmp_path):
    cfg = _config(tmp_path)
    ledger = Ledger(tmp_path / "evidence")
    _backup(ledger)
    _verify(ledger)
    _drill(ledger, rto=None, ok=False)
    r = cli("--config", cfg, "status")
    assert r.code == 1 and "RTO not measured" in r.out and "last drill failed" in r.out


def test_an_altered_ledger_needs_attention(cli, tmp_path):
    cfg = _config(tmp_path)
    ledger = Ledger(tmp_path / "evidence")
    _backup(ledger)
    _verify(ledger)
    _drill(ledger)
    path = tmp_path / "evidence" / "ledger.jsonl"
    text = path.read_text()
    assert '"files_new":3' in text
    path.write_text(text.replace('"files_new":3', '"files_new":4'))
    r = cli("--config", cfg, "status", "--json")
    assert r.code == 1
    res = json.loads(r.out)
    assert res["ledger"]["ok"] is False
    assert res["attention"][0].startswith("evidence ledger does not verify")


@pytest.mark.timeout(60)
def test_unreachable_members_are_unknown_with_a_reason_and_fast(cli, tmp_path):
    cfg = _config(tmp_path, balancer=True, status={"timeout": 4, "max_drill_age": None, "max_verify_age": None})
    ledger = Ledger(tmp_path / "evidence")
    _backup(ledger)
    t0 = time.monotonic()
    r = cli("--config", cfg, "status", "--json")
    assert time.monotonic() - t0 < 10
    assert r.code == 1
    res = json.loads(r.out)
    unknown = res["sites"]["portal"]["members"]["unknown"]
    assert unknown
    assert any(a.startswith("portal: members unknown: ") for a in res["attention"])
    r = cli("--config", cfg, "status")
    assert "members  unknown: " in r.out and "Traceback" not in r.out + r.err
