"""PostgreSQL as a backup source: one consistent dump, the cluster's globals, exact row counts.

:func:`dump_source` opens a REPEATABLE READ, READ ONLY transaction as the backup role, exports
its snapshot, counts every user table's rows in it, and returns a :class:`DatabaseDump` whose
``source`` the engine reads: ``<db>.dump`` is ``pg_dump --snapshot=<id> -Fc -Z0`` (the very
state that was counted), ``globals.sql`` is ``pg_dumpall --globals-only``. Both run on the ops
host over the network. The helpers below (tool selection, connections, password files,
table counts) are shared with :mod:`resilience.targets.postgres`.

Secrets: passwords go to psycopg as a parameter and to the PostgreSQL programs through a
private password file (0600, in a 0700 folder, removed afterwards); never on a command line,
in a message or in evidence.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ..config import DatabaseConfig
from ..errors import ResilienceError, TemporaryError, UsageError
from ..evidence.redact import redact_text
from ..secrets import read_secret_file
from .stream import StreamFile, StreamSource

if TYPE_CHECKING:
    from ..evidence.run import Run, Step

CONNECT_TIMEOUT = 10
CONNECT_ATTEMPTS = 3  # unreachable: try, wait 1 s, try, wait 2 s, try, then exit 75
# A DDL statement queued behind the counting transaction's locks would make pg_dump's lock
# requests wait behind it while that transaction waits for pg_dump: fail instead of hanging.
LOCK_WAIT_TIMEOUT = "60s"
# Dead peers are noticed within about a minute instead of a TCP timeout of hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
              "keepalives_count": 3}
PG_ROOTS = ("/usr/lib/postgresql",)
PIPE_SIZE = 1 << 20  # fewer, larger reads from pg_dump's pipe
F_SETPIPE_SZ = 1031

USER_TABLES_SQL = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


# -- programs ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PgTool:
    """A PostgreSQL client program: its path and its version (``15.18``, major 15)."""

    path: str
    major: int
    version: str


def choose_tool(candidates: list[tuple[int, str]], need_major: int) -> tuple[int, str] | None:
    """The candidate (major, path) to use for a server of ``need_major``: the lowest major at
    least ``need_major``. The same major as the server is preferred because its output is
    what that server restores without version skew; a newer one is used only when needed."""
    fitting = sorted(c for c in candidates if c[0] >= need_major)
    return fitting[0] if fitting else None


@lru_cache(maxsize=32)
def tool_version(path: str) -> tuple[int, str]:
    """(major, version) reported by ``path --version`` (``pg_dump (PostgreSQL) 15.18 …``)."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except OSError as exc:
        raise UsageError(f"{path}: cannot run: {exc.strerror or exc}") from None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        raise UsageError(f"{path}: not a PostgreSQL program (--version said {out.strip()[:80]!r})")
    return int(m.group(1)), m.group(1) + (f".{m.group(2)}" if m.group(2) else "")


def find_tool(name: str, server_major: int, *, roots: tuple[str, ...] = PG_ROOTS,
              use_path: bool = True) -> PgTool:
    """The ``name`` program (pg_dump, pg_dumpall, pg_restore) for a server of ``server_major``.

    Looks in ``<root>/<major>/bin`` (Debian's layout, one folder per major) first, then on
    $PATH; UsageError naming the ``apt-get install`` line when no major ≥ the server's is
    installed."""
    candidates: list[tuple[int, str]] = []
    for root in roots:
        for path in glob.glob(os.path.join(root, "*", "bin", name)):
            folder = Path(path).parent.parent.name
            if folder.isdigit() and os.access(path, os.X_OK):
                candidates.append((int(folder), path))
    best = choose_tool(candidates, server_major)
    if best is None and use_path:
        found = shutil.which(name)
        if found:
            major, _version = tool_version(found)
            best = choose_tool([(major, found)], server_major)
    if best is None:
        have = ", ".join(f"{m}" for m, _ in sorted(candidates)) or "none"
        raise UsageError(
            f"no {name} for PostgreSQL {server_major} or newer on this host (installed majors: "
            f"{have}); install it: apt-get install postgresql-client-{server_major}")
    major, version = tool_version(best[1])
    return PgTool(best[1], major, version)


# -- passwords and connections ------------------------------------------------------------------

def read_db_password(path: str | os.PathLike | None, what: str = "database") -> str | None:
    """The password in ``path`` (trailing newline removed), or None when no file is set (libpq's
    own defaults then apply). UsageError when the file cannot be read or is empty."""
    if not path:
        return None
    return read_secret_file(path, f"{what} password").decode("utf-8")


class PassFile:
    """A private libpq password file for child programs: created 0600 in a 0700 folder (in
    /dev/shm when available, so it never reaches a disk), removed by :meth:`close` or, at the
    latest, when the interpreter exits."""

    def __init__(self, entries: dict[str, str]):
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="resilience-pg-", dir=base)
        self.path = os.path.join(self.dir, "pgpass")
        lines = "".join(f"*:*:*:{_pgpass_escape(user)}:{_pgpass_escape(pw)}\n"
                        for user, pw in entries.items())
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(lines)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def env(self) -> dict[str, str]:
        """The environment for a child: ours, with this password file and no PGPASSWORD."""
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        env["PGPASSFILE"] = self.path
        return env

    def close(self) -> None:
        self._finalizer()


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def sslmode() -> str:
    """``$PGSSLMODE`` when the operator set one (e.g. verify-full), else ``prefer``."""
    return os.environ.get("PGSSLMODE") or "prefer"


def conninfo(address: str, port: int, dbname: str, user: str, application: str) -> str:
    """A libpq connection string for a child program: no password (that is in the PassFile)."""
    return make_conninfo(host=address, port=str(port), dbname=dbname, user=user,
                         sslmode=sslmode(), connect_timeout=str(CONNECT_TIMEOUT),
                         application_name=application, **{k: str(v) for k, v in KEEPALIVES.items()})


def classify_connect_error(message: str) -> str:
    """``auth`` (the server refused us: password, role, database, pg_hba), ``busy`` (the
    server answered but cannot serve now) or ``unreachable``."""
    if "FATAL" in message:
        if re.search(r"starting up|shutting down|recovery mode|too many|connection slots",
                     message):
            return "busy"
        return "auth"
    return "unreachable"


def connect_error_reason(message: str) -> str:
    """The informative part of a libpq connection error, on one line, secrets masked."""
    first = message.strip().splitlines()[0] if message.strip() else "connection failed"
    reason = first.rsplit(" failed: ", 1)[-1]
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    if reason == "connection timeout expired":
        reason = "connection timed out"
    return redact_text(reason.strip())


def connect(address: str, port: int, dbname: str, user: str, password: str | None, *,
            application: str, autocommit: bool = True,
            attempts: int = CONNECT_ATTEMPTS) -> psycopg.Connection:
    """A psycopg connection, or one clear line: UsageError when the server refuses (wrong
    password, unknown role or database: retrying cannot help), TemporaryError when it cannot be
    reached after ``attempts`` tries with a short backoff."""
    where = f"PostgreSQL {user}@{address}:{port}/{dbname}"
    kw: dict[str, Any] = dict(host=address, port=port, dbname=dbname, user=user,
                              connect_timeout=CONNECT_TIMEOUT, sslmode=sslmode(),
                              application_name=application, autocommit=autocommit, **KEEPALIVES)
    if password is not None:
        kw["password"] = password
    reason = ""
    for attempt in range(attempts):
        try:
            return psycopg.connect(**kw)
        except psycopg.OperationalError as exc:
            message = str(exc)
            reason = connect_error_reason(message)
            if classify_connect_error(message) == "auth":
                hint = ""
                if "password" in reason:
                    hint = " (check the password file of this role)"
                raise UsageError(f"cannot connect to {where}: {reason}{hint}") from None
        if attempt + 1 < attempts:
            time.sleep(2 ** attempt)
    raise TemporaryError(f"cannot connect to {where}: {reason} (after {attempts} attempts)")


def server_major(conn: psycopg.Connection) -> int:
    return conn.info.server_version // 10000


def server_version(conn: psycopg.Connection) -> str:
    return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every table whose rows pg_dump dumps: ordinary tables (partitions included, their
    parents hold no rows), not temporary, not in system schemas, not owned by an extension."""
    return [(r[0], r[1]) for r in conn.execute(USER_TABLES_SQL).fetchall()]


def table_key(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def count_rows(conn: psycopg.Connection, tables: list[tuple[str, str]]) -> dict[str, int]:
    """Exact ``count(*)`` of each table (ONLY: inheritance children are counted on their own),
    in whatever transaction ``conn`` is in."""
    counts = {}
    for schema, table in tables:
        q = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema),
                                                              sql.Identifier(table))
        counts[table_key(schema, table)] = int(conn.execute(q).fetchone()[0])
    return counts


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    """Human-readable differences between two ``{"schema.table": rows}`` maps, sorted; empty
    when they are equal (same tables, same counts)."""
    out = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            out.append(f"{name}: missing (expected {expected[name]} rows)")
        elif name not in expected:
            out.append(f"{name}: unexpected table ({actual[name]} rows)")
        elif expected[name] != actual[name]:
            out.append(f"{name}: {actual[name]} rows, expected {expected[name]}")
    return out


PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}


def database_properties(conn: psycopg.Connection, name: str) -> dict[str, Any] | None:
    """Owner, encoding, locale and ACL of database ``name`` (None when it does not exist).
    Read through to_jsonb so that columns renamed across majors (daticulocale → datlocale)
    need no per-version SQL."""
    row = conn.execute(
        "SELECT to_jsonb(d), pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding) "
        "FROM pg_database d WHERE d.datname = %s", (name,)).fetchone()
    if row is None:
        return None
    d = row[0]
    return {
        "oid": d.get("oid"),
        "owner": row[1],
        "encoding": row[2],
        "collate": d.get("datcollate"),
        "ctype": d.get("datctype"),
        "locale_provider": PROVIDERS.get(d.get("datlocprovider", "c"), "libc"),
        "icu_locale": d.get("daticulocale") or d.get("datlocale"),
        "connection_limit": d.get("datconnlimit"),
        "allow_connections": d.get("datallowconn"),
        "acl": d.get("datacl"),
    }


# -- the dump stream --------------------------------------------------------------------------

def last_error_line(stderr: bytes) -> str:
    """The line to show when a program fails: its last ``error:``/``FATAL:`` line (pg_dump
    follows its error with ``detail:`` lines), else its last non-empty line; secrets masked."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return "no message"
    errors = [ln for ln in lines if re.search(r"\berror:|\bFATAL:", ln, re.I)]
    return redact_text((errors or lines)[-1])


class ProgramStream:
    """A child program's stdout as a readable binary stream that cannot end silently.

    At end of file the program is waited for: a non-zero exit (or death by a signal) raises
    ResilienceError with its last stderr line, so a dump that failed midway is never taken
    for a complete one (the engine then writes no snapshot). Closing it early kills the
    program. ``step`` (an evidence step) is finished with the outcome, bytes and duration."""

    def __init__(self, argv: list[str], env: dict[str, str], *, what: str,
                 magic: bytes | None = None, step: Step | None = None):
        self.what, self.magic, self.step = what, magic, step
        self.bytes = 0
        self._head = b""
        self._done = False
        self._t0 = time.monotonic()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=self._stderr, env=env, bufsize=0)
        except OSError as exc:
            self._stderr.close()
            err = ResilienceError(f"{what}: cannot start {argv[0]}: {exc.strerror or exc}")
            self._finish_step(err)
            raise err from None
        with contextlib.suppress(OSError):  # a smaller pipe only means more reads
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, PIPE_SIZE)

    # The engine's chunker prefers readinto; read() serves everything else.
    def readinto(self, buf) -> int:
        if self._done:
            return 0
        try:
            n = self.proc.stdout.readinto(buf)
        except OSError as exc:
            raise self._fail(f"{self.what}: reading its output failed: {exc.strerror}") from None
        if not n:
            self._end()
            return 0
        self._account(memoryview(buf)[:n])
        return n

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            out = self.proc.stdout
            data = out.read(n) if n is not None and n > 0 else out.readall()
        except OSError as exc:
            raise self._fail(f"{self.what}: reading its output failed: {exc.strerror}") from None
        if not data:
            self._end()
            return b""
        self._account(data)
        return data

    def _account(self, data) -> None:
        if len(self._head) < 8:
            self._head += bytes(data[: 8 - len(self._head)])
        self.bytes += len(data)

    def _end(self) -> None:
        rc = self.proc.wait()
        self._done = True
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"failed (exit {rc})"
            tail = self._tail()
            message = f"{self.what} {how}: {last_error_line(tail)}"
            if b"LOCK TABLE" in tail and re.search(rb"(lock|statement) timeout", tail):
                # pg_dump could not lock a table in time (a schema change was queued): a
                # later run will succeed, hence exit 75.
                raise self._fail(message + f" (no table lock within {LOCK_WAIT_TIMEOUT}; "
                                 "retry later)", TemporaryError)
            raise self._fail(message)
        if self.bytes == 0:
            raise self._fail(f"{self.what} produced no output: {last_error_line(self._tail())}")
        if self.magic and not self._head.startswith(self.magic):
            raise self._fail(f"{self.what} produced something that is not its expected format")
        self._finish_step(None)

    def _tail(self) -> bytes:
        size = self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, size - 4096))
        return self._stderr.read()

    def _fail(self, message: str, cls: type[ResilienceError] = ResilienceError) -> ResilienceError:
        self._done = True
        err = cls(message)
        self._finish_step(err)
        return err

    def _finish_step(self, err: BaseException | None) -> None:
        if self.step is None or self.step.record is not None:
            return
        self.step.details.update(bytes=self.bytes,
                                 seconds=round(time.monotonic() - self._t0, 3))
        self.step.finish("failed" if err else "ok", str(err) if err else None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if not self._done:
            self._done = True
            self._finish_step(ResilienceError(f"{self.what}: stopped before its end"))
        self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ProgramStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- the source -------------------------------------------------------------------------------

@dataclass
class DatabaseDump:
    """What :func:`dump_source` returns. Pass ``source`` and ``meta`` to the engine
    (``Backup(repo, dump.source, site=…, kind="database", meta=dump.meta)``), then call
    :meth:`close` (or use it as a context manager): the exporting transaction must stay open
    until pg_dump has started, and the password file must exist until it has connected."""

    source: StreamSource
    meta: dict[str, Any]
    conn: psycopg.Connection
    passfile: PassFile | None
    streams: list[ProgramStream] = field(default_factory=list)

    def close(self) -> None:
        """Stop any dump still running, end the transaction and connection, remove the
        password file. Idempotent."""
        for s in self.streams:
            s.close()
        try:
            if not self.conn.closed:
                self.conn.rollback()
                self.conn.close()
        except psycopg.Error:
            pass  # the server is gone; the transaction is gone with it
        if self.passfile is not None:
            self.passfile.close()

    def __enter__(self) -> DatabaseDump:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _globals_scope(superuser: bool) -> str:
    return "roles with password hashes, tablespaces" if superuser else \
        "roles without passwords, tablespaces"


def evidence_step(run: Run | None, name: str, host: str):
    """``run.step(name, host=host)``, or a stand-in with a ``details`` dict when there is no
    run, so that callers record the same way with and without evidence."""
    return run.step(name, host=host) if run is not None else contextlib.nullcontext(_NoStep())


class _NoStep:
    def __init__(self) -> None:
        self.details: dict[str, Any] = {}


def dump_source(site: str, db: DatabaseConfig, address: str, *,
                run: Run | None = None) -> DatabaseDump:
    """Prepare a consistent backup of database ``db.name`` at ``address``.

    Connects as ``db.user`` (REPEATABLE READ, READ ONLY), exports the transaction's snapshot
    and counts every user table's rows in it; the returned source's files are produced, when
    the engine reads them, by ``pg_dump --snapshot`` (``<name>.dump``, custom format,
    uncompressed) and ``pg_dumpall --globals-only`` (``globals.sql``: as the superuser when
    ``db.superuser_password_file`` is set, else as the backup role without role passwords).
    A failing program makes the engine's read raise ResilienceError (no snapshot is written).

    Raises UsageError (wrong password, unknown role or database, no suitable pg_dump) and
    TemporaryError (server unreachable after retries) before anything is dumped."""
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    password = read_db_password(db.password_file)
    su_password = read_db_password(db.superuser_password_file, "superuser")
    with evidence_step(run, f"connect to database {db.name}", db.host) as st:
        conn = connect(address, db.port, db.name, db.user, password,
                       application="resilience backup")
        st.details.update(address=address, port=db.port, user=db.user,
                          server_version=server_version(conn), ssl=conn.info.pgconn.ssl_in_use)
    passfile = None
    try:
        major = server_major(conn)
        version = server_version(conn)
        pg_dump = find_tool("pg_dump", major)
        pg_dumpall = find_tool("pg_dumpall", major)
        if su_password is not None:
            # Fail now, with a clear line, rather than midway through the engine's run.
            connect(address, db.port, db.name, db.superuser, su_password,
                    application="resilience backup", attempts=1).close()
        props = database_properties(conn, db.name) or {}
        settings = conn.execute(
            "SELECT coalesce(array_to_json(s.setconfig), '[]'::json) FROM pg_db_role_setting s "
            "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
            (db.name,)).fetchone()
        # Never killed by the server's idle-in-transaction limit while the engine reads.
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute("SET statement_timeout = 0")
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with evidence_step(run, f"export snapshot and count rows of {db.name}", db.host) as st:
            t0 = time.monotonic()
            snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            tables = user_tables(conn)
            counts = count_rows(conn, tables)
            counted_s = round(time.monotonic() - t0, 3)
            st.details.update(snapshot_id=snapshot_id, tables=len(counts),
                              rows=sum(counts.values()), row_counts=counts, seconds=counted_s)
        entries = {db.user: password} if password is not None else {}
        if su_password is not None:
            entries[db.superuser] = su_password
        passfile = PassFile(entries) if entries else None
    except BaseException:
        conn.close()
        if passfile is not None:
            passfile.close()
        raise

    env = passfile.env() if passfile else dict(os.environ)
    globals_user = db.superuser if su_password is not None else db.user
    streams: list[ProgramStream] = []  # closed by DatabaseDump.close if still running

    def open_dump() -> ProgramStream:
        argv = [pg_dump.path, "--dbname", conninfo(address, db.port, db.name, db.user,
                                                   "resilience pg_dump"),
                "--format=custom", "--compress=0", f"--snapshot={snapshot_id}",
                f"--lock-wait-timeout={LOCK_WAIT_TIMEOUT}", "--no-password"]
        step = run.step(f"pg_dump {db.name}", host=db.host) if run is not None else None
        if step is not None:
            step.details.update(pg_dump=pg_dump.path, version=pg_dump.version,
                                snapshot_id=snapshot_id, ran_on=socket.gethostname())
        s = ProgramStream(argv, env, what=f"pg_dump of {db.name}", magic=b"PGDMP", step=step)
        streams.append(s)
        return s

    def open_globals() -> ProgramStream:
        argv = [pg_dumpall.path, "--dbname", conninfo(address, db.port, db.name, globals_user,
                                                      "resilience pg_dumpall"),
                "--globals-only", "--no-password"]
        if su_password is None:
            argv.append("--no-role-passwords")
        step = run.step("pg_dumpall --globals-only", host=db.host) if run is not None else None
        if step is not None:
            step.details.update(user=globals_user, scope=_globals_scope(su_password is not None))
        s = ProgramStream(argv, env, what="pg_dumpall --globals-only", step=step)
        streams.append(s)
        return s

    dump_name = f"{db.name}.dump"
    source = StreamSource(
        [StreamFile(dump_name, open_dump), StreamFile("globals.sql", open_globals)],
        {"kind": "postgres", "host": db.host, "address": address, "port": db.port,
         "database": db.name, "path": f"postgresql://{db.host}:{db.port}/{db.name}"},
    )
    meta = {
        "database": db.name,
        "site": site,
        "host": db.host,
        "address": address,
        "port": db.port,
        "user": db.user,
        "dump_file": dump_name,
        "globals_file": "globals.sql",
        "format": "pg_dump custom, uncompressed (-Fc -Z0)",
        "row_counts": counts,
        "tables": len(counts),
        "rows": sum(counts.values()),
        "counted_s": counted_s,
        "snapshot_id": snapshot_id,
        "server_version": version,
        "pg_dump_version": pg_dump.version,
        "pg_dump_path": pg_dump.path,
        "dumped_on": socket.gethostname(),
        "globals_as": globals_user,
        "globals_scope": _globals_scope(su_password is not None),
        "database_owner": props.get("owner"),
        "encoding": props.get("encoding"),
        "collate": props.get("collate"),
        "ctype": props.get("ctype"),
        "locale_provider": props.get("locale_provider"),
        "icu_locale": props.get("icu_locale"),
        "database_settings": settings[0] if settings else [],
        "started_at": started,
    }
    return DatabaseDump(source, meta, conn, passfile, streams)
