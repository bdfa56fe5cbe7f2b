"""Faults through the real CLI, each followed by its undo."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from resilience import lab as lab_api
from resilience.lab import layout as L
from resilience.lab import run_in, site
from resilience.lab import topology as T
from resilience.lab.services import haproxy_command, http_get

from .labtools import run_cli

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("member_lock")]


def _public_status(timeout: int = 2) -> str:
    """HTTP status of the public address as seen by the internet client ('000' = no answer)."""
    proc = run_in("internet", ["curl", "-s", "-o", "/dev/null", "-m", str(timeout),
                               "-w", "%{http_code}", T.PUBLIC_URL], check=False)
    return proc.stdout.strip()


def _server_status(name: str) -> str:
    for line in haproxy_command("show stat").splitlines():
        parts = line.split(",")
        if parts[:2] == ["portal", name]:
            return parts[17]
    raise AssertionError(f"no server {name} in show stat")


def _wait_server(name: str, want: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _server_status(name) != want:
        assert time.monotonic() < deadline, f"{name} never became {want}"
        time.sleep(0.2)


def _fault(*args: str) -> dict:
    proc = run_cli("lab", "fault", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_tamper_defaces_inside_the_host_and_untamper_restores(lab):
    before = hashlib.sha256(http_get(T.WEB1_ADDR, "/")[2]).hexdigest()
    assert before == site.index_sha256()
    try:
        result = _fault("tamper", "web1")
        assert result["fault"] == "tamper" and len(result["actions"]) >= 4
        after = hashlib.sha256(http_get(T.WEB1_ADDR, "/")[2]).hexdigest()
        assert after != before
        assert b"Hacked" in http_get(T.WEB1_ADDR, "/" + site.article_paths()[0])[2]
        assert run_in("web1", ["test", "-f", "/var/www/portal/uploads/shell.php"],
                      check=False).returncode == 0
        # web2 is untouched: the tampering happened in web1's own mount namespace.
        assert hashlib.sha256(http_get(T.WEB2_ADDR, "/")[2]).hexdigest() == before
        assert not (L.site_dir("web2") / "uploads" / "shell.php").exists()
        assert not site.is_pristine(L.site_dir("web1"))
    finally:
        _fault("untamper", "web1")
    assert site.is_pristine(L.site_dir("web1"))
    assert hashlib.sha256(http_get(T.WEB1_ADDR, "/")[2]).hexdigest() == before


def test_line_down_cuts_the_public_address_until_failover(lab):
    assert lab_api.active_line() == "primary"
    assert _public_status() == "200"
    try:
        result = _fault("line-down", "primary")
        assert {a.split(":")[0] for a in result["actions"]} == {"gw1", "isp1"}
        assert _public_status() == "000"
        # The link itself is still up: a dead line, not an unplugged one.
        assert "state UP" in run_in("gw1", ["ip", "link", "show", "wan-primary"]).stdout
        # gw1 can still probe the standby line (source routing), not the primary.
        assert run_in("gw1", ["ping", "-c1", "-W1", "-I", "198.18.2.1", T.PROBE_TARGETS[0]],
                      check=False).returncode == 0
        assert run_in("gw1", ["ping", "-c1", "-W1", "-I", "198.18.1.1", T.PROBE_TARGETS[0]],
                      check=False).returncode != 0

        state = lab_api.set_active_line("standby")
        assert state == {"gateway": "standby", "upstream": "standby"}
        assert lab_api.active_line() == "standby"
        assert _public_status() == "200"
        status = json.loads(run_cli("lab", "status", "--json").stdout)
        assert status["active_line"] == "standby" and status["lines"]["primary"]["fault"]

        result = _fault("line-up", "primary")
        assert len(result["actions"]) == 2
        assert run_in("gw1", ["ping", "-c1", "-W1", "-I", "198.18.1.1", T.PROBE_TARGETS[0]],
                      check=False).returncode == 0
    finally:
        _fault("line-up", "primary")
        lab_api.set_active_line("primary")
    assert lab_api.active_line() == "primary"
    assert _public_status() == "200"


def test_half_done_failover_is_reported_as_no_active_line(lab):
    try:
        lab_api.set_active_line("standby", gateway=False)
        assert lab_api.line_state() == {"gateway": "primary", "upstream": "standby"}
        assert lab_api.active_line() is None
    finally:
        lab_api.set_active_line("primary")


def test_stopped_nginx_is_marked_down_and_the_vip_keeps_serving(lab):
    try:
        result = _fault("stop", "web1", "nginx")
        assert result["actions"] == ["stopped nginx on web1"]
        _wait_server("web1", "DOWN")
        for _ in range(6):
            status, headers, _b = http_get(T.VIP_ADDR, "/")
            assert status == 200 and headers["x-served-by"] == "web2"
        proc = run_cli("lab", "status", "--json")
        assert proc.returncode == 1
        assert json.loads(proc.stdout)["hosts"]["web1"]["services"]["nginx"] is False
    finally:
        _fault("start", "web1", "nginx")
    _wait_server("web1", "UP")
    seen = {http_get(T.VIP_ADDR, "/")[1]["x-served-by"] for _ in range(6)}
    assert seen == {"web1", "web2"}


def test_stop_and_start_postgresql(lab):
    try:
        _fault("stop", "db1", "postgresql")
        assert run_cli("lab", "status").returncode == 1
    finally:
        result = _fault("start", "db1", "postgresql")
    assert result["actions"] == ["started postgresql on db1"]
    assert run_cli("lab", "status").returncode == 0


@pytest.mark.parametrize("args,expect", [
    (["tamper", "web9"], "valid: s3, web1, web2"),
    (["tamper", "db1"], "valid: web1, web2"),
    (["stop", "web1", "bogus"], "valid: sshd, nginx, haproxy, postgresql, s3"),
    (["stop", "web1", "haproxy"], "valid: sshd, nginx"),
    (["start", "nohost", "sshd"], "valid: s3, web1"),
    (["line-down", "tertiary"], "valid: primary, standby"),
])
def test_bad_names_exit_2_with_the_valid_names(lab, args, expect):
    proc = run_cli("lab", "fault", *args)
    assert proc.returncode == 2
    assert expect in proc.stderr
    assert "Traceback" not in proc.stderr
