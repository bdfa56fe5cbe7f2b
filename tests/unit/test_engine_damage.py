"""verify finds every kind of damage and names the snapshots and files it affects."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from resilience.repository.check import verify
from resilience.repository.store import LocalStore

from .engine_helpers import backup, new_repo, reopen, write_config


@pytest.fixture
def repo_with_history(tmp_path):
    src = tmp_path / "site"
    (src / "news").mkdir(parents=True)
    rng = random.Random(7)
    for i in range(30):
        (src / "news" / f"a{i}.html").write_bytes(rng.randbytes(rng.randint(100, 200_000)))
    (src / "index.html").write_text("home")
    repo = new_repo(tmp_path / "repo")
    s1, _ = backup(repo, src)
    (src / "index.html").write_text("home v2")
    (src / "news" / "late.html").write_bytes(rng.randbytes(50_000))
    s2, _ = backup(repo, src, parent=s1)
    return repo, src, (s1, s2)


def _packs(repo) -> list[Path]:
    return sorted(Path(repo.store.url).glob("data/*/*"))


def test_clean_repository_verifies(repo_with_history):
    repo, _src, _ = repo_with_history
    rep = verify(reopen(repo), read_data=1.0)
    assert rep.ok, rep.errors
    assert rep.snapshots == 2 and rep.packs_read == rep.packs > 1 and rep.blobs_read > 30


def test_every_flipped_bit_in_a_pack_is_found_with_read_data(repo_with_history):
    repo, _src, (s1, s2) = repo_with_history
    rng = random.Random(1)
    for pack in _packs(repo)[:6]:
        data = bytearray(pack.read_bytes())
        pos = rng.randrange(len(data) - 4)  # not the header length word: that is a truncation
        data[pos] ^= 1 << rng.randrange(8)
        original = pack.read_bytes()
        os.chmod(pack, 0o600)
        pack.write_bytes(bytes(data))
        rep = verify(reopen(repo), read_data=1.0)
        assert not rep.ok, f"flip at {pos} of {pack.name} went unnoticed"
        assert any(pack.name[:16] in e for e in rep.errors)
        pack.write_bytes(original)
    assert verify(reopen(repo), read_data=1.0).ok


def test_damaged_data_names_snapshots_and_files(repo_with_history):
    repo, _src, (s1, s2) = repo_with_history
    fresh = reopen(repo)
    # Damage the pack that holds news/a3.html's first blob.
    from resilience.repository.repo import iter_tree

    node = next(n for p, n in iter_tree(fresh, s1.tree) if p == b"news/a3.html")
    loc = fresh.index.get(bytes.fromhex(node["content"][0]))
    pack = Path(repo.store.url) / "data" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    data[loc.offset + 20] ^= 0xFF
    pack.write_bytes(bytes(data))
    rep = verify(reopen(repo), read_data=1.0)
    assert not rep.ok
    assert set(rep.damaged) == {s1.id, s2.id}  # the unchanged file is in both snapshots
    for d in rep.damaged.values():
        assert "news/a3.html" in d["files"]
    # Structure-only verify cannot see inside packs, but a restore of that file would fail:
    assert verify(reopen(repo)).ok


def test_truncated_and_missing_packs_are_found_without_read_data(repo_with_history):
    repo, _src, (s1, _s2) = repo_with_history
    packs = _packs(repo)
    with open(packs[0], "r+b") as f:
        f.truncate(100)
    packs[1].unlink()
    rep = verify(reopen(repo))
    assert not rep.ok
    assert any("truncated" in e for e in rep.errors) and any("missing" in e for e in rep.errors)
    assert s1.id in rep.damaged


def test_damaged_snapshot_and_index_are_named(repo_with_history):
    repo, _src, (s1, _s2) = repo_with_history
    snap_file = Path(repo.store.url) / "snapshots" / s1.id
    data = bytearray(snap_file.read_bytes())
    data[40] ^= 1
    snap_file.write_bytes(bytes(data))
    idx = next((Path(repo.store.url) / "index").iterdir())
    idx.write_bytes(idx.read_bytes()[:-10])
    rep = verify(reopen(repo))
    assert any(s1.id in e for e in rep.errors)
    assert any(idx.name in e for e in rep.errors)


def test_subset_reads_a_share_of_packs(repo_with_history):
    repo, *_ = repo_with_history
    rep = verify(reopen(repo), read_data=0.5, rng=random.Random(3))
    assert rep.ok and 0 < rep.packs_read < rep.packs


def test_cli_verify_exit_codes(cli, repo_with_history, tmp_path):
    repo, src, _ = repo_with_history
    cfg = write_config(tmp_path, src, Path(repo.store.url))
    env = {"RESILIENCE_PASSWORD": "correct horse battery staple"}
    r = cli("--config", cfg, "verify", "--read-data", env=env)
    assert r.code == 0, r.err
    pack = _packs(repo)[0]
    data = bytearray(pack.read_bytes())
    data[10] ^= 4
    pack.write_bytes(bytes(data))
    r = cli("--config", cfg, "verify", "--read-data", "--json", env=env)
    assert r.code == 4
    rep = json.loads(r.out)
    assert rep["ok"] is False and rep["damaged_snapshots"]
    r = cli("--config", cfg, "verify", "--read-data-subset", "abc", env=env)
    assert r.code == 2 and "percentage" in r.err


def test_wrong_password_is_exit_2(cli, repo_with_history, tmp_path):
    repo, src, _ = repo_with_history
    cfg = write_config(tmp_path, src, Path(repo.store.url))
    r = cli("--config", cfg, "snapshots", env={"RESILIENCE_PASSWORD": "nope"})
    assert r.code == 2
    assert r.err.strip() == f"resilience: error: wrong password for the repository at {repo.store.url}"
    r = cli("--config", cfg, "snapshots", "--json", env={"RESILIENCE_PASSWORD": "nope"})
    assert json.loads(r.out) == {"ok": False, "error": f"wrong password for the repository at {repo.store.url}",
                                 "exit_code": 2}


def test_local_store_never_exposes_half_written_objects(tmp_path):
    store = LocalStore(tmp_path / "r")
    store.create()
    store.put("data/ab/x", b"1" * 1000)
    (tmp_path / "r" / "data" / "ab" / ".tmp-999-abc").write_bytes(b"partial")
    assert list(store.list("data")) == [("data/ab/x", 1000)]
