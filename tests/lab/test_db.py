"""db1: the superuser DSN, the seeded portal database, the read-only backup role."""

from __future__ import annotations

import psycopg
import pytest

from resilience.lab import seed
from resilience.lab import topology as T
from resilience.lab.keys import read_secret

pytestmark = pytest.mark.lab


def test_superuser_dsn_reaches_a_seeded_database(lab):
    dsn = lab["hosts"]["db1"]["dsn"]
    assert dsn.startswith(f"postgresql://{T.DB_SUPERUSER}:") and T.DB1_ADDR in dsn
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in seed.TABLES}
        fks = conn.execute("SELECT count(*) FROM information_schema.table_constraints "
                           "WHERE constraint_type = 'FOREIGN KEY'").fetchone()[0]
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone()[0] is True
    assert counts == seed.COUNTS
    assert sum(counts.values()) >= 10_000
    assert fks >= 5


def test_dsn_via_password_file_works_too(lab):
    with psycopg.connect(lab["hosts"]["db1"]["dsn_via_file"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == T.DB_NAME


def test_wrong_password_is_refused(lab):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=T.DB1_ADDR, user=T.DB_SUPERUSER, password="not-the-password",
                        dbname=T.DB_NAME, connect_timeout=5)


def test_backup_role_reads_everything_but_writes_nothing(lab):
    with psycopg.connect(host=T.DB1_ADDR, port=T.DB_PORT, user=T.DB_BACKUP_ROLE,
                         password=read_secret("db_backup_password"), dbname=T.DB_NAME,
                         connect_timeout=5, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM comments").fetchone()[0] == \
            seed.COUNTS["comments"]
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone()[0] is False
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO categories (id, slug, name_zh, name_en) "
                         "VALUES (999, 'x', 'x', 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM comments")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.intruder (id int)")
