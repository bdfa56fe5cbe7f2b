"""The repository commands end to end on a local repository, through the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resilience.evidence import Ledger
from resilience.repository.lock import RepoLock
from resilience.repository.store import LocalStore

from .engine_helpers import write_config

PW = {"RESILIENCE_PASSWORD": "s3cret-pass"}


@pytest.fixture
def setup(tmp_path, cli):
    site = tmp_path / "site"
    (site / "news").mkdir(parents=True)
    (site / "index.html").write_text("<h1>home</h1>")
    (site / "news" / "a.html").write_text("article a")
    cfg = write_config(tmp_path, site, tmp_path / "repo")

    def run(*args, env=None):
        return cli("--config", cfg, *args, env={**PW, **(env or {})})

    return run, site, tmp_path


def test_backup_before_init_is_an_error(setup):
    run, *_ = setup
    r = run("backup", "--site", "portal")
    assert r.code == 2 and "no repository at" in r.err and "resilience init" in r.err


def test_missing_password_is_exit_2(setup, monkeypatch):
    run, *_ = setup
    monkeypatch.delenv("RESILIENCE_PASSWORD", raising=False)
    r = run("init", env={"RESILIENCE_PASSWORD": ""})
    assert r.code == 2 and "no repository password" in r.err


def test_full_workflow(setup):
    run, site, tmp = setup
    r = run("init", "--json")
    assert r.code == 0
    assert run("init").code == 2  # refuses an existing repository
    r = run("backup", "--site", "portal", "--json")
    assert r.code == 0, r.err
    first = json.loads(r.out)["results"][0]
    assert (first["files_new"], first["files_changed"], first["files_unchanged"]) == (2, 0, 0)
    (site / "index.html").write_text("<h1>home v2</h1>")
    (site / "news" / "b.html").write_text("b")
    (site / "news" / "a.html").unlink()
    r = run("backup", "--site", "portal", "--dry-run", "--json")
    assert json.loads(r.out)["results"][0]["files_new"] == 1
    assert len(json.loads(run("snapshots", "--json").out)["snapshots"]) == 1  # dry run saved nothing
    second = json.loads(run("backup", "--all", "--json").out)["results"][0]
    assert (second["files_new"], second["files_changed"]) == (1, 1)
    snaps = json.loads(run("snapshots", "--site", "portal", "--json").out)["snapshots"]
    assert [s["id"] for s in snaps] == [first["snapshot"], second["snapshot"]]
    d = json.loads(run("diff", snaps[0]["short_id"], "latest", "--json").out)
    assert d["added"] == ["news/b.html"] and d["removed"] == ["news/a.html"] and d["changed"] == ["index.html"]
    ls = json.loads(run("ls", "latest", "news", "--json").out)["entries"]
    assert [e["path"] for e in ls] == ["news", "news/b.html"]
    r = run("restore", "--site", "portal", "--snapshot", snaps[0]["short_id"], "--to", tmp / "old", "--yes")
    assert r.code == 0, r.err
    assert (tmp / "old" / "index.html").read_text() == "<h1>home</h1>"
    assert (tmp / "old" / "news" / "a.html").exists() and not (tmp / "old" / "news" / "b.html").exists()
    r = run("restore", "--site", "portal", "--to", tmp / "old")
    assert r.code == 2 and "not empty" in r.err
    r = run("restore", "--site", "nosuch", "--to", tmp / "x")
    assert r.code == 2 and "unknown site 'nosuch'" in r.err
    r = run("restore", "--site", "portal", "--snapshot", "zzzz", "--to", tmp / "x")
    assert r.code == 2 and "invalid snapshot id" in r.err
    assert run("verify").code == 0
    r = run("forget", "--keep-last", "1", "--prune", "--json")
    res = json.loads(r.out)
    assert res["removed"] == 1 and res["prune"]["packs_deleted"] + res["prune"]["packs_repacked"] >= 1
    assert run("verify", "--read-data").code == 0
    runs = Ledger(tmp / "evidence").verify()
    assert runs.ok and runs.runs >= 10


def test_lock_contention_and_stale_locks(setup):
    run, _site, tmp = setup
    assert run("init").code == 0
    store = LocalStore(tmp / "repo")
    with RepoLock(store, exclusive=True):
        r = run("backup", "--site", "portal")
        assert r.code == 75 and "repository is locked: exclusive lock" in r.err
        r = run("unlock", "--json")
        assert json.loads(r.out)["kept"] and not json.loads(r.out)["removed"]
    # A lock left by a process that died (kill -9) on this host is provably stale.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = {"exclusive": True, "hostname": socket.gethostname(), "pid": child.pid, "pid_start": None,
            "user": "root", "created": time.time(), "refreshed": time.time()}
    child.kill()
    child.wait()
    store.put("locks/deadbeef", json.dumps(dead).encode())
    assert run("backup", "--site", "portal").code == 0  # a stale lock does not block
    r = run("unlock", "--json")
    assert [lk["pid"] for lk in json.loads(r.out)["removed"]] == [child.pid]
    assert not list(store.list("locks"))


def test_copy_sends_only_what_is_missing(setup):
    run, site, tmp = setup
    assert run("init").code == 0
    assert run("backup", "--site", "portal").code == 0
    r = run("copy", "--to", tmp / "offsite", "--json")
    assert r.code == 0, r.err
    first = json.loads(r.out)
    assert first["created"] and first["snapshots_copied"] == 1 and first["blobs_sent"] > 0
    r = run("copy", "--to", tmp / "offsite", "--json")
    again = json.loads(r.out)
    assert again["snapshots_copied"] == 0 and again["blobs_sent"] == 0
    (site / "news" / "c.html").write_text("c")
    assert run("backup", "--site", "portal").code == 0
    third = json.loads(run("copy", "--to", tmp / "offsite", "--json").out)
    assert third["snapshots_copied"] == 1 and third["blobs_sent"] == 3  # c.html, news/ tree, root tree
    # The copy is a full repository of its own: restore from it.
    (tmp / "o").mkdir()
    offsite_cfg = write_config(tmp / "o", site, tmp / "offsite")
    env = dict(os.environ, **PW, RESILIENCE_STATE_DIR=str(tmp / "st"))
    proc = subprocess.run([sys.executable, "-m", "resilience", "--config", str(offsite_cfg), "restore", "--site",
                           "portal", "--to", str(tmp / "from-offsite")], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "from-offsite" / "news" / "c.html").read_text() == "c"


def test_backup_copies_configured_in_repository_copies(tmp_path, cli):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("x")
    cfg = write_config(tmp_path, site, tmp_path / "repo")
    text = cfg.read_text().replace("pack_size_mib: 1}", f"pack_size_mib: 1, copies: [{{url: {tmp_path / 'copy'}}}]}}")
    cfg.write_text(text)
    assert cli("--config", cfg, "init", env=PW).code == 0
    r = cli("--config", cfg, "backup", "--site", "portal", "--json", env=PW)
    assert r.code == 0, r.err
    copies = json.loads(r.out)["results"][0]["copies"]
    assert copies[0]["ok"] and copies[0]["snapshots_copied"] == 1
    assert any(Path(tmp_path / "copy" / "snapshots").iterdir())


def test_dry_run_stores_nothing_even_for_large_backups(setup, monkeypatch):
    run, site, tmp = setup
    monkeypatch.setenv("RESILIENCE_PROCESSES", "1")
    (site / "big.bin").write_bytes(os.urandom(3 << 20))
    assert run("init").code == 0

    def objects() -> list[str]:
        repo = tmp / "repo"
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and p.parent.name != "locks")

    before = objects()
    r = run("backup", "--site", "portal", "--dry-run", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["results"][0]["bytes_added"] >= 3 << 20
    assert objects() == before
