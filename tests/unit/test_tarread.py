"""The fast tar reader against real GNU tar output: any names, sizes, long names, links."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilience.sources import tarread

# Any byte string without "/" or NUL is a valid file name; long ones force GNU long-name headers.
names = st.binary(min_size=1, max_size=140).filter(lambda b: b"/" not in b and b"\0" not in b
                                                    and b not in (b".", b".."))
files = st.dictionaries(names, st.binary(max_size=3000) | st.integers(0, 70_000).map(lambda n: os.urandom(n)),
                        min_size=1, max_size=8)


def gnu_tar(folder: bytes, names: list[bytes]) -> bytes:
    return subprocess.run(["tar", "--null", "--no-recursion", "--verbatim-files-from", "--hard-dereference",
                           "-T", "-", "-cf", "-", "--format=gnu"], cwd=folder,
                          input=b"".join(n + b"\0" for n in names), capture_output=True, check=True).stdout


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=files)
def test_members_round_trip(tmp_path, content):
    folder = os.fsencode(tmp_path) + b"/" + os.urandom(4).hex().encode()
    os.mkdir(folder)
    for name, data in content.items():
        with open(folder + b"/" + name, "wb") as f:
            f.write(data)
    order = sorted(content)
    got = [(m.name, m.isfile(), m.read()) for m in tarread.members(io.BufferedReader(io.BytesIO(gnu_tar(folder, order))))]
    assert got == [(n, True, content[n]) for n in order]


def test_directories_symlinks_and_skipped_content(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 1000)
    (tmp_path / "link").symlink_to("d/f" + "y" * 200)  # a long link target: GNU long-link header
    (tmp_path / "g").write_bytes(b"z" * 5000)
    os.link(tmp_path / "g", tmp_path / "h")
    data = gnu_tar(os.fsencode(tmp_path), [b"d", b"d/f", b"link", b"g", b"h"])
    got = []
    for m in tarread.members(io.BufferedReader(io.BytesIO(data))):
        # The content of d/f is never read: the reader must skip it by itself.
        got.append((m.name, m.isfile(), m.size if m.isfile() else None, m.read() if m.name == b"h" else None))
    assert got == [(b"d", False, None, None), (b"d/f", True, 1000, None), (b"link", False, None, None),
                   (b"g", True, 5000, None), (b"h", True, 5000, b"z" * 5000)]  # hard link sent in full


def test_mtime_matches_tarfile(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    os.utime(tmp_path / "a", ns=(0, 1_700_000_000_123_456_789))
    data = gnu_tar(os.fsencode(tmp_path), [b"a"])
    (m,) = list(tarread.members(io.BufferedReader(io.BytesIO(data))))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert m.mtime == tar.getmember("a").mtime == 1_700_000_000


@pytest.mark.parametrize("cut", [100, 512, 700, 1024 + 10])
def test_truncated_stream_is_an_error(tmp_path, cut):
    (tmp_path / "a").write_bytes(os.urandom(2000))
    data = gnu_tar(os.fsencode(tmp_path), [b"a"])[:cut]
    with pytest.raises(tarread.TarFormatError):
        for m in tarread.members(io.BufferedReader(io.BytesIO(data))):
            m.read()


def test_garbage_is_an_error():
    with pytest.raises(tarread.TarFormatError):
        list(tarread.members(io.BufferedReader(io.BytesIO(os.urandom(1024)))))


def test_pax_headers_are_refused(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    data = subprocess.run(["tar", "-cf", "-", "--format=pax", "a"], cwd=tmp_path, capture_output=True,
                          check=True).stdout
    with pytest.raises(tarread.TarFormatError, match="unsupported"):
        list(tarread.members(io.BufferedReader(io.BytesIO(data))))


def test_stream_cut_between_members_is_an_error(tmp_path):
    (tmp_path / "a").write_bytes(b"a" * 512)
    data = gnu_tar(os.fsencode(tmp_path), [b"a"])[:1024]  # header + one data block, no end marker
    with pytest.raises(tarread.TarFormatError, match="end-of-archive"):
        for m in tarread.members(io.BufferedReader(io.BytesIO(data))):
            m.read()
