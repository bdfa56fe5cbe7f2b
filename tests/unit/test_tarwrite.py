"""The restore tar writer: headers byte-identical to the standard library's, and what GNU tar
extracts from a written stream equals the backed-up tree (content, modes, nanosecond mtimes)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from resilience.repository.repo import iter_tree
from resilience.targets import tarwrite

from .engine_helpers import backup, new_repo, reopen

ascii_names = st.text(st.sampled_from("abcxyz0._-/"), min_size=1, max_size=130)
any_names = st.binary(min_size=1, max_size=130).filter(lambda b: b"\0" not in b)
owners = st.sampled_from(["", "root", "www-data", "x" * 40, "é"])


@settings(max_examples=400, deadline=None)
@given(name=ascii_names | any_names.map(lambda b: b.decode("utf-8", "surrogateescape")),
       kind=st.sampled_from(["file", "dir", "symlink", "fifo"]), mode=st.integers(0, 0o7777),
       uid=st.sampled_from([0, 33, 1000, 2**21, 2**30]), gid=st.sampled_from([0, 33, 2**22]),
       user=owners, group=owners, mtime_ns=st.integers(0, 2**62),
       size=st.sampled_from([0, 1, 511, 512, 10**6, 8**11 + 1]), target=ascii_names)
def test_header_is_the_standard_librarys(name, kind, mode, uid, gid, user, group, mtime_ns, size, target):
    node = {"type": kind, "mode": mode, "uid": uid, "gid": gid, "user": user, "group": group,
            "mtime_ns": mtime_ns, "size": size}
    if kind == "symlink":
        node["target"] = target
    ti = tarwrite.tarinfo(os.fsencode(name), node)
    assert tarwrite._header(ti) == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _tree(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            full = os.path.join(dirpath, n)
            st_ = os.lstat(full)
            rel = os.path.relpath(full, root)
            data = Path(full).read_bytes() if os.path.isfile(full) and not os.path.islink(full) else None
            out[rel] = (st_.st_mode, st_.st_mtime_ns if not os.path.isdir(full) else None, data,
                        os.readlink(full) if os.path.islink(full) else None)
    return out


def test_gnu_tar_extracts_what_was_backed_up(tmp_path):
    src = tmp_path / "site"
    (src / "news" / "2024").mkdir(parents=True)
    (src / "news" / "2024" / "a.html").write_bytes(b"<p>a</p>" * 1000)
    (src / "big.bin").write_bytes(os.urandom(3 << 20))  # several chunks, sent without copying
    (src / "holes.img").write_bytes(bytes(2 << 20) + b"end")  # zero runs
    (src / "empty").write_bytes(b"")
    (src / ("long-" + "n" * 150 + ".html")).write_bytes(b"long name")
    (src / "caf\xe9.html".encode("latin-1").decode("latin-1")).write_bytes(b"non-ascii name")
    os.symlink("news/2024/a.html", src / "link")
    os.mkfifo(src / "pipe")
    os.chmod(src / "empty", 0o600)
    os.utime(src / "big.bin", ns=(1, 1_700_000_000_123_456_789))
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src)
    repo = reopen(repo)
    items = list(iter_tree(repo, snap.tree))
    buf = io.BytesIO()
    buf.close = lambda: None  # write_tar closes its pipe; keep the bytes readable
    tarwrite.write_tar(repo, items, {r for r, n in items if n["type"] != "dir"}, buf)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xpf", "-", "--numeric-owner", "-C", str(out)], input=buf.getvalue(), check=True)
    assert _tree(out) == _tree(src)


def test_only_the_sent_files_and_every_folder(tmp_path):
    src = tmp_path / "site"
    (src / "d").mkdir(parents=True)
    (src / "d" / "keep.html").write_bytes(b"keep")
    (src / "d" / "send.html").write_bytes(b"send")
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src)
    repo = reopen(repo)
    items = list(iter_tree(repo, snap.tree))
    buf = io.BytesIO()
    buf.close = lambda: None
    tarwrite.write_tar(repo, items, {b"d/send.html"}, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert [m.name for m in tar] == ["d", "d/send.html"]
