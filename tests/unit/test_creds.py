"""Pure parts of `resilience creds`: password generation, stored copies, the host-side audit."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resilience.actions import creds
from resilience.errors import ResilienceError, UsageError

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("resilience_accounts", REPO / "playbooks/library/resilience_accounts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


accounts = _module()


def test_generated_passwords_are_long_varied_and_safe_for_chpasswd():
    seen = set()
    for _ in range(200):
        pw = creds.generate_password(24)
        assert len(pw) == 24 and set(pw) <= set(creds.ALPHABET)
        assert any(c.islower() for c in pw) and any(c.isupper() for c in pw)
        assert any(c.isdigit() for c in pw) and any(c in creds.SYMBOLS for c in pw)
        assert ":" not in pw and not any(c.isspace() for c in pw)
        seen.add(pw)
    assert len(seen) == 200
    with pytest.raises(ValueError):
        creds.generate_password(8)


def test_account_names_and_allow_list():
    creds.check_user("rsltest-a", ["rsltest-*"])
    creds.check_user("opsadmin", [])
    with pytest.raises(UsageError, match="not in credentials.allowed_users"):
        creds.check_user("root", ["rsltest-*"])
    for bad in ("", "Root", "a b", "x;rm", "-x", "a:b"):
        with pytest.raises(UsageError, match="invalid account name"):
            creds.check_user(bad, [])


def test_shipped_weak_list_is_read_without_comments_or_duplicates(tmp_path):
    words = creds.read_weak_list()
    assert "123456" in words and "P@ssw0rd" in words and not any(w.startswith("#") for w in words)
    f = tmp_path / "weak.txt"
    f.write_text("# c\n\na\nb\na\n  c  \n")
    assert creds.read_weak_list(f) == ["a", "b", "c"]
    with pytest.raises(UsageError, match="cannot read"):
        creds.read_weak_list(tmp_path / "missing")


def test_stored_copy_opens_only_for_its_account_and_key():
    sealed = creds.seal_secret("S3cret-pw!xyzXYZ123", b"key", "web1", "alice", meta={"rotated_at": "t"})
    assert b"S3cret" not in sealed
    assert creds.open_secret(sealed, b"key", "web1", "alice") == "S3cret-pw!xyzXYZ123"
    for key, host, user in ((b"other", "web1", "alice"), (b"key", "web2", "alice"), (b"key", "web1", "bob")):
        with pytest.raises(ResilienceError, match="does not open") as exc:
            creds.open_secret(sealed, key, host, user)
        assert "S3cret" not in str(exc.value)
    tampered = sealed.replace(b'"data": "', b'"data": "A')
    with pytest.raises(ResilienceError):
        creds.open_secret(tampered, b"key", "web1", "alice")


def test_summarise_lists_only_accounts_with_findings():
    per_host = {"web2": {"accounts": [{"user": "a", "findings": ["old"], "age_days": 90, "state": "usable"}]},
                "web1": {"accounts": [{"user": "root", "findings": [], "state": "none"},
                                      {"user": "b", "findings": ["weak"], "age_days": 1, "state": "usable"}]}}
    rows = creds.summarise(per_host)
    assert [(r["host"], r["user"], r["findings"]) for r in rows] == [("web1", "b", ["weak"]), ("web2", "a", ["old"])]


def test_admins_are_uid0_and_admin_group_members():
    passwd = [["root", "x", "0", "0"], ["toor", "x", "0", "100"], ["alice", "x", "1000", "1000"],
              ["bob", "x", "1001", "27"], ["carol", "x", "1002", "1002"], ["syslog", "x", "104", "4"]]
    group = [["root", "x", "0", ""], ["sudo", "x", "27", "alice"], ["wheel", "x", "10", "carol,alice"],
             ["adm", "x", "4", "syslog"], ["alice", "x", "1000", ""]]
    got = accounts.admins(passwd, group, ["root", "sudo", "wheel", "admin"])
    assert got == {"root": ["uid 0", "group root"], "toor": ["uid 0"], "alice": ["group sudo", "group wheel"],
                   "bob": ["group sudo"], "carol": ["group wheel"]}


def test_assess_finds_old_weak_empty_and_forced_change():
    weak_hash = accounts.crypt("admin123", "$6$abcdefgh$")
    strong_hash = accounts.crypt("Zq8!long-and-random", "$6$ijklmnop$")
    today = 20000
    rep = accounts.assess("a", ["a", weak_hash, str(today - 10)], today, 60, ["123456", "admin123"])
    assert rep["state"] == "usable" and rep["findings"] == ["weak"] and rep["age_days"] == 10
    rep = accounts.assess("b", ["b", strong_hash, str(today - 61)], today, 60, ["admin123"])
    assert rep["findings"] == ["old"]
    assert accounts.assess("c", ["c", "", "1"], today, 60, [])["findings"] == ["empty"]
    assert accounts.assess("d", ["d", strong_hash, "0"], today, 60, [])["findings"] == ["must-change"]
    assert accounts.assess("e", ["e", strong_hash, ""], today, 60, [])["findings"] == ["no-date"]
    for nologin in ("*", "!", "!!"):
        rep = accounts.assess("f", ["f", nologin, "1"], today, 60, ["admin123"])
        assert rep["state"] == "none" and rep["findings"] == []
    rep = accounts.assess("g", ["g", "!" + weak_hash, str(today - 100)], today, 60, ["admin123"])
    assert rep["state"] == "locked" and rep["findings"] == ["old"]


def test_yescrypt_and_sha512_hashes_verify_through_libcrypt():
    y = accounts.crypt("hunter2hunter2", "$y$j9T$yvJP0Fxn.apz3zaNi03iU0")
    assert y.startswith("$y$") and accounts.crypt("hunter2hunter2", y) == y and accounts.crypt("x", y) != y
    h = subprocess.run(["openssl", "passwd", "-6", "-salt", "saltsalt", "hunter2hunter2"], capture_output=True,
                       text=True, check=True).stdout.strip()
    assert accounts.crypt("hunter2hunter2", h) == h
    assert accounts.crypt("other", h) != h


def _cli(tmp_path, *args):
    cfg = tmp_path / "resilience.yml"
    cfg.write_text(f"repository: {{url: {tmp_path / 'repo'}}}\ninventory: {REPO / 'inventories/lab/hosts.yml'}\n"
                   f"credentials: {{dir: {tmp_path / 'creds'}, allowed_users: ['rsltest-*']}}\n")
    env = dict(os.environ, RESILIENCE_PASSWORD="pw", RESILIENCE_STATE_DIR=str(tmp_path / "state"))
    return subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_show_refuses_a_pipe_without_yes_and_json(tmp_path):
    r = _cli(tmp_path, "creds", "show", "--host", "web1", "--user", "rsltest-a")
    assert r.returncode == 2 and "not a terminal" in r.stderr and r.stderr.count("\n") == 1
    r = _cli(tmp_path, "--json", "creds", "show", "--host", "web1", "--user", "rsltest-a", "--yes")
    assert r.returncode == 2 and "no --json" in r.stderr
    r = _cli(tmp_path, "creds", "show", "--host", "web1", "--user", "rsltest-a", "--yes")
    assert r.returncode == 2 and "no stored password" in r.stderr


def test_rotate_refuses_accounts_outside_the_allow_list(tmp_path):
    r = _cli(tmp_path, "creds", "rotate", "--host", "web1", "--user", "root")
    assert r.returncode == 2 and "allowed_users" in r.stderr and "Traceback" not in r.stderr
    r = _cli(tmp_path, "creds", "audit", "--max-age", "soon")
    assert r.returncode == 2 and "--max-age" in r.stderr
