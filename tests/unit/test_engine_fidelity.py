"""Restore reproduces everything the engine promises, on a hand-made tree of awkward cases."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from resilience.repository.backup import Backup
from resilience.sources.local import LocalSource

from ..fsutil import allocated, describe
from .engine_helpers import backup, new_repo, reopen, roundtrip

ROOT = os.geteuid() == 0


def build_awkward_tree(base: Path) -> Path:
    src = base / "site"
    src.mkdir()
    b = os.fsencode(src)
    (src / "index.html").write_text("<h1>政府信息公开</h1>\n" * 100)
    (src / "empty.txt").write_bytes(b"")
    (src / "empty-dir").mkdir()
    os.utime(src / "empty-dir", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    (src / "新闻").mkdir()
    (src / "新闻" / "通知.html").write_text("通知 notice\n")
    with open(b + b"/bad-\xff\xfe-name.bin", "wb") as f:
        f.write(os.urandom(3000))
    with open(b + b"/line\nbreak.txt", "wb") as f:
        f.write(b"newline in the name")
    # A sparse file: holes at the start, middle and end.
    with open(src / "sparse.img", "wb") as f:
        f.seek(50 << 20)
        f.write(b"data in the middle" * 1000)
        f.truncate(120 << 20)
    big = os.urandom(6 << 20)
    (src / "big.bin").write_bytes(big)
    (src / "copy-of-big.bin").write_bytes(big)  # identical content is stored once
    os.symlink("index.html", src / "rel-link")
    os.symlink("/etc/passwd", src / "abs-link")
    os.symlink("does/not/exist", src / "dangling-link")
    os.link(src / "index.html", src / "hard-link.html")
    os.mkfifo(src / "a-fifo")
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "setuid", 0o4755)
    (src / "setgid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "setgid", 0o2750)
    (src / "sticky").mkdir()
    os.chmod(src / "sticky", 0o1777)
    (src / "private").write_text("secret page")
    os.chmod(src / "private", 0o600)
    os.setxattr(src / "index.html", "user.checksum", b"\x00\x01binary")
    os.setxattr(src / "新闻", "user.origin", "编辑部".encode())
    if ROOT:
        os.chown(src / "private", 1234, 5678)
        os.lchown(src / "abs-link", 4321, 8765)
    for p in (src / "index.html", src / "sparse.img"):
        os.utime(p, ns=(1_700_000_000_000_000_001, 1_700_000_000_987_654_321))
    return src


def test_restore_reproduces_everything(tmp_path):
    src = build_awkward_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    dest = tmp_path / "restored"
    _snap, stats = roundtrip(repo, src, dest)
    assert not stats.errors
    before, after = describe(src), describe(dest)
    assert after == before
    # Sparse stays sparse: 120 MiB apparent, well under 1 MiB allocated.
    assert os.path.getsize(dest / "sparse.img") == 120 << 20
    assert allocated(dest / "sparse.img") < (1 << 20)
    # Hardlinks come back as hardlinks.
    assert os.stat(dest / "index.html").st_ino == os.stat(dest / "hard-link.html").st_ino
    assert stat.S_ISFIFO(os.lstat(dest / "a-fifo").st_mode)
    assert os.readlink(dest / "dangling-link") == "does/not/exist"
    if ROOT:
        assert (os.stat(dest / "private").st_uid, os.stat(dest / "private").st_gid) == (1234, 5678)
        assert os.lstat(dest / "abs-link").st_uid == 4321


def test_dedup_within_and_across_files(tmp_path):
    src = build_awkward_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    _snap, stats = backup(repo, src)
    # Two identical 6 MiB files of random data: the second costs nothing.
    assert stats.bytes_total > (12 << 20)
    assert (6 << 20) < stats.bytes_stored < (6 << 20) + (256 << 10)


def test_unchanged_tree_reads_nothing_and_changed_file_only_is_read(tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    for i in range(50):
        (src / f"page{i}.html").write_text(f"page {i} " * 500)
    repo = new_repo(tmp_path / "repo")
    s1, st1 = backup(repo, src)
    assert st1.files_new == 50 and st1.bytes_read > 0
    s2, st2 = backup(repo, src, parent=s1)
    assert st2.files_unchanged == 50 and st2.bytes_read == 0 and st2.blobs_added == 0
    assert s2.tree == s1.tree
    (src / "page7.html").write_text("edited")
    s3, st3 = backup(repo, src, parent=s2)
    assert (st3.files_changed, st3.files_unchanged, st3.bytes_read) == (1, 49, len("edited"))


def test_excludes(tmp_path):
    src = tmp_path / "site"
    (src / "cache" / "deep").mkdir(parents=True)
    (src / "cache" / "deep" / "x.html").write_text("x")
    (src / "news").mkdir()
    (src / "news" / "a.html").write_text("a")
    (src / "news" / "a.tmp").write_text("tmp")
    (src / "keep.tmp.html").write_text("keep")
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src, exclude=["cache/**", "*.tmp"])
    from resilience.repository.repo import iter_tree

    paths = {p for p, _ in iter_tree(reopen(repo), snap.tree)}
    assert paths == {b"cache", b"news", b"news/a.html", b"keep.tmp.html"}


def test_files_vanishing_or_changing_during_backup_are_reported_not_fatal(tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    (src / "stays.html").write_text("stays")
    (src / "vanishes.html").write_text("gone soon")
    (src / "grows.log").write_text("line\n" * 10)

    class RacingSource(LocalSource):
        """The real local source, with the races an editor or a log writer cause."""

        def open(self, files):
            os.unlink(src / "vanishes.html")
            with open(src / "grows.log", "a") as f:
                f.write("one more line\n")
            yield from super().open(files)

    repo = new_repo(tmp_path / "repo")
    snap, stats = Backup(repo, RacingSource(src), site="portal").run()
    assert snap is not None and not stats.errors
    assert any("vanishes.html: vanished" in w for w in stats.warnings)
    assert any("grows.log: changed during the backup" in w for w in stats.warnings)
    dest = tmp_path / "out"
    fresh = reopen(repo)
    from resilience.repository.restore import restore_to

    restore_to(fresh, fresh.find_snapshot(snap.id), dest)
    assert sorted(os.listdir(dest)) == ["grows.log", "stays.html"]
    assert (dest / "grows.log").read_text().endswith("one more line\n")


@pytest.mark.skipif(not ROOT, reason="needs root to run the backup as another user")
def test_unreadable_file_is_an_error_but_the_rest_is_saved():
    import shutil
    import subprocess
    import sys
    import tempfile

    # pytest's tmp_path is private to root; the unprivileged backup needs a world-readable base.
    base = Path(tempfile.mkdtemp(prefix="resilience-nobody-"))
    try:
        os.chmod(base, 0o755)
        src = base / "site"
        src.mkdir()
        (src / "ok.html").write_text("ok")
        (src / "locked.html").write_text("locked")
        os.chmod(src / "locked.html", 0)
        (base / "repo").mkdir(mode=0o777)
        os.chmod(base / "repo", 0o777)
        script = (
            "import sys\n"
            "from resilience.sources.local import LocalSource\n"
            "from resilience.repository.backup import Backup\n"
            "from resilience.repository.repo import Repository\n"
            "from resilience.repository.store import LocalStore\n"
            f"r = Repository.init(LocalStore({str(base / 'repo')!r}), b'pw')\n"
            f"s, st = Backup(r, LocalSource({str(src)!r}), site='p').run()\n"
            "print(s.id if s else None); print(st.errors)\n"
            "sys.exit(3 if st.errors else 0)\n"
        )
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               sys.executable, "-c", script], cwd=base, capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 3, proc.stderr
        snap_id, errors = proc.stdout.splitlines()[:2]
        assert len(snap_id) == 64  # the snapshot was still written
        assert "locked.html: permission denied" in errors
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_restore_refuses_non_empty_destination_and_leaves_it_alone(tmp_path):
    src = tmp_path / "site"
    src.mkdir()
    (src / "a.html").write_text("a")
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src)
    dest = tmp_path / "live"
    dest.mkdir()
    (dest / "current.html").write_text("current")
    from resilience.errors import UsageError
    from resilience.repository.restore import restore_to

    with pytest.raises(UsageError, match="not empty"):
        restore_to(reopen(repo), snap, dest)
    assert os.listdir(dest) == ["current.html"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".live.restore-")]


def test_restore_include_patterns(tmp_path):
    src = tmp_path / "site"
    (src / "news" / "2026").mkdir(parents=True)
    (src / "news" / "2026" / "a.html").write_text("a")
    (src / "news" / "b.html").write_text("b")
    (src / "index.html").write_text("i")
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src)
    from resilience.repository.restore import restore_to
    from resilience.sources.patterns import Matcher

    dest = tmp_path / "out"
    restore_to(reopen(repo), snap, dest, include=Matcher(["news/2026/**"]))
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    assert got == ["news", "news/2026", "news/2026/a.html"]


def test_changes_hidden_from_mtime_are_still_detected(tmp_path):
    """Same size and a reset mtime (an attacker's trick) still change ctime: detected."""
    src = tmp_path / "site"
    (src / "a" / "b").mkdir(parents=True)
    page = src / "a" / "b" / "page.html"
    page.write_text("original!")
    (src / "a" / "mode.html").write_text("m")
    repo = new_repo(tmp_path / "repo")
    s1, _ = backup(repo, src)
    st = os.stat(page)
    page.write_text("DEFACED!!")  # same length
    os.utime(page, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(src / "a" / "mode.html", 0o600)
    os.setxattr(src / "a" / "b", "user.new", b"1")
    fresh = reopen(repo)
    s2, st2 = backup(fresh, src, parent=fresh.find_snapshot(s1.id))
    # ctime moved on both: both are re-read (the chmod-only one costs a read, not a store).
    assert st2.files_changed == 2 and st2.bytes_added < 2000
    from resilience.actions.browse import diff

    d = diff(reopen(repo), s1, s2)
    assert d["changed"] == ["a/b/page.html"]
    assert d["metadata"] == ["a/b", "a/mode.html"]
    dest = tmp_path / "out"
    from resilience.repository.restore import restore_to

    restore_to(reopen(repo), s2, dest)
    assert describe(dest) == describe(src)


def test_stat_cache_skips_tree_decoding_and_is_only_a_shortcut(tmp_path):
    from resilience.repository import statcache

    src = tmp_path / "site"
    for d in range(5):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(20):
            (src / f"d{d}" / f"p{i}.html").write_text(f"{d} {i}")
    repo = new_repo(tmp_path / "repo")
    s1, _ = backup(repo, src)
    fresh = reopen(repo)
    engine = Backup(fresh, LocalSource(src), site="portal", parent=fresh.find_snapshot(s1.id))
    s2, st2 = engine.run()
    assert engine.view.cache is not None and engine.view.trees_decoded == 0
    assert s2.tree == s1.tree and st2.files_unchanged == 100
    # One change: only the folders on its path are decoded.
    (src / "d3" / "p7.html").write_text("changed!")
    fresh = reopen(repo)
    engine = Backup(fresh, LocalSource(src), site="portal", parent=fresh.find_snapshot(s2.id))
    s3, st3 = engine.run()
    assert st3.files_changed == 1 and engine.view.trees_decoded == 2  # root and d3
    # A cache that does not describe the parent is ignored; the result is the same.
    path = statcache.cache_path(fresh, "portal", str(src))
    path.write_bytes(b"garbage")
    fresh = reopen(repo)
    engine = Backup(fresh, LocalSource(src), site="portal", parent=fresh.find_snapshot(s3.id))
    s4, st4 = engine.run()
    assert engine.view.cache is None and s4.tree == s3.tree and st4.files_unchanged == 100


def test_file_nodes_carry_the_sha256_of_their_content(tmp_path):
    import hashlib

    from resilience.repository.repo import iter_tree

    src = build_awkward_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src)
    fresh = reopen(repo)
    files = [(p, n) for p, n in iter_tree(fresh, snap.tree) if n["type"] == "file"]
    assert files
    for path, node in files:
        assert node["sha256"] == hashlib.sha256((src / os.fsdecode(path)).read_bytes()).hexdigest()
    # Reused nodes keep it.
    snap2, _ = backup(fresh, src, parent=snap)
    again = {p: n["sha256"] for p, n in iter_tree(reopen(repo), snap2.tree) if n["type"] == "file"}
    assert again == {p: n["sha256"] for p, n in files}


def test_worker_processes_and_threads_make_the_same_snapshot(tmp_path, monkeypatch):
    src = build_awkward_tree(tmp_path)
    (src / "dup-a.bin").write_bytes(b"same content " * 50_000)
    (src / "dup-b.bin").write_bytes(b"same content " * 50_000)
    repo = new_repo(tmp_path / "repo")
    monkeypatch.setenv("RESILIENCE_PROCESSES", "0")
    s1, st1 = backup(repo, src)
    monkeypatch.setenv("RESILIENCE_PROCESSES", "1")
    fresh = reopen(repo)
    s2, st2 = Backup(fresh, LocalSource(src), site="portal").run()  # no parent: everything is read
    assert s2.tree == s1.tree
    assert st2.bytes_read == st1.bytes_read and st2.blobs_added == 0  # all known already
    # A fresh repository through the processes only: identical files are stored once.
    repo2 = new_repo(tmp_path / "repo2")
    s3, st3 = backup(repo2, src)
    assert st3.bytes_stored < st3.bytes_total
    dest = tmp_path / "out"
    from resilience.repository.restore import restore_to

    restore_to(reopen(repo2), s3, dest)
    assert describe(dest) == describe(src)
    from resilience.repository.check import verify

    assert verify(reopen(repo2), read_data=1.0).ok


def test_worker_processes_report_vanished_and_unreadable_files(tmp_path, monkeypatch):
    monkeypatch.setenv("RESILIENCE_PROCESSES", "1")
    src = tmp_path / "site"
    src.mkdir()
    (src / "stays.html").write_text("stays")
    (src / "vanishes.html").write_text("gone soon")

    class RacingSource(LocalSource):
        def batch_key(self, e):
            if e.path == b"vanishes.html":
                os.unlink(src / "vanishes.html")
            return super().batch_key(e)

    repo = new_repo(tmp_path / "repo")
    snap, stats = Backup(repo, RacingSource(src), site="portal").run()
    assert any("vanishes.html: vanished" in w for w in stats.warnings)
    from resilience.repository.repo import iter_tree

    assert [p for p, _ in iter_tree(reopen(repo), snap.tree)] == [b"stays.html"]


def test_stream_sources_store_program_output(tmp_path):
    """A pipe from a program (like pg_dump) is cut as it is read; its size is not known."""
    import subprocess

    from resilience.repository.repo import iter_tree
    from resilience.repository.restore import restore_to
    from resilience.sources.stream import StreamFile, StreamSource

    payload = os.urandom(3 << 20) + b"tail"

    def run_cat():
        proc = subprocess.Popen(["cat", str(tmp_path / "payload")], stdout=subprocess.PIPE)
        return proc.stdout

    (tmp_path / "payload").write_bytes(payload)
    import io

    src = StreamSource([StreamFile("db/portal.dump", run_cat),
                        StreamFile("db/globals.sql", lambda: io.BytesIO(b"CREATE ROLE x;\n"))],
                       {"kind": "database", "host": "db1", "path": "portal"})
    repo = new_repo(tmp_path / "repo")
    snap, stats = Backup(repo, src, site="portal", kind="database").run()
    assert not stats.warnings and not stats.errors
    paths = {p: n for p, n in iter_tree(reopen(repo), snap.tree)}
    assert paths[b"db/portal.dump"]["size"] == len(payload)
    # The summary counts what the streams gave, not their "unknown size" placeholder.
    assert stats.bytes_total == len(payload) + len(b"CREATE ROLE x;\n") == snap.summary["bytes_total"]
    restore_to(reopen(repo), snap, tmp_path / "out")
    assert (tmp_path / "out" / "db" / "portal.dump").read_bytes() == payload
    assert (tmp_path / "out" / "db" / "globals.sql").read_bytes() == b"CREATE ROLE x;\n"


def test_stream_file_yields_a_files_content(tmp_path):
    from resilience.errors import UsageError
    from resilience.repository.restore import stream_file

    src = build_awkward_tree(tmp_path)
    repo = new_repo(tmp_path / "repo")
    snap, _ = backup(repo, src)
    fresh = reopen(repo)
    assert b"".join(stream_file(fresh, snap, "sparse.img")) == (src / "sparse.img").read_bytes()
    assert b"".join(stream_file(fresh, snap, "新闻/通知.html")) == (src / "新闻" / "通知.html").read_bytes()
    with pytest.raises(UsageError):
        list(stream_file(fresh, snap, "nope/x"))
