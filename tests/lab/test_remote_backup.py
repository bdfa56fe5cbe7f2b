"""Backups of a site's files from cluster members over SSH (lab web1/web2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.evidence import Ledger
from resilience.lab import faults
from resilience.lab import layout as L
from resilience.lab.hosts import run_in

from ..fsutil import describe

pytestmark = pytest.mark.lab
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_cfg(tmp: Path, known_hosts: Path | None = None, hosts: str = "[web1, web2]") -> Path:
    cfg = tmp / "resilience.yml"
    cfg.write_text(f"""\
repository: {{url: {tmp / 'repo'}}}
inventory: {REPO_ROOT / 'inventories/lab/hosts.yml'}
ssh: {{identity_file: {L.client_key()}, known_hosts: {known_hosts or L.known_hosts()}}}
evidence: {{dir: {tmp / 'evidence'}}}
sites:
  portal:
    files: {{hosts: {hosts}, path: /var/www/portal, exclude: ["cache/**"]}}
""")
    return cfg


def run(cfg: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_PASSWORD="pw", RESILIENCE_STATE_DIR=str(tmp / "state"))
    return subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def setup(lab, tmp_path):
    for host in ("web1", "web2"):
        faults.start_service(host, "sshd")
    cfg = write_cfg(tmp_path)
    assert run(cfg, "init", tmp=tmp_path).returncode == 0
    yield cfg, tmp_path
    for host in ("web1", "web2"):
        faults.start_service(host, "sshd")
    run_in("web1", ["rm", "-f", "/var/www/portal/news/remote-test.html"], check=False)


def backup(cfg: Path, tmp: Path) -> dict:
    r = run(cfg, "backup", "--site", "portal", "--json", tmp=tmp)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["results"][0]


def test_backup_from_the_first_member_restores_exactly(setup):
    cfg, tmp = setup
    res = backup(cfg, tmp)
    assert res["member"] == "web1" and res["files_new"] > 50
    snaps = json.loads(run(cfg, "snapshots", "--json", tmp=tmp).stdout)["snapshots"]
    src = snaps[-1]["source"]
    assert (src["host"], src["path"]) == ("web1", "/var/www/portal") and src["listed_at"]
    r = run(cfg, "restore", "--site", "portal", "--to", str(tmp / "out"), tmp=tmp)
    assert r.returncode == 0, r.stderr
    expected = describe(L.site_dir("web1"))
    # Excluded: cache/** (the folder itself stays); xattrs are not read from members.
    expected = {k: v for k, v in expected.items() if not k.startswith(b"cache/")}
    got = describe(tmp / "out")
    for d in (expected, got):
        for v in d.values():
            v.pop("xattrs", None)
    assert got == expected
    # The evidence names the member.
    step = next(r for r in Ledger(tmp / "evidence").records()
                if r.get("type") == "step" and r["step"] == "backup files of portal")
    assert step["details"]["member"] == "web1"


def test_only_changed_files_cross_the_wire(setup):
    cfg, tmp = setup
    first = backup(cfg, tmp)
    again = backup(cfg, tmp)
    assert again["files_unchanged"] == first["files_new"] and again["bytes_read"] == 0
    listing_only = again["bytes_transferred"]
    payload = "<p>published today</p>" * 2000
    run_in("web1", ["sh", "-c", f"printf '%s' '{payload}' > /var/www/portal/news/remote-test.html"])
    third = backup(cfg, tmp)
    assert (third["files_new"], third["files_changed"]) == (1, 0)
    assert third["bytes_read"] == len(payload)
    # The listing plus one file and tar's framing (10 KiB records): nothing else was sent.
    assert third["bytes_transferred"] < listing_only + len(payload) + 2 * 10240


def test_unreachable_member_falls_back_to_the_next(setup):
    cfg, tmp = setup
    faults.stop_service("web1", "sshd")
    res = backup(cfg, tmp)
    assert res["member"] == "web2"
    assert res["members_unreachable"][0]["host"] == "web1"


def test_no_member_reachable_is_a_clear_error(setup):
    cfg, tmp = setup
    faults.stop_service("web1", "sshd")
    faults.stop_service("web2", "sshd")
    r = run(cfg, "backup", "--site", "portal", tmp=tmp)
    assert r.returncode == 75
    assert "no member reachable: web1: connection refused; web2: connection refused" in r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_host_key_is_refused_without_falling_back(setup):
    cfg, tmp = setup
    kh = tmp / "known_hosts"
    lines = L.known_hosts().read_text().splitlines()
    # Keep web2's key, drop web1's: web1 is now unknown.
    kh.write_text("\n".join(ln for ln in lines if ln.split(",")[0] != "web1") + "\n")
    cfg2 = write_cfg(tmp, known_hosts=kh)
    r = run(cfg2, "backup", "--site", "portal", tmp=tmp)
    assert r.returncode == 1
    assert "web1: host key verification failed" in r.stderr
    assert not json.loads(run(cfg2, "snapshots", "--json", tmp=tmp).stdout)["snapshots"]
