"""Property-based tests (hypothesis) of the repository format and of path handling."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from resilience.repository import blob as blobs
from resilience.repository import index as index_mod
from resilience.repository.crypto import DecryptError, MasterKey
from resilience.repository.pack import PackBuilder, parse_header
from resilience.repository.tree import (
    decode_tree,
    encode_tree,
    get_bytes,
    node_name,
    set_bytes,
    valid_name,
)
from resilience.sources.patterns import Matcher

from ..fsutil import describe
from .engine_helpers import backup, new_repo, reopen

KEY = MasterKey.generate()

# Names: any bytes except "/" and NUL, not "." or "..", up to 40 bytes: Chinese, newlines,
# invalid UTF-8, spaces, dashes at the start…
names = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).map(str.encode),
    st.sampled_from(["政府信息公开", "news\nline", " lead space", "-dash", "\u00e9\u0301", "a" * 200]).map(str.encode),
).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_")[:255]).filter(valid_name)


@given(st.binary(max_size=20000), st.sampled_from([blobs.DATA, blobs.TREE]), st.integers(1, 19))
def test_blob_roundtrip_and_binding(data, kind, level):
    bid = KEY.blob_id(data)
    sealed = b"".join(blobs.seal_blob(KEY, kind, bid, data, level))
    assert blobs.open_blob(KEY, kind, bid, sealed, len(data)) == data
    # Sealed to its id and type: a different id or type does not open.
    other = bytes(32) if bid != bytes(32) else b"\x01" * 32
    for k, b in ((kind, other), (1 - kind, bid)):
        with pytest.raises(DecryptError):
            blobs.open_blob(KEY, k, b, sealed, len(data))


@given(st.binary(min_size=1, max_size=5000), st.integers(0, 10**9))
def test_any_flipped_bit_is_detected(data, where):
    bid = KEY.blob_id(data)
    sealed = bytearray(b"".join(blobs.seal_blob(KEY, blobs.DATA, bid, data, 3)))
    pos = where % (len(sealed) * 8)
    sealed[pos // 8] ^= 1 << (pos % 8)
    with pytest.raises((DecryptError, ValueError)):
        blobs.open_blob(KEY, blobs.DATA, bid, bytes(sealed), len(data))


@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.binary(max_size=3000)), max_size=30))
def test_pack_header_and_index_roundtrip(blobs_in):
    b = PackBuilder()
    for kind, data in blobs_in:
        bid = KEY.blob_id(data)
        b.add(kind, bid, blobs.seal_blob(KEY, kind, bid, data, 3), len(data))
    pid, raw, entries = b.finish(KEY)
    assert parse_header(KEY, raw, len(raw)) == entries
    for (kind, data), e in zip(blobs_in, entries, strict=True):
        assert blobs.open_blob(KEY, kind, e.id, raw[e.offset:e.offset + e.length], e.raw_length) == data
    packs, sup = index_mod.decode(index_mod.encode({pid: entries}, ["ab" * 32]))
    assert packs == {pid: entries} and sup == ["ab" * 32]


@given(st.lists(names, unique=True, max_size=20))
def test_tree_roundtrip_keeps_any_name(ns):
    nodes = []
    for n in ns:
        node = {"type": "file", "mode": 0o644, "size": 0, "content": []}
        set_bytes(node, "name", n)
        set_bytes(node, "target", n[::-1])
        nodes.append(node)
    back = decode_tree(encode_tree(nodes))
    assert sorted(node_name(n) for n in back) == sorted(ns)
    assert all(get_bytes(n, "target") == node_name(n)[::-1] for n in back)
    assert encode_tree(back) == encode_tree(nodes)  # canonical: equal folders, equal blobs


@given(st.sampled_from([b".", b"..", b"a/b", b"", b"x\x00y"]))
def test_tree_rejects_unsafe_names(bad):
    node = {"type": "file", "mode": 0o644}
    set_bytes(node, "name", bad)
    with pytest.raises(ValueError):
        decode_tree(encode_tree([node]))


segments = st.lists(st.text(alphabet="abcxyz.-_", min_size=1, max_size=6).filter(lambda s: s not in (".", "..")),
                    min_size=1, max_size=5)


@given(segments, segments)
def test_excluding_a_folder_excludes_everything_below(folder, below):
    m = Matcher(["/".join(folder) + "/"])
    path = "/".join(folder + below).encode()
    assert m.match(path, is_dir=False)


@given(segments)
def test_pattern_without_slash_matches_the_name_at_any_depth(path):
    name = path[-1]
    m = Matcher([name])
    assert m.match_exact("/".join(path).encode(), is_dir=False)
    assert not Matcher([name + "zz"]).match_exact("/".join(path).encode(), is_dir=False)


@given(segments, segments)
def test_anchored_double_star(prefix, rest):
    m = Matcher(["/".join(prefix) + "/**"])
    assert m.match_exact("/".join(prefix + rest).encode(), is_dir=False)
    assume(prefix[0] != "q")
    assert not m.match_exact(("q/" + "/".join(prefix + rest)).encode(), is_dir=False)


@given(st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\x00" not in b))
def test_star_matches_any_byte_name(name):
    assume(valid_name(name))
    assert Matcher(["*"]).match_exact(name, is_dir=False)


# -- whole round trips over random trees ----------------------------------------------------------

entries = st.recursive(
    st.one_of(
        st.tuples(st.just("file"), st.one_of(st.binary(max_size=3000), st.sampled_from([b"", b"\x00" * 9000])),
                  st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2750, 0o444])),
        st.tuples(st.just("symlink"), names, st.just(0)),
        st.tuples(st.just("fifo"), st.just(b""), st.just(0o640)),
    ),
    lambda kids: st.tuples(st.just("dir"), st.dictionaries(names, kids, max_size=5),
                           st.sampled_from([0o755, 0o700, 0o1777])),
    max_leaves=15,
)


def _materialise(base: bytes, tree: dict, mtimes) -> None:
    for name, (kind, payload, mode) in tree.items():
        path = base + b"/" + name
        if kind == "dir":
            os.mkdir(path)
            _materialise(path, payload, mtimes)
            os.chmod(path, mode)
        elif kind == "file":
            with open(path, "wb") as f:
                f.write(payload)
            os.chmod(path, mode)
            os.setxattr(path, "user.t", name[:50] or b"x")
        elif kind == "symlink":
            os.symlink(payload, path)
        elif kind == "fifo":
            os.mkfifo(path, mode)
        if kind != "symlink":
            t = next(mtimes)
            os.utime(path, ns=(t, t), follow_symlinks=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.dictionaries(names, entries, max_size=6), st.lists(st.integers(0, 2**62), min_size=64, max_size=64))
def test_random_trees_survive_backup_and_restore(tree, times):
    base = Path(tempfile.mkdtemp(prefix="rt-"))
    try:
        src = base / "src"
        src.mkdir()
        _materialise(os.fsencode(src), tree, iter(times * 10))
        repo = new_repo(base / "repo")
        snap, stats = backup(repo, src)
        assert not stats.errors
        from resilience.repository.restore import restore_to

        fresh = reopen(repo)
        restore_to(fresh, fresh.find_snapshot(snap.id), base / "dst")
        assert describe(base / "dst") == describe(src)
        # A second backup of the same tree changes nothing.
        snap2, stats2 = backup(fresh, src, parent=snap)
        assert snap2.tree == snap.tree and stats2.bytes_read == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
