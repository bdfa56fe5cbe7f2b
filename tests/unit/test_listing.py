"""The member listing (find + owner-name map) run for real by sh on this machine, any names."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.sources.remote import FIND_FORMAT, listing_command, parse_listing

names = st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b
                                                   and b not in (b".", b".."))


def run_listing(path: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", listing_command(os.fsdecode(path))], capture_output=True, check=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(names, min_size=1, max_size=6, unique=True), sub=names)
def test_listing_matches_lstat(tmp_path, files, sub):
    root = os.fsencode(tmp_path) + b"/" + os.urandom(4).hex().encode()
    os.mkdir(root)
    os.mkdir(root + b"/" + sub)
    for i, name in enumerate(files):
        with open(root + b"/" + sub + b"/" + name, "wb") as f:
            f.write(b"x" * i)
    os.symlink(b"target=\0"[:7] + b"\n", root + b"/" + b"link")
    proc = run_listing(root)
    assert proc.returncode == 0, proc.stderr
    rows = dict(parse_listing(proc.stdout))
    assert set(rows) == {b"", sub, b"link"} | {sub + b"/" + n for n in files}
    for rel, f in rows.items():
        st_ = os.lstat(root + b"/" + rel if rel else root)
        assert (f["size"] if f["type"] == "file" else None) == (st_.st_size if f["type"] == "file" else None)
        assert (f["mtime_ns"], f["ctime_ns"], f["inode"], f["uid"], f["gid"], f["mode"]) == (
            st_.st_mtime_ns, st_.st_ctime_ns, st_.st_ino, st_.st_uid, st_.st_gid, st_.st_mode & 0o7777)
        assert f["user"] == pwd.getpwuid(st_.st_uid).pw_name
        assert f["group"] == grp.getgrgid(st_.st_gid).gr_name
    assert rows[b"link"]["target"] == b"target=\n"


def test_bare_find_output_parses_without_names(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    out = subprocess.run(["find", str(tmp_path), "-printf", FIND_FORMAT], capture_output=True, check=True).stdout
    rows = dict(parse_listing(out))
    assert rows[b"a"]["size"] == 3 and rows[b"a"]["user"] is None


def test_unknown_owner_has_no_name(tmp_path):
    (tmp_path / "a").write_bytes(b"")
    if os.geteuid() != 0:
        pytest.skip("chown to an unused uid needs root")
    os.chown(tmp_path / "a", 54321, 54321)
    rows = dict(parse_listing(run_listing(os.fsencode(tmp_path)).stdout))
    assert (rows[b"a"]["uid"], rows[b"a"]["user"], rows[b"a"]["group"]) == (54321, None, None)


def test_missing_folder_exits_3(tmp_path):
    proc = run_listing(os.fsencode(tmp_path / "nope"))
    assert proc.returncode == 3 and b"not a folder" in proc.stderr


def test_truncated_listing_is_an_error(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    out = run_listing(os.fsencode(tmp_path)).stdout
    with pytest.raises(ValueError):
        list(parse_listing(out[: out.index(b"=\0") - 3]))
