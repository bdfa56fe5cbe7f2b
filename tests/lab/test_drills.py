"""Drills end to end in the lab, through the real CLI and the lab's own config: every shipped
plan passes with a signed, verifiable record and measured RTO/RPO; a failing step runs the
rollbacks and leaves the lab as it was; a missed RTO target exits non-zero.

Every test holds the shared member-tests lock (taken after the lab fixture, which takes the
same lock while it resets the lab) and leaves the lab as it found it: members UP and
not quarantined, sites pristine, lines up and the primary active.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from resilience.evidence.report import _fmt_duration
from resilience.evidence.report_i18n import LABELS
from resilience.lab import faults, site
from resilience.lab import layout as L
from resilience.lab import topology as T

from ..unit.test_reports import NS, table, xhtml
from .labtools import REPO, rejoin_members, run_cli

pytestmark = pytest.mark.lab
CONFIG = str(REPO / "inventories" / "lab" / "resilience.yml")
DRILLS = REPO / "drills"


def cli(*args: str, timeout: float = 900):
    return run_cli("--config", CONFIG, *args, timeout=timeout)


def _reset() -> None:
    """The shared starting point: lines up, primary active, members rejoined and pristine."""
    from resilience import lab as lab_api

    for line in T.LINES:
        faults.line_up(line)
    if lab_api.active_line() != T.DEFAULT_LINE:
        lab_api.set_active_line(T.DEFAULT_LINE)
    for web in T.WEB_HOSTS:
        if not site.is_pristine(L.site_dir(web)):
            faults.untamper(web)
    rejoin_members(CONFIG)


@pytest.fixture(scope="module")
def drill_lab(member_lock):
    """Hold the member lock for the module (conftest's ``member_lock``, taken after the lab
    fixture); start from the shared state with a repository whose latest snapshots are of the
    pristine site and the current database."""
    try:
        _reset()
        r = cli("snapshots")
        if r.returncode == 2 and "no repository" in r.stderr:
            assert cli("init").returncode == 0
        r = cli("backup", "--site", "portal", timeout=600)
        assert r.returncode == 0, r.stderr
        yield
    finally:
        with contextlib.suppress(Exception):
            _reset()


@pytest.fixture
def clean(drill_lab):
    yield
    _reset()


def _drill(plan: Path | str, *extra: str):
    r = cli("drill", "run", str(plan), "--json", *extra)
    return r, json.loads(r.stdout) if r.stdout.strip() else {}


def _lab_as_found() -> None:
    for web in T.WEB_HOSTS:
        assert site.is_pristine(L.site_dir(web)), web
    members = json.loads(cli("cluster", "status", "--json").stdout)["sites"]["portal"]
    for m in members:
        assert m["balancer_state"] == "UP" and not m["quarantined"], m


def _end_details(run_id: str) -> dict:
    from resilience.config import load_config
    from resilience.evidence import Ledger
    from resilience.evidence.query import run_records
    from resilience.state import evidence_dir

    recs = run_records(Ledger(evidence_dir(load_config(CONFIG))), run_id)
    return next(x for x in recs if x.get("type") == "run-end")["details"]


def test_quarterly_tamper_passes_with_signed_record_and_measured_rto_rpo(clean, tmp_path):
    r, res = _drill(DRILLS / "quarterly-tamper.yml")
    assert r.returncode == 0, r.stderr + r.stdout
    assert res["passed"] and not res["rollbacks_run"]
    assert 0 < res["rto_s"] <= res["targets"]["rto_s"]
    assert 0 < res["rpo_s"] <= res["targets"]["rpo_s"]
    d = _end_details(res["run"])
    assert d["rto_s"] == res["rto_s"] and d["rpo_s"] == res["rpo_s"] and d["passed"] is True
    assert d["targets"] == {"rto_s": 300.0, "rpo_s": 2592000.0}
    assert cli("evidence", "verify").returncode == 0
    _lab_as_found()
    shown = json.loads(cli("drill", "show", res["run"], "--json").stdout)
    assert [s["outcome"] for s in shown["steps"]] == ["ok"] * 4

    # The auditor's documents, rendered from that ledger: the run's HTML report (Chinese and
    # English) with the measured RTO/RPO and a verified ledger, and the quarter's report.
    for lang in ("zh", "en"):
        out = tmp_path / f"drill-{lang}.html"
        r = cli("report", res["run"], "--lang", lang, "-o", str(out))
        assert r.returncode == 0, r.stderr
        root = xhtml(out.read_text())
        objectives = {row[0]: row for row in table(root, "objectives")[1:]}
        assert objectives["RTO"][1] == _fmt_duration(res["rto_s"]) and objectives["RTO"][3] == LABELS[lang]["yes"]
        assert objectives["RPO"][1] == _fmt_duration(res["rpo_s"]) and objectives["RPO"][3] == LABELS[lang]["yes"]
        assert root.find(".//h:div[@id='verification']", NS).get("data-ok") == "true"
        assert table(root, "summary")[0][1] == res["run"]
    quarter = f"{res['run'][:4]}Q{(int(res['run'][4:6]) - 1) // 3 + 1}"
    r = cli("report", "--period", quarter, "--json")
    assert r.returncode == 0, r.stderr
    period = json.loads(r.stdout)
    drill = next(d for d in period["drills"] if d["run"] == res["run"])
    assert drill["plan"] and period["verification"]["ok"] is True
    r = cli("report", "--period", quarter, "--lang", "zh", "-o", str(tmp_path / "quarter.html"))
    assert r.returncode == 0 and res["run"] in (tmp_path / "quarter.html").read_text()

    # And status tells the truth about it.
    status = json.loads(cli("status", "--json").stdout)
    last = status["sites"]["portal"]["drill"]
    assert last["run"] == res["run"] and last["ok"] is True and last["rto_s"] == res["rto_s"]


def test_database_scratch_passes(clean):
    r, res = _drill(DRILLS / "database-scratch.yml")
    assert r.returncode == 0, r.stderr + r.stdout
    assert res["passed"] and res["mode"] == "production"
    assert res["rpo_s"] is not None and res["rto_s"] > 0
    restore = next(s for s in res["steps"] if s["step"].startswith("method"))
    assert restore["outcome"] == "ok"


def test_failing_step_runs_rollbacks_and_leaves_the_lab_as_it_was(clean, tmp_path):
    plan = tmp_path / "broken.yml"
    plan.write_text("""\
title: tamper, then a restore from a snapshot that does not exist
mode: lab
site: portal
targets: {rto_s: 300}
steady_state: [{kind: http, via: vip}, {kind: http, via: web1}]
method:
  - {action: fault.tamper, with: {host: web1}, fault: true}
  - {action: restore.files, with: {hosts: [web1], snapshot: "deadbeef00"}}
rollbacks:
  - {action: fault.untamper, with: {host: web1}}
  - {action: rejoin, with: {host: web1}}
""")
    r, res = _drill(plan)
    assert r.returncode == 1, r.stderr
    assert res["failed_step"] == "method 1: restore.files" and res["rollbacks_run"]
    outcomes = {s["step"]: s["outcome"] for s in res["steps"]}
    assert outcomes["rollback 0: fault.untamper"] == outcomes["rollback 1: rejoin"] == "ok"
    assert outcomes["steady state after"] == "ok"
    assert site.is_pristine(L.site_dir("web1"))
    _lab_as_found()


def test_missed_rto_target_exits_nonzero(clean, tmp_path):
    plan = tmp_path / "tiny.yml"
    text = (DRILLS / "database-scratch.yml").read_text().replace("rto_s: 300", "rto_s: 0.001")
    plan.write_text(text)
    r, res = _drill(plan)
    assert r.returncode == 1 and "target missed: rto_s" in r.stderr
    assert res["passed"] is False and res["targets_met"]["rto_s"] is False and res["rto_s"] > 0.001
    assert _end_details(res["run"])["passed"] is False


def test_line_failover_passes_and_fails_back(clean):
    from resilience import lab as lab_api

    r, res = _drill(DRILLS / "line-failover.yml")
    assert r.returncode == 0, r.stderr + r.stdout
    assert res["passed"] and res["rpo_s"] is None
    assert lab_api.active_line() == T.DEFAULT_LINE


def test_full_member_restore_rebuilds_web2(clean):
    r, res = _drill(DRILLS / "full-member-restore.yml")
    assert r.returncode == 0, r.stderr + r.stdout
    assert res["passed"] and res["rpo_s"] > 0
    # The after checks compared web2 with the snapshot (integrity) and through the VIP. The
    # site's excluded paths (cache/**) are not in any snapshot, so a rebuilt member has none:
    # the lab's pristine copy (with its cache) comes back in the reset.
    after = {c["kind"]: c["ok"] for c in res["checks_after"]}
    assert after == {"http": True, "integrity": True}
    assert not list((L.site_dir("web2") / "cache").rglob("*.*"))
