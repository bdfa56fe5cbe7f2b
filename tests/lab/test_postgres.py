"""Database backup and restore against the lab's real PostgreSQL on db1.

Backups go through the real engine into a local repository; restores go through
pg_restore into scratch or live databases on db1. Every database a test creates is dropped,
and the portal database is put back from the seed if a test leaves it damaged.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from resilience.config import load_config
from resilience.errors import ResilienceError, TemporaryError, UsageError
from resilience.evidence.ledger import Ledger
from resilience.inventory import load_inventory
from resilience.lab import layout as L
from resilience.lab import seed
from resilience.lab import topology as T
from resilience.lab.keys import read_secret
from resilience.repository.backup import Backup
from resilience.repository.repo import Repository
from resilience.repository.restore import stream_file
from resilience.repository.store import LocalStore
from resilience.sources.postgres import dump_source
from resilience.targets.postgres import restore_database, swap_databases

pytestmark = pytest.mark.lab

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DB = "rsl_test_pgbench"
OUR_PREFIXES = ("portal__", "rsl_test_")


def su(dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host=T.DB1_ADDR, port=T.DB_PORT, user=T.DB_SUPERUSER,
                           password=read_secret("db_superuser_password"), dbname=dbname,
                           autocommit=True, connect_timeout=5)


def databases() -> dict[str, int]:
    with su() as conn:
        return dict(conn.execute("SELECT datname, oid FROM pg_database").fetchall())


def ours() -> set[str]:
    return {d for d in databases() if d.startswith(OUR_PREFIXES)}


def drop(name: str) -> None:
    with su() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def live_counts(dbname: str) -> dict[str, int]:
    with su(dbname) as conn:
        tables = conn.execute(
            "SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2").fetchall()
        return {f"{s}.{t}": conn.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0]
                for s, t in tables}


def table_digests(dbname: str) -> dict[str, tuple[int, str]]:
    """Per table: (rows, md5 of every row as text, ordered by primary key)."""
    out = {}
    with su(dbname) as conn:
        tables = conn.execute(
            "SELECT schemaname, relname, relid FROM pg_stat_user_tables ORDER BY 1, 2").fetchall()
        for s, t, oid in tables:
            pk = [r[0] for r in conn.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (oid,)).fetchall()]
            order = ", ".join(f'x."{c}"' for c in pk) or "x::text"
            rows = f"string_agg(x::text, E'\\n' ORDER BY {order})"
            out[f"{s}.{t}"] = tuple(conn.execute(
                f"SELECT count(*), md5(coalesce({rows}, '')) FROM \"{s}\".\"{t}\" x").fetchone())
    return out


@pytest.fixture(scope="module")
def site(lab):
    """(DatabaseConfig of site portal, db1's address), from the lab's own config and inventory."""
    cfg = load_config(REPO_ROOT / "inventories" / "lab" / "resilience.yml")
    db = cfg.site("portal").database
    return db, load_inventory(cfg.inventory).address(db.host)


@pytest.fixture(autouse=True)
def no_leftovers(lab):
    """Drop every database of ours a test left behind (and let the test assert there are none)."""
    before = ours()
    yield
    for name in ours() - before:
        drop(name)


@pytest.fixture
def repo(tmp_path):
    r = Repository.init(LocalStore(tmp_path / "repo"), b"pw")
    yield r
    r.close()


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "evidence")


def backup(repo, db, address, *, run=None, tamper=None, wrap=None):
    """Back up ``db`` through the engine; ``tamper`` edits the meta, ``wrap`` the dump opener."""
    with dump_source("portal", db, address, run=run) as dump:
        meta = dict(dump.meta)
        if tamper:
            tamper(meta)
        if wrap:
            dump.source.files[0].opener = wrap(dump.source.files[0].opener)
        snap, _stats = Backup(repo, dump.source, site="portal", kind="database", meta=meta).run()
    return snap


def no_secret_anywhere(text: str) -> None:
    for purpose in ("db_superuser_password", "db_backup_password"):
        assert read_secret(purpose) not in text


@pytest.fixture
def portal_guard(lab):
    """The portal database's contents before the test; re-seeded afterwards if they changed."""
    before = table_digests(T.DB_NAME)
    yield before
    if table_digests(T.DB_NAME) != before:
        with su(T.DB_NAME) as conn:
            conn.execute("DROP TABLE IF EXISTS comments, attachments, articles, users, "
                         "categories CASCADE")
            seed.seed(conn)
    assert table_digests(T.DB_NAME) == before


# -- backup --------------------------------------------------------------------------------------

def test_backup_records_the_live_counts_globals_and_evidence(site, repo, ledger):
    db, address = site
    run = ledger.start_run("backup", {"site": "portal"})
    with run:
        snap = backup(repo, db, address, run=run)
    assert snap.kind == "database" and snap.site == "portal"
    meta = snap.meta
    assert meta["row_counts"] == live_counts(T.DB_NAME)
    assert meta["row_counts"] == {f"public.{t}": n for t, n in seed.COUNTS.items()}
    assert meta["database"] == "portal" and meta["server_version"].startswith("15.")
    assert meta["pg_dump_version"].startswith("15.") and meta["snapshot_id"]
    assert meta["dumped_on"] == os.uname().nodename

    repo.load_index()
    dump = b"".join(stream_file(repo, snap, "portal.dump"))
    assert dump.startswith(b"PGDMP") and len(dump) > 1_000_000
    globals_sql = b"".join(stream_file(repo, snap, "globals.sql")).decode()
    assert "CREATE ROLE resilience_backup" in globals_sql
    # The lab config names the superuser's password file: roles come with password hashes.
    assert "SCRAM-SHA-256$" in globals_sql and meta["globals_as"] == "postgres"

    steps = {r["step"]: r for r in ledger.records() if r.get("type") == "step"}
    counted = steps["export snapshot and count rows of portal"]
    assert counted["outcome"] == "ok"
    assert counted["details"]["row_counts"] == meta["row_counts"]
    assert steps["pg_dump portal"]["outcome"] == "ok"
    assert steps["pg_dump portal"]["details"]["bytes"] == len(dump)
    assert steps["pg_dumpall --globals-only"]["outcome"] == "ok"
    no_secret_anywhere((ledger.dir / "ledger.jsonl").read_text())
    # The exporting transaction is over and the password file is gone.
    with su() as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                            "LIKE 'resilience%'").fetchone()[0] == 0
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("resilience-pg-")]


def test_backup_without_superuser_dumps_globals_without_passwords(site, repo):
    db, address = site
    snap = backup(repo, db.model_copy(update={"superuser_password_file": None}), address)
    repo.load_index()
    globals_sql = b"".join(stream_file(repo, snap, "globals.sql")).decode()
    assert "CREATE ROLE resilience_backup" in globals_sql
    assert "PASSWORD" not in globals_sql and snap.meta["globals_as"] == "resilience_backup"


def test_wrong_password_is_one_clear_line_and_changes_nothing(site, repo, ledger, tmp_path):
    db, address = site
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    dbs = databases()
    run = ledger.start_run("backup", {"site": "portal"})
    with pytest.raises(UsageError) as exc, run:
        backup(repo, db.model_copy(update={"password_file": wrong}), address, run=run)
    msg = str(exc.value)
    assert "password authentication failed" in msg and "\n" not in msg
    assert "not-the-password" not in msg
    assert repo.snapshots() == []
    assert "not-the-password" not in (ledger.dir / "ledger.jsonl").read_text()

    snap = backup(repo, db, address)
    with pytest.raises(UsageError, match="password authentication failed"):
        restore_database(repo, snap, db.model_copy(update={"superuser_password_file": wrong}),
                         address, target="live")
    assert databases() == dbs


def test_unreachable_server_is_a_temporary_error(site):
    db, address = site
    t0 = time.monotonic()
    with pytest.raises(TemporaryError) as exc:
        dump_source("portal", db.model_copy(update={"port": 5439}), address)
    assert "Connection refused" in str(exc.value) and "\n" not in str(exc.value)
    assert time.monotonic() - t0 < 15


# -- restore to scratch --------------------------------------------------------------------------

def test_restore_to_scratch_proves_the_counts_and_drops_it(site, repo, ledger):
    db, address = site
    snap = backup(repo, db, address)
    dbs = databases()
    run = ledger.start_run("restore", {"site": "portal"})
    with run:
        result = restore_database(repo, snap, db, address, target="scratch", run=run)
    assert result["actual_counts"] == snap.meta["row_counts"] == result["expected_counts"]
    assert result["scratch"].startswith("portal__restore_") and not result["scratch_kept"]
    assert databases() == dbs  # scratch dropped, live untouched (same oid)
    names = [r["step"] for r in ledger.records() if r.get("type") == "step"]
    assert f"verify row counts of {result['scratch']}" in names
    assert f"drop database {result['scratch']}" in names
    no_secret_anywhere((ledger.dir / "ledger.jsonl").read_text())


def test_keep_scratch_keeps_an_identical_copy(site, repo, portal_guard):
    db, address = site
    snap = backup(repo, db, address)
    result = restore_database(repo, snap, db, address, target="scratch", keep_scratch=True)
    try:
        assert table_digests(result["scratch"]) == portal_guard
        with su() as conn:
            owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                                 "WHERE datname = %s", (result["scratch"],)).fetchone()[0]
        assert owner == snap.meta["database_owner"]
    finally:
        drop(result["scratch"])


def test_dry_run_reports_the_plan_and_changes_nothing(site, repo):
    db, address = site
    snap = backup(repo, db, address)
    dbs = databases()
    result = restore_database(repo, snap, db, address, target="live", dry_run=True)
    assert result["dry_run"] and result["expected_counts"] == snap.meta["row_counts"]
    assert result["kept_database"].startswith("portal__before_")
    assert any("rename portal -> portal__before_" in step for step in result["plan"])
    assert databases() == dbs


def test_a_mismatch_fails_the_restore_lists_the_table_and_leaves_live_untouched(
        site, repo, portal_guard):
    db, address = site

    def wrong_count(meta):
        meta["row_counts"] = dict(meta["row_counts"], **{"public.users": 1501})

    snap = backup(repo, db, address, tamper=wrong_count)
    dbs = databases()
    with pytest.raises(ResilienceError) as exc:
        restore_database(repo, snap, db, address, target="live")
    assert "public.users: 1500 rows, expected 1501" in str(exc.value)
    assert exc.value.details["differences"] == ["public.users: 1500 rows, expected 1501"]
    assert databases() == dbs  # no scratch left, portal has its old oid
    assert table_digests(T.DB_NAME) == portal_guard


# -- live restore --------------------------------------------------------------------------------

def test_live_restore_brings_back_every_table_and_row(site, repo, ledger, portal_guard):
    db, address = site
    snap = backup(repo, db, address)
    old_oid = databases()[T.DB_NAME]
    with su(T.DB_NAME) as conn:
        conn.execute("DROP TABLE comments")
        conn.execute("DELETE FROM articles WHERE id % 2 = 0")  # cascades to attachments
        conn.execute("UPDATE users SET display_name = 'defaced' WHERE id <= 10")  # same count
    damaged = table_digests(T.DB_NAME)
    assert damaged != portal_guard and "public.comments" not in damaged
    idle = psycopg.connect(host=address, port=db.port, dbname=T.DB_NAME, user=db.user,
                           password=read_secret("db_backup_password"), autocommit=True)

    run = ledger.start_run("restore", {"site": "portal", "target": "live"})
    with run:
        result = restore_database(repo, snap, db, address, target="live", run=run)

    assert table_digests(T.DB_NAME) == portal_guard  # counts and content, every table
    assert result["live_counts"] == snap.meta["row_counts"]
    kept = result["kept_database"]
    assert kept.startswith("portal__before_") and databases()[kept] == old_oid
    assert table_digests(kept) == damaged  # the previous database, as it was
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")  # its session was ended for the swap
    idle.close()
    # The backup role still reaches and reads the restored database.
    with psycopg.connect(host=address, port=db.port, dbname=T.DB_NAME, user=db.user,
                         password=read_secret("db_backup_password")) as conn:
        assert conn.execute("SELECT count(*) FROM comments").fetchone()[0] == \
            seed.COUNTS["comments"]
    assert not [d for d in databases() if d.startswith("portal__restore_")]
    steps = [r["step"] for r in ledger.records() if r.get("type") == "step"]
    assert any(s.startswith("swap portal__restore_") for s in steps)
    with su() as conn:  # the documented clean-up
        conn.execute(result["drop_command"])
    assert kept not in databases()


def test_swap_rolls_back_when_the_second_rename_fails(lab):
    names = ["rsl_test_live", "rsl_test_new"]
    with su() as admin:
        for n in names:
            admin.execute(f'CREATE DATABASE "{n}"')
        oids = databases()
        # A session in the replacement makes its rename fail after the first one succeeded.
        blocker = psycopg.connect(host=T.DB1_ADDR, port=T.DB_PORT, user=T.DB_SUPERUSER,
                                  password=read_secret("db_superuser_password"),
                                  dbname="rsl_test_new", autocommit=True)
        try:
            with pytest.raises(ResilienceError, match="rsl_test_live.* is unchanged"):
                swap_databases(admin, "rsl_test_live", "rsl_test_before", "rsl_test_new",
                               attempts=1)
            after = databases()
            assert after["rsl_test_live"] == oids["rsl_test_live"]
            assert after["rsl_test_new"] == oids["rsl_test_new"]
            assert "rsl_test_before" not in after
            assert admin.execute("SELECT datallowconn FROM pg_database WHERE datname = "
                                 "'rsl_test_live'").fetchone()[0] is True
        finally:
            blocker.close()
        swap_databases(admin, "rsl_test_live", "rsl_test_before", "rsl_test_new")
        after = databases()
        assert after["rsl_test_live"] == oids["rsl_test_new"]
        assert after["rsl_test_before"] == oids["rsl_test_live"]


# -- under load, and failing dumps ---------------------------------------------------------------

def _pgbench(*args: str, **kw) -> list[str]:
    return [f"{T.PG_BIN}/pgbench", "-h", T.DB1_ADDR, "-p", str(T.DB_PORT), "-U", T.DB_SUPERUSER,
            *args, BENCH_DB]


@pytest.fixture(scope="module")
def bench_db(lab):
    """A pgbench database (scale 5, ~75 MB) on db1, dropped at the end of the module."""
    env = dict(os.environ, PGPASSFILE=str(L.pgpass_file()))
    drop(BENCH_DB)
    with su() as conn:
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    subprocess.run(_pgbench("-i", "-s", "5", "-q", "--init-steps=dtGvp"), env=env, check=True,
                   capture_output=True, timeout=300)
    yield env
    drop(BENCH_DB)


def test_backup_under_write_load_is_one_consistent_state(site, repo, bench_db):
    db, address = site
    bench = db.model_copy(update={"name": BENCH_DB})
    load = subprocess.Popen(_pgbench("-n", "-c", "2", "-T", "15"), env=bench_db,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while live_counts(BENCH_DB)["public.pgbench_history"] == 0:
            assert time.monotonic() < deadline, "pgbench wrote nothing"
            time.sleep(0.2)
        snap = backup(repo, bench, address)
        assert load.poll() is None, "the backup must run while pgbench writes"
    finally:
        _, err = load.communicate(timeout=60)
    assert load.returncode == 0, err.decode()
    taken = snap.meta["row_counts"]
    final = live_counts(BENCH_DB)
    assert final["public.pgbench_history"] > taken["public.pgbench_history"] > 0

    result = restore_database(repo, snap, bench, address, target="scratch", keep_scratch=True)
    try:
        assert result["actual_counts"] == taken
        # TPC-B keeps every balance total equal to the history's: true only in one snapshot.
        with su(result["scratch"]) as conn:
            sums = conn.execute(
                "SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
                "(SELECT sum(bbalance) FROM pgbench_branches), "
                "(SELECT sum(tbalance) FROM pgbench_tellers), "
                "(SELECT sum(delta) FROM pgbench_history)").fetchone()
        assert len(set(sums)) == 1 and sums[3] is not None, sums
    finally:
        drop(result["scratch"])


def _after_first_output(action):
    """Wrap a dump opener: once pg_dump has produced output, run ``action(stream)``."""

    def wrap(opener):
        def opened():
            stream = opener()
            select.select([stream.proc.stdout], [], [], 30)
            action(stream)
            return stream
        return opened
    return wrap


def _assert_no_snapshot_and_clean(repo, exc) -> None:
    assert "pg_dump of" in str(exc.value)
    assert repo.snapshots() == []
    with su() as conn:
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                            "LIKE 'resilience%'").fetchone()[0] == 0
    assert not [p for p in os.listdir("/dev/shm") if p.startswith("resilience-pg-")]


def test_pg_dump_killed_midway_writes_no_snapshot(site, repo, bench_db):
    db, address = site
    bench = db.model_copy(update={"name": BENCH_DB})
    with pytest.raises(ResilienceError) as exc:
        backup(repo, bench, address, wrap=_after_first_output(lambda s: s.proc.kill()))
    assert "killed by signal 9" in str(exc.value)
    _assert_no_snapshot_and_clean(repo, exc)


def test_pg_dump_whose_backend_is_terminated_writes_no_snapshot(site, repo, bench_db, ledger):
    db, address = site
    bench = db.model_copy(update={"name": BENCH_DB})
    ended = []

    def terminate(_stream):
        with su() as conn:
            ended.extend(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'resilience pg_dump'").fetchall())

    run = ledger.start_run("backup", {"site": "portal"})
    with pytest.raises(ResilienceError) as exc, run:
        backup(repo, bench, address, run=run, wrap=_after_first_output(terminate))
    assert ended == [(True,)]
    assert "failed (exit 1)" in str(exc.value)
    _assert_no_snapshot_and_clean(repo, exc)
    dump_step = [r for r in ledger.records() if r.get("step") == f"pg_dump {BENCH_DB}"]
    assert dump_step and dump_step[0]["outcome"] == "failed"


def test_a_failing_globals_dump_fails_the_whole_backup(site, repo, bench_db):
    db, address = site
    bench = db.model_copy(update={"name": BENCH_DB})
    with dump_source("portal", bench, address) as dump:
        def broken_globals():
            raise ResilienceError("globals failed on purpose")

        dump.source.files[1].opener = broken_globals
        with pytest.raises(ResilienceError, match="on purpose"):
            Backup(repo, dump.source, site="portal", kind="database", meta=dump.meta).run()
    assert repo.snapshots() == []


def test_a_schema_change_queued_during_the_backup_fails_it_as_temporary(
        site, repo, bench_db, monkeypatch):
    """The counting transaction holds its table locks until pg_dump has its own; a DDL queued
    in between would make pg_dump wait behind it forever: it gives up and asks for a retry."""
    import resilience.sources.postgres as source

    monkeypatch.setattr(source, "LOCK_WAIT_TIMEOUT", "2s")
    db, address = site
    bench = db.model_copy(update={"name": BENCH_DB})
    outcome = []
    with dump_source("portal", bench, address) as dump, su(BENCH_DB) as ddl:
        def alter():
            ddl.execute("SET lock_timeout = '30s'")
            ddl.execute("ALTER TABLE pgbench_branches ADD COLUMN rsl_test int")
            outcome.append(time.monotonic())

        t = threading.Thread(target=alter)
        t.start()
        time.sleep(0.5)
        assert not outcome, "the DDL must wait for the counting transaction"
        with pytest.raises(TemporaryError, match="retry later"):
            Backup(repo, dump.source, site="portal", kind="database", meta=dump.meta).run()
        dump.close()
        t.join(30)
        assert outcome, "the DDL goes through once the backup gave up"
        ddl.execute("ALTER TABLE pgbench_branches DROP COLUMN rsl_test")
    assert repo.snapshots() == []
