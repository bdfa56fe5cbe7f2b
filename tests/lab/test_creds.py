"""creds in the lab: the audit finds a test admin account with an old password and one with a
weak password on every host; rotate changes the hash, the stored copy decrypts to a password
that verifies against the new hash, and the password appears in no output, ledger record or
Ansible artifact. In the lab every host's /etc is this machine's: only dedicated rsltest-*
accounts are created, changed and deleted here."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from resilience.config import load_config
from resilience.evidence import Ledger
from resilience.state import evidence_dir

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "inventories" / "lab" / "resilience.yml"
OLD, WEAK = "rsltest-old", "rsltest-weak"


def _accounts():
    spec = importlib.util.spec_from_file_location("resilience_accounts", REPO / "playbooks/library/resilience_accounts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_CONFIG=str(CONFIG))
    return subprocess.run([sys.executable, "-m", "resilience", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def shadow_hash(user: str) -> str:
    return subprocess.run(["getent", "shadow", user], capture_output=True, text=True, check=True).stdout.split(":")[1]


@pytest.fixture
def test_accounts(lab):
    """Two admin (sudo) test accounts on this machine (= every lab host): one with a strong
    password last changed in 2020, one with a weak password changed today."""
    users = (OLD, WEAK)
    for u in users:
        subprocess.run(["userdel", u], capture_output=True, check=False)
    try:
        for u, pw in ((OLD, secrets.token_urlsafe(18)), (WEAK, "Admin@123")):
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-G", "sudo", u], check=True)
            subprocess.run(["chpasswd"], input=f"{u}:{pw}", text=True, check=True)
        subprocess.run(["chage", "-d", "2020-01-01", OLD], check=True)
        yield users
    finally:
        cfg = load_config(str(CONFIG))
        for u in users:
            subprocess.run(["userdel", u], capture_output=True, check=False)
            for host in ("web1", "web2", "db1"):
                for suffix in ("", ".pending", ".previous"):
                    Path(cfg.credentials.dir, f"{host}-{u}.enc{suffix}").unlink(missing_ok=True)


def test_audit_finds_old_and_weak_admin_passwords_on_every_host(test_accounts):
    r = cli("creds", "audit", "--json")
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    assert set(res["hosts"]) == {"web1", "web2", "db1", "lb1", "gw1"} and not res["failed_hosts"]
    found = {(f["host"], f["user"]): f["findings"] for f in res["findings"]}
    for host in res["hosts"]:
        assert found[(host, OLD)] == ["old"]
        assert found[(host, WEAK)] == ["weak"]
    assert "Admin@123" not in r.stdout + r.stderr
    # Only verdicts leave the hosts: no hash in the output.
    assert shadow_hash(WEAK) not in r.stdout and "$y$" not in r.stdout and "$6$" not in r.stdout
    human = cli("creds", "audit", "--host", "web1")
    assert human.returncode == 1 and f"web1    {WEAK}" in human.stdout and "weak" in human.stdout


def test_rotate_sets_a_strong_password_kept_only_encrypted(test_accounts):
    accounts = _accounts()
    before = shadow_hash(WEAK)

    dry = cli("creds", "rotate", "--host", "web1", "--user", WEAK, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert shadow_hash(WEAK) == before
    refused = cli("creds", "rotate", "--host", "web1", "--user", "root")
    assert refused.returncode == 2 and "allowed_users" in refused.stderr

    r = cli("creds", "rotate", "--host", "web1", "--user", WEAK, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    after = shadow_hash(WEAK)
    assert after != before and res["changed"]
    stored = Path(res["stored"])
    assert stored.stat().st_mode & 0o077 == 0 and stored.parent.stat().st_mode & 0o077 == 0

    shown = cli("creds", "show", "--host", "web1", "--user", WEAK, "--yes")
    assert shown.returncode == 0, shown.stderr
    password = shown.stdout.strip()
    assert len(password) == 24
    assert accounts.crypt(password, after) == after          # the new hash is this password's
    assert accounts.crypt("Admin@123", after) != after

    # Nowhere else: not in the rotate output, not in the stored file, not in the ledger.
    assert password not in r.stdout + r.stderr + dry.stdout + dry.stderr
    assert password.encode() not in stored.read_bytes()
    cfg = load_config(str(CONFIG))
    ledger = Ledger(evidence_dir(cfg))
    for f in Path(evidence_dir(cfg)).rglob("*"):  # the ledger and every artifact
        if f.is_file():
            assert password.encode() not in f.read_bytes(), f
    run_recs = [x for x in ledger.records() if x.get("run") == res["run"]]
    steps = [x["step"] for x in run_recs if x["type"] == "step"]
    assert "keep the new password encrypted" in steps and "task Set the new password" in steps
    assert run_recs[-1]["outcome"] == "ok"
    # No ansible-runner folder is left behind with anything in it.
    for d in Path(tempfile.gettempdir()).glob("resilience-ansible-*"):
        for f in d.rglob("*"):
            if f.is_file():
                assert password.encode() not in f.read_bytes(), f

    # The audit is clean for the rotated account now.
    a = json.loads(cli("creds", "audit", "--host", "web1", "--json").stdout)
    assert not [f for f in a["findings"] if f["user"] == WEAK]


def test_rotate_playbook_leaves_the_password_in_no_ansible_artifact(test_accounts):
    """The playbook run directly with ansible-runner and its artifacts kept: every event,
    stdout and status file is free of the password (no_log on every task that sees it)."""
    import ansible_runner

    from resilience.control.ansible import runner_env

    cfg = load_config(str(CONFIG))
    password = "Rsl-" + secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="rsl-creds-test-") as data_dir:
        env = runner_env(cfg)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        (Path(data_dir) / "env").mkdir(mode=0o700)
        extravars = Path(data_dir) / "env" / "extravars"
        extravars.write_text(json.dumps({"target": "web2", "account": OLD, "new_secret": password}))
        os.chmod(extravars, 0o600)
        r = ansible_runner.run(private_data_dir=data_dir, project_dir=str(REPO / "playbooks"),
                               playbook="rotate_password.yml", inventory=str(cfg.inventory), envvars=env,
                               quiet=True, limit="web2")
        assert r.status == "successful", r.stdout.read()
        extravars.unlink()  # the one place it is expected; everything else must be clean
        hits = [str(f) for f in Path(data_dir).rglob("*") if f.is_file() and password.encode() in f.read_bytes()]
        assert hits == []
        files = [f for f in Path(data_dir).rglob("*") if f.is_file()]
        assert any("job_events" in str(f) for f in files)
    assert _accounts().crypt(password, shadow_hash(OLD)) == shadow_hash(OLD)
