"""Proofs about a member's files: round trip for any paths, and nothing forged or stale is trusted."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.targets import memberstate

from .engine_helpers import new_repo


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Two real (local, encrypted) repositories: memberstate uses their ids and MAC keys."""
    base = tmp_path_factory.mktemp("repos")
    return new_repo(base / "r1"), new_repo(base / "r2")


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("RESILIENCE_STATE_DIR", str(tmp_path))
    return tmp_path


paths = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)
proofs = st.dictionaries(paths, st.tuples(st.integers(1, 2**40), st.integers(0, 2**40), st.integers(0, 2**62),
                                          st.integers(0, 2**62), st.text("0123456789abcdef", min_size=64, max_size=64)),
                         max_size=20)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(p=proofs)
def test_round_trip(repos, p):
    repo = repos[0]
    memberstate.save(repo, "web1", "/var/www/portal", p)
    assert memberstate.load(repo, "web1", "/var/www/portal") == p


def test_kept_per_repository_host_and_path(repos):
    repo = repos[0]
    p = {b"a": (1, 2, 3, 4, "f" * 64)}
    memberstate.save(repo, "web1", "/srv/a", p)
    assert memberstate.load(repo, "web2", "/srv/a") == {}
    assert memberstate.load(repo, "web1", "/srv/b") == {}
    assert memberstate.load(repos[1], "web1", "/srv/a") == {}


def test_a_forged_record_is_ignored(state, repos):
    repo = repos[0]
    memberstate.save(repo, "web1", "/srv", {b"index.html": (1, 10, 3, 4, "a" * 64)})
    (f,) = (state / "members").iterdir()
    data = json.loads(f.read_text())
    body = json.loads(data["body"])
    body["proofs"][0][4] = "b" * 64  # claim another content for the same stat key
    data["body"] = json.dumps(body, separators=(",", ":"))
    f.write_text(json.dumps(data))
    assert memberstate.load(repo, "web1", "/srv") == {}
    # ...and a record made with another repository's key does not verify either.
    memberstate.save(repos[1], "web1", "/srv", {b"index.html": (1, 10, 3, 4, "b" * 64)})
    other = next(p for p in (state / "members").iterdir() if p != f)
    other.replace(f)
    assert memberstate.load(repo, "web1", "/srv") == {}


def test_only_the_exact_stat_key_proves_anything():
    p = {b"a": (7, 100, 5, 6, "c" * 64)}
    assert memberstate.proven_sha256(p, b"a", 7, 100, 5, 6) == "c" * 64
    assert memberstate.proven_sha256(p, b"a", 7, 100, 5, 9) is None  # ctime moved: changed since
    assert memberstate.proven_sha256(p, b"a", 8, 100, 5, 6) is None
    assert memberstate.proven_sha256(p, b"a", 7, 101, 5, 6) is None
    assert memberstate.proven_sha256(p, b"b", 7, 100, 5, 6) is None


def test_damaged_file_costs_nothing_but_time(state, repos):
    repo = repos[0]
    memberstate.save(repo, "web1", "/srv", {b"a": (1, 2, 3, 4, "d" * 64)})
    (f,) = (state / "members").iterdir()
    f.write_bytes(b"\x00garbage")
    assert memberstate.load(repo, "web1", "/srv") == {}
