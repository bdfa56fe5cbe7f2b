"""Pure logic of the PostgreSQL source and target: tool choice, count comparison, names,
settings, password files, and the dump stream's failure detection (with stand-in programs)."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest
from psycopg import sql

from resilience.errors import ResilienceError, TemporaryError, UsageError
from resilience.sources import postgres as pg
from resilience.targets import postgres as target


def _fake_tool(root, major: int, name: str = "pg_dump", minor: int = 3):
    folder = root / str(major) / "bin"
    folder.mkdir(parents=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {major}.{minor}'\n")
    path.chmod(0o755)
    return str(path)


def test_choose_tool_prefers_the_servers_major_then_the_next_newer():
    cands = [(13, "/13"), (15, "/15"), (17, "/17"), (16, "/16")]
    assert pg.choose_tool(cands, 15) == (15, "/15")
    assert pg.choose_tool(cands, 14) == (15, "/15")
    assert pg.choose_tool(cands, 17) == (17, "/17")
    assert pg.choose_tool(cands, 18) is None
    assert pg.choose_tool([], 15) is None


def test_find_tool_reads_debian_layout_and_names_the_package_when_missing(tmp_path):
    p15 = _fake_tool(tmp_path, 15)
    _fake_tool(tmp_path, 16)
    tool = pg.find_tool("pg_dump", 15, roots=(str(tmp_path),), use_path=False)
    assert (tool.path, tool.major, tool.version) == (p15, 15, "15.3")
    with pytest.raises(UsageError) as exc:
        pg.find_tool("pg_dump", 17, roots=(str(tmp_path),), use_path=False)
    msg = str(exc.value)
    assert "apt-get install postgresql-client-17" in msg and "15, 16" in msg


def test_compare_counts_lists_every_difference():
    assert pg.compare_counts({"a.x": 1, "a.y": 2}, {"a.y": 2, "a.x": 1}) == []
    diffs = pg.compare_counts({"a.x": 1, "a.y": 2, "a.z": 0}, {"a.x": 1, "a.y": 3, "b.w": 5})
    assert diffs == ["a.y: 3 rows, expected 2", "a.z: missing (expected 0 rows)",
                     "b.w: unexpected table (5 rows)"]


@pytest.mark.parametrize("message,kind", [
    ('connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  '
     'password authentication failed for user "backup"', "auth"),
    ('connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  '
     'database "nope" does not exist', "auth"),
    ('connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  '
     "the database system is starting up", "busy"),
    ('connection failed: connection to server at "10.0.0.1", port 5439 failed: Connection '
     "refused\n\tIs the server running on that host and accepting TCP/IP connections?",
     "unreachable"),
    ("connection timeout expired", "unreachable"),
])
def test_connection_errors_are_classified(message, kind):
    assert pg.classify_connect_error(message) == kind


def test_connection_error_reason_is_one_clean_line():
    msg = ('connection failed: connection to server at "10.0.0.1", port 5432 failed: FATAL:  '
           'password authentication failed for user "backup"')
    assert pg.connect_error_reason(msg) == 'password authentication failed for user "backup"'
    assert pg.connect_error_reason("connection failed: x failed: Connection refused\n\tIs it"
                                   ) == "Connection refused"
    assert pg.connect_error_reason("connection timeout expired") == "connection timed out"


def test_unreachable_server_is_a_temporary_error_after_retries():
    # Port 1 on the loopback refuses at once: three attempts, then exit 75, one line.
    with pytest.raises(TemporaryError) as exc:
        pg.connect("127.0.0.1", 1, "db", "u", "secret-pw", application="t", attempts=2)
    assert "after 2 attempts" in str(exc.value)
    assert "secret-pw" not in str(exc.value) and "\n" not in str(exc.value)


def test_passfile_is_private_escaped_and_removed():
    pf = pg.PassFile({"backup": "p:a\\ss", "postgres": "x"})
    try:
        st = os.stat(pf.path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(pf.dir).st_mode) == 0o700
        with open(pf.path) as f:
            assert f.read() == "*:*:*:backup:p\\:a\\\\ss\n*:*:*:postgres:x\n"
        env = pf.env()
        assert env["PGPASSFILE"] == pf.path and "PGPASSWORD" not in env
    finally:
        pf.close()
    assert not os.path.exists(pf.dir)
    pf.close()  # idempotent


def test_conninfo_carries_no_password():
    dsn = pg.conninfo("198.18.0.21", 5432, "my db", "backup", "app")
    assert "password" not in dsn and "dbname='my db'" in dsn and "sslmode=" in dsn


def test_last_error_line_is_redacted():
    err = b"pg_dump: warning\npg_dump: error: connection to postgresql://u:hunter2@h/db failed\n"
    line = pg.last_error_line(err)
    assert "hunter2" not in line and line.startswith("pg_dump: error")
    assert pg.last_error_line(b"") == "no message"
    err = (b"pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout\n"
           b"pg_dump: detail: Query was: LOCK TABLE public.t IN ACCESS SHARE MODE\n")
    assert pg.last_error_line(err).endswith("due to lock timeout")
    assert pg.last_error_line(b"just a line\n") == "just a line"


def _sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", textwrap.dedent(script)]


def _drain(stream, size: int = 1000) -> bytes:
    out = bytearray()
    buf = bytearray(size)
    while True:
        n = stream.readinto(buf)
        if not n:
            return bytes(out)
        out += buf[:n]


def test_program_stream_returns_output_of_a_successful_program():
    with pg.ProgramStream(_sh("printf PGDMP; head -c 5000 /dev/zero"), dict(os.environ),
                          what="dump", magic=b"PGDMP") as s:
        data = _drain(s)
        assert data[:5] == b"PGDMP" and len(data) == 5005 and s.bytes == 5005
        assert s.read(10) == b""


def test_program_stream_raises_at_eof_when_the_program_fails_midway():
    script = "printf PGDMP; head -c 3000 /dev/zero; echo 'pg_dump: error: lost it' >&2; exit 1"
    with pg.ProgramStream(_sh(script), dict(os.environ), what="pg_dump of x") as s, \
            pytest.raises(ResilienceError) as exc:
        _drain(s)
    assert str(exc.value) == "pg_dump of x failed (exit 1): pg_dump: error: lost it"


def test_program_stream_reports_death_by_signal_and_lock_timeouts_as_temporary():
    with pg.ProgramStream(_sh("printf abc; kill -9 $$"), dict(os.environ), what="d") as s, \
            pytest.raises(ResilienceError, match="killed by signal 9"):
        s.read(100), s.read(100), s.read(100)
    script = ("echo 'pg_dump: error: query failed: ERROR:  canceling statement due to "
              "statement timeout' >&2; echo 'pg_dump: detail: Query was: LOCK TABLE public.t "
              "IN ACCESS SHARE MODE' >&2; exit 1")
    with pg.ProgramStream(_sh(script), dict(os.environ), what="d") as s, \
            pytest.raises(TemporaryError):
        s.read(100)


def test_program_stream_rejects_empty_or_foreign_output():
    with pg.ProgramStream(_sh("exit 0"), dict(os.environ), what="d") as s, \
            pytest.raises(ResilienceError, match="no output"):
        s.read(100)
    with pg.ProgramStream(_sh("echo hello"), dict(os.environ), what="d", magic=b"PGDMP") as s, \
            pytest.raises(ResilienceError, match="expected format"):
        _drain(s)


def test_program_stream_that_cannot_start_is_a_resilience_error():
    with pytest.raises(ResilienceError, match="cannot start"):
        pg.ProgramStream(["/nonexistent/pg_dump"], dict(os.environ), what="d")


def test_program_stream_closed_early_kills_the_program():
    s = pg.ProgramStream(_sh("printf x; sleep 30"), dict(os.environ), what="d")
    assert s.read(1) == b"x"
    s.close()
    assert s.proc.returncode is not None


def test_derived_names_fit_postgres_identifier_limit():
    assert target.derived_name("portal", "restore", "20260101T000000Z") == \
        "portal__restore_20260101T000000Z"
    long = "数" * 30  # 90 bytes in UTF-8
    name = target.derived_name(long, "before", "20260101T000000Z")
    assert len(name.encode()) <= 63 and name.endswith("__before_20260101T000000Z")
    name.encode().decode("utf-8")  # cut on a character boundary


def test_list_settings_are_split_like_postgres_stores_them():
    assert target.split_list_value('"$user", public, "we,ird", "a""b"') == \
        ["$user", "public", "we,ird", 'a"b']
    assert target.split_list_value("public") == ["public"]
    assert target.split_setting("search_path=a, b") == ("search_path", "a, b")


def test_setting_statements_quote_values():
    t = sql.SQL("ALTER DATABASE {}").format(sql.Identifier("x"))
    assert target.setting_statement(t, "work_mem", "8MB").as_string(None) == \
        """ALTER DATABASE "x" SET "work_mem" TO '8MB'"""
    assert target.setting_statement(t, "search_path", '"$user", public').as_string(None) == \
        """ALTER DATABASE "x" SET "search_path" TO '$user', 'public'"""
