"""Hosts: SSH with pinned host keys, own hostname, own /var/www, standard paths."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from resilience.lab import layout as L
from resilience.lab import run_in
from resilience.lab import topology as T

from .labtools import REPO, ssh

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("host", T.SSH_HOSTS)
def test_ssh_with_strict_host_keys_reaches_each_host(lab, host):
    proc = ssh(host, "hostname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == host


def test_ssh_refuses_a_host_missing_from_known_hosts(lab, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = ssh("web1", "hostname", known_hosts=empty)
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr or "No ED25519 host key" in proc.stderr
    assert "web1" not in proc.stdout


def test_ssh_refuses_a_wrong_host_key(lab, tmp_path):
    # web1's address listed with web2's key: a man in the middle, as far as ssh can tell.
    web2_key = (L.host_dir("web2") / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text()
    kind, blob = web2_key.split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"web1,{T.WEB1_ADDR} {kind} {blob}\n")
    proc = ssh("web1", "hostname", known_hosts=wrong)
    assert proc.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in proc.stderr or "verification failed" in proc.stderr


def test_each_host_sees_its_own_var_www(lab):
    marker = f"only-on-web1-{uuid.uuid4().hex}.txt"
    run_in("web1", ["sh", "-c", f"echo web1 > /var/www/{marker}"])
    try:
        assert (L.www_dir("web1") / marker).exists()
        assert ssh("web1", f"cat /var/www/{marker}").stdout.strip() == "web1"
        assert ssh("web2", f"test -e /var/www/{marker}").returncode == 1
        assert not (L.www_dir("web2") / marker).exists()
        # ...and the ops host's own /var/www is untouched too.
        assert not Path("/var/www", marker).exists()
    finally:
        (L.www_dir("web1") / marker).unlink(missing_ok=True)


def test_hosts_have_their_own_var_log_and_standard_paths(lab):
    # sshd logs to /var/log/auth.log inside each host: the ssh login above is in web1's only.
    assert "Accepted publickey for root" in ssh("web1", "cat /var/log/auth.log").stdout
    out = ssh("lb1", "test -S /run/haproxy/admin.sock && test -f /etc/haproxy/haproxy.cfg "
                     "&& echo yes").stdout
    assert out.strip() == "yes"
    assert ssh("web1", "test -f /var/log/nginx/portal.access.log").returncode == 0
    assert ssh("db1", "test -S /run/postgresql/.s.PGSQL.5432").returncode == 0
    # A web host's /var/log is not the ops host's.
    assert not Path("/var/log/nginx/portal.access.log").exists() or \
        Path("/var/log/nginx/portal.access.log").stat().st_ino != \
        (L.log_dir("web1") / "nginx" / "portal.access.log").stat().st_ino


def test_ansible_reaches_every_inventory_host(lab):
    if L.lab_dir() != L.DEFAULT_LAB_DIR:
        pytest.skip("the checked-in inventory names the default lab folder")
    ansible = Path(sys.executable).parent / "ansible"
    if not ansible.exists():
        pytest.skip("ansible is not installed next to this Python")
    proc = subprocess.run([str(ansible), "-i", "inventories/lab/hosts.yml", "all", "-m", "ping"],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "ANSIBLE_HOST_KEY_CHECKING": "True",
                               "HOME": "/root"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in ("web1", "web2", "db1", "lb1", "gw1"):
        assert f"{host} | SUCCESS" in proc.stdout
