"""`lab up` / `lab status` through the real CLI; the lab config and inventory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from resilience.config import load_config
from resilience.config_check import check_config
from resilience.errors import UsageError
from resilience.lab import layout as L
from resilience.lab import netns, site, system
from resilience.lab import topology as T

from .labtools import REPO, run_cli

pytestmark = pytest.mark.lab

HOSTS_REPORTED = {"web1", "web2", "db1", "lb1", "gw1", "s3", "internet"}


def test_status_json_reports_every_host_healthy(lab):
    proc = run_cli("lab", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["vip"] == "http://198.18.0.80/"
    assert st["s3_endpoint"] == "http://198.18.0.41:8333"
    assert st["public_url"] == "http://198.19.10.80/"
    assert st["active_line"] == "primary"
    assert set(st["hosts"]) >= HOSTS_REPORTED
    for name, h in st["hosts"].items():
        assert h["healthy"] is True, name
        assert h["netns"] == T.HOSTS[name].netns
        assert all(h["services"].values()), name
    assert st["hosts"]["web1"]["url"] == "http://198.18.0.11/"
    assert st["hosts"]["lb1"]["address"] == T.LB1_ADDR
    assert set(st["hosts"]["db1"]["services"]) == {"sshd", "postgresql"}
    # The CLI masks passwords in everything it prints; the Python API has the full DSN.
    assert "postgresql://postgres:***@198.18.0.21" in st["hosts"]["db1"]["dsn"]
    assert "passfile=" in st["hosts"]["db1"]["dsn_via_file"]


def test_up_again_changes_nothing(lab):
    anchors = {n: netns.anchor_pid(n) for n in T.HOSTS}
    pids = {f.name: f.read_text() for n in T.HOSTS for f in (L.host_dir(n) / "pids").glob("*")}
    proc = run_cli("lab", "up", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    assert result["changed"] == []
    assert result["elapsed_s"] < 10
    assert {n: netns.anchor_pid(n) for n in T.HOSTS} == anchors
    assert {f.name: f.read_text() for n in T.HOSTS
            for f in (L.host_dir(n) / "pids").glob("*")} == pids


def test_up_completes_a_half_up_lab(lab):
    old = netns.anchor_pid("web2")
    os.kill(old, 9)  # the host's anchor dies: its namespaces are as good as gone
    proc = run_cli("lab", "status")
    assert proc.returncode == 1 and "web2" in proc.stdout
    proc = run_cli("lab", "up", "--json")
    assert proc.returncode == 0, proc.stderr
    changed = json.loads(proc.stdout)["changed"]
    assert "built host web2" in changed and "started nginx on web2" in changed
    assert not any("web1" in c for c in changed)
    assert netns.anchor_pid("web2") not in (None, old)
    assert run_cli("lab", "status").returncode == 0


def test_not_root_gets_one_line_and_exit_2(lab):
    # The venv's Python may live under /root (mode 0700): let `nobody` traverse directories
    # (CAP_DAC_READ_SEARCH) without being root in any other way.
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    proc = run_cli("lab", "up", prefix=prefix,
                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "needs root" in lines[0] and "sudo resilience lab up" in lines[0]
    assert run_cli("lab", "status").returncode == 0  # and nothing was touched


def test_missing_package_names_the_apt_get_line(lab, monkeypatch):
    real_which = system.shutil.which
    monkeypatch.setattr(system.shutil, "which",
                        lambda name, **kw: None if name in ("haproxy", "nft") else
                        real_which(name, **kw))
    with pytest.raises(UsageError) as exc:
        system.preflight("up")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.endswith("apt-get install -y haproxy nftables")
    monkeypatch.setattr(system, "Path", lambda *a: Path("/nonexistent", *a[1:]))
    missing, packages = system.missing_tools()
    assert "postgresql-15" in packages


def test_lab_config_is_valid_and_matches_the_lab(lab):
    cfg = load_config(REPO / "inventories" / "lab" / "resilience.yml")
    assert check_config(cfg) == []
    portal = cfg.sites["portal"]
    assert portal.files.hosts == list(T.WEB_HOSTS) and portal.files.path == T.SITE_PATH
    assert portal.database.host == "db1" and portal.database.name == T.DB_NAME
    assert cfg.repository.endpoint == T.S3_ENDPOINT
    assert cfg.repository.access_key_id == T.S3_ACCESS_KEY_ID
    # Every secret the config names is one the lab generated, private to root.
    for path in (cfg.repository.password_file, cfg.repository.secret_access_key_file,
                 portal.database.password_file, portal.database.superuser_password_file):
        assert Path(path).parent == L.secrets_dir()
        assert Path(path).stat().st_mode & 0o077 == 0
    assert cfg.ssh.known_hosts == L.known_hosts()
    digests = [c.sha256 for c in portal.checks if c.sha256]
    assert digests == [site.index_sha256()]


def test_cli_help_lists_the_lab_commands():
    proc = run_cli("lab", "--help")
    assert proc.returncode == 0
    for cmd in ("up", "down", "status", "fault"):
        assert cmd in proc.stdout
    assert sys.executable
