"""Incident runbooks end to end in the lab, through the real CLI and the lab's own config.

Every test here changes the lab (tampers, isolates, stops services, blocks, switches lines):
each holds the shared member-tests lock and leaves the lab as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from resilience.lab import faults, site
from resilience.lab import layout as L
from resilience.lab import topology as T
from resilience.lab.hosts import run_in

from .labtools import REPO, rejoin_members, run_cli

pytestmark = pytest.mark.lab
CONFIG = str(REPO / "inventories" / "lab" / "resilience.yml")
FIELDS = ("信息来源", "影响范围", "事件性质", "事件发展趋势", "采取的措施")


def incident(*args: str, env: dict | None = None, timeout: float = 900):
    return run_cli("--config", CONFIG, "incident", *args, timeout=timeout,
                   env=dict(os.environ, **(env or {})))


def _restore_members() -> None:
    """Back to the shared starting point: members unquarantined and UP, sites pristine."""
    for web in T.WEB_HOSTS:
        with contextlib.suppress(Exception):
            faults.start_service(web, "sshd")
        if not site.is_pristine(L.site_dir(web)):
            faults.untamper(web)
    rejoin_members(CONFIG)


@pytest.fixture
def clean_members(member_lock_per_test):
    yield
    _restore_members()


def _report(res: dict) -> tuple[str, dict]:
    paths = res["report"]["paths"]
    return Path(paths["markdown"]).read_text(), json.loads(Path(paths["json"]).read_text())


def test_a_failed_step_stops_and_resume_finishes_from_there(clean_members, tmp_path):
    faults.tamper("web1")
    faults.stop_service("web1", "sshd")  # a member unreachable: isolating it must fail
    try:
        r = incident("tamper", "--site", "portal", "--host", "web1", "--json")
        assert r.returncode == 1, r.stderr
        failed = json.loads(r.stdout)
        assert failed["failed_step"] == "isolate" and failed["outcome"] == "failed"
        assert "--resume" in r.stderr and "Traceback" not in r.stderr
    finally:
        faults.start_service("web1", "sshd")
    r = incident("tamper", "--resume", failed["run"], "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert res["resumes"] == failed["run"]
    outcomes = {s["step"]: s["outcome"] for s in res["steps"]}
    assert outcomes["assess"] == "skipped" and outcomes["isolate"] == "ok"
    assert site.is_pristine(L.site_dir("web1"))
    assert outcomes["restore files"] == outcomes["rejoin"] == outcomes["verify site"] == "ok"
    assert outcomes["rotate admin passwords"] == "skipped"  # the lab configures no admin accounts
    md, data = _report(res)
    assert data["resumes"] == failed["run"] and data["outcome"] == "ok"
    # The report of the whole response (the first run's steps carried over) has what the
    # rules require. (The tamper runbook without a failure also runs in the quarterly-tamper
    # drill and in the watch's auto-response: tests/lab/test_drills.py, test_watch.py.)
    for label in FIELDS:
        assert label in md and data["fields_zh"][label]
    assert data["severity"] in ("major", "critical") and data["report_upward"] is True
    assert all(len(a["sha256"]) == 64 for a in data["artifacts"])
    out = run_cli("--config", CONFIG, "cluster", "status", "--json")
    members = {m["host"]: m for m in json.loads(out.stdout)["sites"]["portal"]}
    assert members["web1"]["balancer_state"] == "UP" and members["web1"]["quarantined"] is False


def test_illegal_content_is_removed_everywhere_and_no_restore_brings_it_back(clean_members, tmp_path):
    env = {"RESILIENCE_STATE_DIR": str(tmp_path / "state")}  # the quarantine list of this test only
    body = b"<html>forbidden leaflet 7f3a</html>\n"
    run_in("web1", ["sh", "-c", "cat > /var/www/portal/uploads/leaflet.html"], input=body)
    run_in("web2", ["sh", "-c", "cat > /var/www/portal/uploads/copy-of-leaflet.html"], input=body)  # same bytes
    try:
        # The latest snapshot holds the content: without the quarantine a restore brings it back.
        assert run_cli("--config", CONFIG, "backup", "--site", "portal", env=dict(os.environ, **env)).returncode == 0
        r = incident("illegal-content", "--site", "portal", "--path", "uploads/leaflet.html", "--json", env=env)
        assert r.returncode == 0, r.stderr + r.stdout
        res = json.loads(r.stdout)
        for web in T.WEB_HOSTS:
            assert not list((L.site_dir(web) / "uploads").glob("*leaflet*")), web
        _, data = _report(res)
        assert data["severity"] == "critical" and data["report_upward"] is True
        assert all(data["fields_zh"][k] for k in FIELDS)
        r = run_cli("--config", CONFIG, "restore", "--site", "portal", "--files-only", "--yes", "--json",
                    env=dict(os.environ, **env), timeout=600)
        assert r.returncode == 0, r.stderr
        for web in T.WEB_HOSTS:
            assert not list((L.site_dir(web) / "uploads").glob("*leaflet*")), web
    finally:
        for web in T.WEB_HOSTS:
            run_in(web, ["sh", "-c", "rm -f /var/www/portal/uploads/*leaflet*"])
        _restore_members()
        # The latest snapshot matches the pristine site again.
        assert run_cli("--config", CONFIG, "backup", "--site", "portal", timeout=600).returncode == 0
