"""Runs last: `lab down` leaves nothing of the lab behind (and the lab stays down)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from resilience.lab import layout as L
from resilience.lab import netns
from resilience.lab import topology as T
from resilience.lab.system import all_pids, netns_inode_of, pid_alive, read_pid

from .labtools import run_cli

pytestmark = pytest.mark.lab


def test_down_leaves_nothing(lab):
    # Everything the lab runs, recorded before: pid files and every process in its netns.
    recorded = {read_pid(f) for n in T.HOSTS for f in (L.host_dir(n) / "pids").glob("*.pid")}
    inodes = {netns.netns_inode(T.HOSTS[n].netns) for n in T.HOSTS}
    in_netns = {p for p in all_pids() if netns_inode_of(p) in inodes}
    assert len(in_netns) > 20  # sshd x6, nginx, haproxy, postgres, weed, anchors ...
    alive_before = {p for p in recorded | in_netns if p and pid_alive(p)}

    proc = run_cli("lab", "down")
    assert proc.returncode == 0, proc.stderr

    names = {h.netns for h in T.HOSTS.values()}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert not names & {ln.split()[0] for ln in listed.splitlines() if ln.strip()}
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    assert " rsl-" not in links
    with open("/proc/self/mountinfo") as f:
        mountinfo = f.read()
    for name in names:
        assert f"/run/netns/{name} " not in mountinfo
    assert str(L.lab_dir()) not in mountinfo
    still = [p for p in alive_before if pid_alive(p)]
    assert still == [], f"still alive: {still}"
    assert all(not os.path.exists(f"/run/netns/{n}") for n in names)

    # The generated data is kept (keys, secrets, database, site) for the next `lab up`.
    assert L.client_key().exists() and L.secret_path("repo_password").exists()
    assert (L.pg_data_dir() / "PG_VERSION").exists()
    assert (L.site_dir("web1") / "index.html").exists()


def test_status_of_a_down_lab_is_all_unhealthy_exit_1(lab):
    proc = run_cli("lab", "status", "--json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    st = json.loads(proc.stdout)
    assert st["ok"] is False and st["active_line"] is None
    assert all(h["healthy"] is False for h in st["hosts"].values())


def test_down_again_is_harmless(lab):
    proc = run_cli("lab", "down", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed"] == []
