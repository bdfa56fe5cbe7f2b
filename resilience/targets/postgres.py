"""Restore a database snapshot into PostgreSQL, proven by row counts.

:func:`restore_database` always restores into a new *scratch* database first
(``<name>__restore_<UTC stamp>``): pg_restore reads the dump straight out of the repository
through a pipe, then every table is counted and compared with the counts taken in the
backup's exported snapshot. For ``target="live"`` the proven scratch database then replaces
the live one by two renames in one transaction (live → ``<name>__before_<stamp>``, scratch →
live), so the live database is at every moment either the old one, intact, or the new one,
verified; the old one is kept for the operator to drop.

Runs as the superuser (``db.superuser``, password from ``db.superuser_password_file``): it
creates and renames databases and ends other sessions. Passwords are handled as in
:mod:`resilience.sources.postgres`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..config import DatabaseConfig
from ..errors import ResilienceError, UsageError
from ..repository.restore import find_node, stream_file
from ..sources.postgres import (
    PassFile,
    compare_counts,
    connect,
    conninfo,
    count_rows,
    database_properties,
    evidence_step,
    find_tool,
    last_error_line,
    read_db_password,
    server_major,
    server_version,
    user_tables,
)

if TYPE_CHECKING:
    from ..evidence.run import Run
    from ..repository.repo import Repository
    from ..repository.snapshot import Snapshot

TARGETS = ("scratch", "live")
NAME_MAX = 63  # PostgreSQL identifiers: NAMEDATALEN - 1 bytes
SWAP_ATTEMPTS = 3
# Settings whose stored value is a list of (possibly quoted) items: pg_dump's own list.
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries",
                 "shared_preload_libraries", "local_preload_libraries"}
APP = "resilience restore"


# -- names and settings (pure) ------------------------------------------------------------------

def derived_name(name: str, role: str, stamp: str) -> str:
    """``<name>__<role>_<stamp>``, the database name cut (on a character boundary) so the
    whole fits PostgreSQL's 63-byte limit."""
    suffix = f"__{role}_{stamp}"
    room = NAME_MAX - len(suffix.encode())
    base = name.encode()[:room].decode("utf-8", "ignore")
    return base + suffix


def split_setting(text: str) -> tuple[str, str]:
    """``name=value`` as stored in pg_db_role_setting → (name, value)."""
    name, _, value = text.partition("=")
    return name, value


def split_list_value(value: str) -> list[str]:
    """The items of a list setting as stored (``"$user", public``): split on commas outside
    double quotes, quotes removed (``""`` inside quotes is one ``"``)."""
    items, cur, quoted, i = [], [], False, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == '"' and value[i + 1:i + 2] == '"':
                cur.append('"')
                i += 1
            elif c == '"':
                quoted = False
            else:
                cur.append(c)
        elif c == '"':
            quoted = True
        elif c == ",":
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    last = "".join(cur).strip()
    if last or items:
        items.append(last)
    return items


def setting_statement(target: sql.Composable, name: str, value: str) -> sql.Composed:
    """``<target> SET name TO value`` for a stored setting (target is ``ALTER DATABASE x`` or
    ``ALTER ROLE r IN DATABASE x``)."""
    if name in LIST_SETTINGS:
        values = sql.SQL(", ").join(sql.Literal(v) for v in split_list_value(value))
    else:
        values = sql.Literal(value)
    return sql.SQL("{} SET {} TO {}").format(target, sql.Identifier(name), values)


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# -- database operations ----------------------------------------------------------------------

def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _exists(admin: psycopg.Connection, name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() \
        is not None


def _role_exists(admin: psycopg.Connection, role: str | None) -> bool:
    return bool(role) and admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                        (role,)).fetchone() is not None


def _free_name(admin: psycopg.Connection, name: str, role: str, stamp: str) -> str:
    candidate = derived_name(name, role, stamp)
    n = 1
    while _exists(admin, candidate):
        n += 1
        candidate = derived_name(name, role, f"{stamp}_{n}")
    return candidate


def create_database(admin: psycopg.Connection, name: str, owner: str,
                    props: dict[str, Any]) -> None:
    """CREATE DATABASE from template0 with the encoding and locale in ``props`` (the backed-up
    database's, so that the dump's data and collation-dependent indexes fit)."""
    parts = [sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(_ident(name),
                                                                               _ident(owner))]
    if props.get("encoding"):
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(props["encoding"])))
    if props.get("locale_provider") == "icu" and props.get("icu_locale"):
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            sql.Literal(props["icu_locale"])))
    if props.get("collate"):
        parts.append(sql.SQL("LC_COLLATE {}").format(sql.Literal(props["collate"])))
    if props.get("ctype"):
        parts.append(sql.SQL("LC_CTYPE {}").format(sql.Literal(props["ctype"])))
    admin.execute(sql.SQL(" ").join(parts))


def drop_database(admin: psycopg.Connection, name: str) -> None:
    """DROP DATABASE IF EXISTS, ending any session still in it."""
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_ident(name)))


def copy_database_properties(admin: psycopg.Connection, source: str, dest: str) -> list[str]:
    """Give ``dest`` what pg_restore does not carry for a database restored under another
    name: ``ALTER DATABASE/ROLE … SET`` settings, GRANTs (datacl), connection limit and
    comment of ``source``. Returns what was copied, one line each."""
    done: list[str] = []
    src = database_properties(admin, source)
    if src is None:
        return done
    rows = admin.execute(
        "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s "
        "LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE s.setdatabase = %s "
        "ORDER BY s.setrole", (src["oid"],)).fetchall()
    for role, config in rows:
        target = sql.SQL("ALTER DATABASE {}").format(_ident(dest)) if not role else \
            sql.SQL("ALTER ROLE {} IN DATABASE {}").format(_ident(role), _ident(dest))
        for item in config or []:
            name, value = split_setting(item)
            admin.execute(setting_statement(target, name, value))
            done.append(f"setting {name}" + (f" for role {role}" if role else ""))
    if src.get("acl") is not None:
        # An explicit ACL replaces the defaults (owner: all, PUBLIC: CONNECT, TEMPORARY).
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(dest)))
        admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
            _ident(dest), _ident(src["owner"])))
        grants = admin.execute(
            "SELECT coalesce(r.rolname, ''), a.privilege_type, a.is_grantable "
            "FROM pg_database d, aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE d.datname = %s", (source,)).fetchall()
        for grantee, privilege, grantable in grants:
            who = sql.SQL("PUBLIC") if not grantee else _ident(grantee)
            admin.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), _ident(dest), who,
                sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
            done.append(f"grant {privilege} to {grantee or 'PUBLIC'}")
    limit = src.get("connection_limit")
    if limit is not None and limit != -1:
        admin.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
            _ident(dest), sql.Literal(int(limit))))
        done.append(f"connection limit {limit}")
    comment = admin.execute("SELECT shobj_description(%s, 'pg_database')",
                            (src["oid"],)).fetchone()[0]
    if comment:
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(_ident(dest),
                                                                   sql.Literal(comment)))
        done.append("comment")
    return done


def terminate_sessions(admin: psycopg.Connection, name: str) -> int:
    """End every other session connected to database ``name``; returns how many."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
    return len(rows)


def _allow_connections(admin: psycopg.Connection, name: str, allow: bool) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        _ident(name), sql.SQL("true" if allow else "false")))


def swap_databases(admin: psycopg.Connection, live: str, before: str, replacement: str, *,
                   attempts: int = SWAP_ATTEMPTS) -> dict[str, Any]:
    """Rename ``live`` → ``before`` and ``replacement`` → ``live`` atomically.

    New connections to ``live`` are refused while its sessions are ended, then both renames
    run in one transaction: if the second fails (someone is connected to ``replacement``…)
    the first is rolled back with it, so ``live`` keeps its name and content. ``live``'s
    ALLOW_CONNECTIONS is restored on failure; after success the kept ``before`` database gets
    it back too (so it can be inspected). ResilienceError after ``attempts`` tries."""
    props = database_properties(admin, live)
    if props is None:
        raise UsageError(f"database {live!r} does not exist")
    allowed = bool(props.get("allow_connections", True))
    terminated = 0
    _allow_connections(admin, live, False)
    try:
        last: psycopg.Error | None = None
        for _ in range(attempts):
            terminated += terminate_sessions(admin, live)
            try:
                with admin.transaction():
                    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        _ident(live), _ident(before)))
                    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        _ident(replacement), _ident(live)))
                break
            except psycopg.errors.ObjectInUse as exc:
                last = exc  # a session appeared or did not leave in time: end them again
        else:
            raise ResilienceError(
                f"could not swap {replacement!r} in for {live!r}: "
                f"{str(last).splitlines()[0] if last else 'in use'}; {live!r} is unchanged")
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            if _exists(admin, live) and not _exists(admin, before):
                _allow_connections(admin, live, allowed)
        raise
    with contextlib.suppress(psycopg.Error):
        _allow_connections(admin, before, allowed)
    return {"terminated_sessions": terminated}


# -- pg_restore ----------------------------------------------------------------------------------

def pg_restore_into(repo: Repository, snap: Snapshot, path: str, tool: str, dsn: str,
                    env: dict[str, str], *, target: str, jobs: int = 1) -> dict[str, Any]:
    """Run ``pg_restore --exit-on-error`` on connection string ``dsn`` (database ``target``;
    no password: ``env`` names the password file), feeding it the dump at ``path`` in the
    snapshot through a pipe (``jobs`` = 1) or, for a parallel restore, from a temporary file.
    ResilienceError with pg_restore's last stderr line when it fails."""
    argv = [tool, "--exit-on-error", "--no-password", "--dbname", dsn]
    t0 = time.monotonic()
    written = 0
    with tempfile.TemporaryFile() as err:
        if jobs > 1:
            folder = tempfile.mkdtemp(prefix="resilience-restore-")
            try:
                dump_path = os.path.join(folder, "db.dump")
                with open(dump_path, "wb") as f:
                    for chunk in stream_file(repo, snap, path):
                        f.write(chunk)
                        written += len(chunk)
                proc = subprocess.run([*argv, f"--jobs={jobs}", dump_path],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=err, env=env, check=False)
                rc = proc.returncode
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env, bufsize=1 << 20)
            try:
                try:
                    for chunk in stream_file(repo, snap, path):
                        proc.stdin.write(chunk)
                        written += len(chunk)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # pg_restore stopped reading: its exit status and stderr say why
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.close()
        if rc != 0:
            err.seek(0)
            how = f"was killed by signal {-rc}" if rc < 0 else f"failed (exit {rc})"
            raise ResilienceError(f"pg_restore into {target} {how}: "
                                  f"{last_error_line(err.read()[-4096:])}")
    return {"bytes": written, "seconds": round(time.monotonic() - t0, 3), "jobs": jobs}


# -- the restore ---------------------------------------------------------------------------------

def _counts_of(address: str, db: DatabaseConfig, password: str | None, name: str,
               analyze: bool = False) -> dict[str, int]:
    with connect(address, db.port, name, db.superuser, password, application=APP) as conn:
        if analyze:
            # Statistics before clients arrive: their first queries are planned well.
            conn.execute("ANALYZE")
        return count_rows(conn, user_tables(conn))


def _check(expected: dict[str, int], actual: dict[str, int], where: str) -> None:
    diffs = compare_counts(expected, actual)
    if diffs:
        shown = "; ".join(diffs[:10]) + (f"; and {len(diffs) - 10} more" if len(diffs) > 10 else "")
        raise ResilienceError(f"{where} does not match the snapshot's row counts: {shown}",
                              details={"differences": diffs})


def restore_database(repo: Repository, snapshot: Snapshot, db: DatabaseConfig, address: str, *,
                     target: str = "scratch", keep_scratch: bool = False, dry_run: bool = False,
                     run: Run | None = None, jobs: int = 1) -> dict[str, Any]:
    """Restore database ``snapshot`` (kind ``database``, made by
    :func:`resilience.sources.postgres.dump_source`) on the server at ``address``.

    ``target="scratch"``: create ``<db.name>__restore_<stamp>`` (owner: the live database's
    owner, else the backed-up one's if that role exists, else the superuser), pg_restore the
    dump into it, count every table and compare with the snapshot's counts; drop it
    afterwards, also on failure, unless ``keep_scratch``.
    ``target="live"``: the scratch proof, then copy the live database's settings, GRANTs,
    connection limit and comment onto it, ANALYZE, swap it in for ``db.name`` (see
    :func:`swap_databases`), count again. The previous database is kept as
    ``<db.name>__before_<stamp>`` (``kept_database`` in the result); drop it when satisfied.
    A failure before the swap leaves the live database untouched; a mismatch after it swaps
    back.
    ``dry_run``: connect and report the plan (names, tables, expected counts); change nothing.

    Returns a dict: target, database, scratch, kept_database, expected and actual counts,
    durations, etc. Raises UsageError (bad snapshot, credentials, missing pg_restore),
    TemporaryError (server unreachable) or ResilienceError (restore or verification failed;
    ``details["differences"]`` lists differing tables)."""
    if target not in TARGETS:
        raise UsageError(f"unknown restore target {target!r} (use scratch or live)")
    meta = snapshot.meta or {}
    if snapshot.kind != "database" or not isinstance(meta.get("row_counts"), dict):
        raise UsageError(f"snapshot {snapshot.short_id} is not a database snapshot with row counts")
    expected = {str(k): int(v) for k, v in meta["row_counts"].items()}
    dump_path = meta.get("dump_file") or f"{meta.get('database', db.name)}.dump"
    if not repo.index_loaded:
        repo.load_index()
    find_node(repo, snapshot, dump_path)  # UsageError now, before anything is created
    password = read_db_password(db.superuser_password_file, "superuser")
    durations: dict[str, float] = {}
    result: dict[str, Any] = {
        "target": target, "database": db.name, "host": db.host, "address": address,
        "snapshot": snapshot.id, "snapshot_time": snapshot.time, "dry_run": dry_run,
        "expected_counts": expected, "kept_database": None,
    }

    with evidence_step(run, f"connect as {db.superuser}", db.host) as st:
        admin = connect(address, db.port, "postgres", db.superuser, password, application=APP)
        st.details.update(address=address, port=db.port, user=db.superuser,
                          server_version=server_version(admin))
    passfile: PassFile | None = None
    scratch: str | None = None
    scratch_owned = False  # True once we created it and until it is dropped or swapped in
    try:
        if not admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                             ).fetchone()[0]:
            raise UsageError(f"{db.superuser} is not a superuser: a restore creates, renames "
                             "and drops databases and ends sessions")
        dump_major = int(str(meta.get("pg_dump_version", "0")).split(".")[0] or 0)
        tool = find_tool("pg_restore", max(server_major(admin), dump_major))
        stamp = utc_stamp()
        live = database_properties(admin, db.name)
        scratch = _free_name(admin, db.name, "restore", stamp)
        before = _free_name(admin, db.name, "before", stamp) if live else None
        owner = (live or {}).get("owner") or meta.get("database_owner")
        if not _role_exists(admin, owner):
            owner = db.superuser
        result.update(scratch=scratch, owner=owner, pg_restore=tool.path,
                      pg_restore_version=tool.version, live_exists=live is not None,
                      tables=sorted(expected))
        if dry_run:
            plan = [f"create database {scratch} (owner {owner})",
                    f"pg_restore {dump_path} of snapshot {snapshot.short_id} into {scratch}",
                    f"verify {len(expected)} tables, {sum(expected.values())} rows"]
            if target == "live":
                plan += ([f"copy settings and grants of {db.name} to {scratch}",
                          f"end sessions on {db.name}; rename {db.name} -> {before}; "
                          f"rename {scratch} -> {db.name}"] if live else
                         [f"rename {scratch} -> {db.name}"])
                plan.append(f"verify {db.name} again")
            else:
                plan.append(f"drop {scratch}" if not keep_scratch else f"keep {scratch}")
            result.update(plan=plan, kept_database=before if target == "live" else None)
            return result

        with evidence_step(run, f"create database {scratch}", db.host) as st:
            t0 = time.monotonic()
            create_database(admin, scratch, owner, {**(live or {}), **{
                k: meta[k] for k in ("encoding", "collate", "ctype", "locale_provider",
                                     "icu_locale") if meta.get(k)}})
            scratch_owned = True
            durations["create_s"] = round(time.monotonic() - t0, 3)
            st.details.update(owner=owner)

        with evidence_step(run, f"pg_restore into {scratch}", db.host) as st:
            passfile = PassFile({db.superuser: password}) if password is not None else None
            env = passfile.env() if passfile else dict(os.environ)
            dsn = conninfo(address, db.port, scratch, db.superuser, "resilience pg_restore")
            info = pg_restore_into(repo, snapshot, dump_path, tool.path, dsn, env,
                                   target=scratch, jobs=jobs)
            durations["pg_restore_s"] = info["seconds"]
            st.details.update(info, pg_restore=tool.path, version=tool.version)

        with evidence_step(run, f"verify row counts of {scratch}", db.host) as st:
            t0 = time.monotonic()
            actual = _counts_of(address, db, password, scratch, analyze=target == "live")
            durations["verify_s"] = round(time.monotonic() - t0, 3)
            result["actual_counts"] = actual
            st.details.update(tables=len(actual), rows=sum(actual.values()), row_counts=actual)
            _check(expected, actual, f"restored database {scratch}")

        if target == "scratch":
            if not keep_scratch:
                with evidence_step(run, f"drop database {scratch}", db.host):
                    t0 = time.monotonic()
                    drop_database(admin, scratch)
                    scratch_owned = False
                    durations["drop_s"] = round(time.monotonic() - t0, 3)
            result["scratch_kept"] = keep_scratch
            return result

        # -- live: the scratch database is proven; swap it in --
        result["scratch_kept"] = False
        if live is not None:
            with evidence_step(run, f"copy database properties of {db.name}", db.host) as st:
                st.details["copied"] = copy_database_properties(admin, db.name, scratch)
            with evidence_step(run, f"swap {scratch} in for {db.name}", db.host) as st:
                t0 = time.monotonic()
                st.details.update(swap_databases(admin, db.name, before, scratch),
                                  kept_database=before)
                scratch_owned = False
                durations["swap_s"] = round(time.monotonic() - t0, 3)
            result["kept_database"] = before
        else:
            with evidence_step(run, f"rename {scratch} to {db.name}", db.host):
                admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    _ident(scratch), _ident(db.name)))
                scratch_owned = False

        with evidence_step(run, f"verify row counts of {db.name}", db.host) as st:
            t0 = time.monotonic()
            actual_live = _counts_of(address, db, password, db.name)
            durations["verify_live_s"] = round(time.monotonic() - t0, 3)
            result["live_counts"] = actual_live
            st.details.update(tables=len(actual_live), rows=sum(actual_live.values()))
            try:
                _check(expected, actual_live, f"database {db.name} after the swap")
            except ResilienceError:
                if before is not None:
                    # The previous database is intact: put it back, keep the bad one aside.
                    failed = _free_name(admin, db.name, "failed", stamp)
                    swap_databases(admin, db.name, failed, before)
                    st.details.update(swapped_back=True, set_aside=failed)
                raise
        if before is not None:
            result["drop_command"] = f'DROP DATABASE "{before}";'
        return result
    except BaseException:
        if scratch_owned and scratch and not keep_scratch:
            with contextlib.suppress(psycopg.Error):
                drop_database(admin, scratch)
        raise
    finally:
        result["durations"] = durations
        if passfile is not None:
            passfile.close()
        admin.close()
