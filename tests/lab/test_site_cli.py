"""The lab's own config end to end: one run backs up files from a member and the database
into the lab S3; the worst-day restores bring back a tampered member and a dropped table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from resilience.evidence import Ledger
from resilience.lab import faults, site
from resilience.lab import layout as L
from resilience.lab import topology as T
from resilience.lab.status import superuser_dsn

pytestmark = pytest.mark.lab
CONFIG = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "resilience.yml"


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_CONFIG=str(CONFIG))
    return subprocess.run([sys.executable, "-m", "resilience", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every table's rows (ordered), as a content fingerprint."""
    out = {}
    with psycopg.connect(dsn) as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables "
                              "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            q = f'SELECT count(*), md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) FROM "{schema}"."{table}" t'
            out[f"{schema}.{table}"] = tuple(conn.execute(q).fetchone())
    return out


def drop_kept_databases(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'portal\\_\\_%'").fetchall():
            conn.execute(f'DROP DATABASE "{name}"')


@pytest.fixture(scope="module")
def backed_up(lab, member_lock):
    for web in T.WEB_HOSTS:
        faults.untamper(web)
    r = run("snapshots")
    if r.returncode == 2 and "no repository" in r.stderr:
        assert run("init").returncode == 0
    r = run("backup", "--site", "portal", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["results"][0]


def test_one_run_backs_up_files_and_database(backed_up):
    res = backed_up
    assert res["member"] == "web1" and res["snapshot"]
    db = res["database"]
    assert db["snapshot"] and db["tables"] >= 5 and db["rows"] >= 10_000
    ledger = Ledger(L.evidence_dir())
    assert ledger.verify().ok
    run_id = None
    for rec in ledger.records():
        if rec.get("type") == "step" and rec.get("details", {}).get("snapshot") == res["snapshot"]:
            run_id = rec["run"]
    steps = [r["step"] for r in ledger.records() if r.get("run") == run_id and r.get("type") == "step"]
    assert "backup files of portal" in steps and "store database portal of portal" in steps
    snaps = json.loads(run("snapshots", "--site", "portal", "--json").stdout)["snapshots"]
    mine = {s["kind"]: s for s in snaps if s["meta"].get("backup_run") == run_id}
    assert set(mine) == {"files", "database"}
    assert mine["database"]["meta"]["row_counts"]["public.articles"] > 0


def test_tampered_member_restored_through_the_lab_config(backed_up):
    faults.tamper("web1")
    r = run("restore", "--site", "portal", "--host", "web1", "--files-only", "--yes", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["members"]["web1"]["verified"]
    assert site.is_pristine(L.site_dir("web1"))
    assert all(c["ok"] for cs in res["checks"].values() for c in cs)


def test_dropped_table_restored_live(backed_up):
    dsn = superuser_dsn()  # the lab superuser on database portal
    portal_dsn = dsn
    before = table_digests(portal_dsn)
    with psycopg.connect(portal_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE comments")
    try:
        r = run("restore", "--site", "portal", "--database-only", "--target", "live", "--yes", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["database"]["target"] == "live"
        assert table_digests(portal_dsn) == before
    finally:
        drop_kept_databases(dsn)


def test_wrong_database_password_is_clear_and_changes_nothing(backed_up, tmp_path):
    bad = tmp_path / "bad.pass"
    bad.write_text("not-the-password\n")
    cfg = tmp_path / "resilience.yml"
    text = CONFIG.read_text().replace(str(L.secret_path("db_backup_password")), str(bad))
    text = text.replace("inventory: hosts.yml", f"inventory: {CONFIG.parent / 'hosts.yml'}")
    cfg.write_text(text)
    before = json.loads(run("snapshots", "--json").stdout)["snapshots"]
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), "backup", "--site", "portal",
                        "--database-only"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr
    assert "password" in r.stderr and "not-the-password" not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    assert json.loads(run("snapshots", "--json").stdout)["snapshots"] == before
