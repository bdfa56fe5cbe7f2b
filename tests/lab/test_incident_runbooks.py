"""The attack, db-failure and network runbooks end to end in the lab: real faults (attack
traffic from the internet, a stopped and damaged database, a dead line), the real CLI with the
lab's own config, and what each runbook must leave behind checked on the hosts themselves.

Every test changes the lab: each holds the shared member-tests lock and leaves the lab as it
found it (no blocks, PostgreSQL running with the portal's data, both lines up, primary active).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from resilience import lab as lab_api
from resilience.lab import faults, seed, services
from resilience.lab import topology as T
from resilience.lab.hosts import run_in
from resilience.lab.keys import read_secret

from .labtools import REPO, answered, http_status, resilience_argv, run_cli, ssh, wait_for

pytestmark = pytest.mark.lab
CONFIG = str(REPO / "inventories" / "lab" / "resilience.yml")
EVIDENCE = Path("/var/lib/resilience-lab/evidence")  # evidence.dir of the lab config
FIELDS = ("信息来源", "影响范围", "事件性质", "事件发展趋势", "采取的措施")
BLOCK_TABLE = "inet resilience_block"
# Sources of this module only (test_block.py uses .1-.3), added to the internet's lo for a test:
# the ISPs route all of 198.19.0.0/24 back to the internet namespace.
FLOODER, PROBER, BYSTANDER = "198.19.0.201", "198.19.0.202", "198.19.0.203"


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli("--config", CONFIG, *args, timeout=timeout)


def incident(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return cli("incident", *args, "--json", timeout=timeout)


def outcomes(res: dict) -> dict[str, str]:
    return {s["step"]: s["outcome"] for s in res["steps"]}


def step_details(run_id: str) -> dict[str, dict]:
    """The recorded details of every step of run ``run_id``, from the evidence ledger."""
    r = cli("evidence", "show", "--run", run_id, "--json")
    assert r.returncode == 0, r.stderr
    return {rec["step"]: rec.get("details") or {} for rec in json.loads(r.stdout)["records"]
            if rec.get("type") == "step"}


def report_of(res: dict) -> dict:
    """The JSON report of an incident run, after checking both files carry the five fields."""
    paths = res["report"]["paths"]
    md, data = Path(paths["markdown"]).read_text(), json.loads(Path(paths["json"]).read_text())
    for label in FIELDS:
        assert label in md and data["fields_zh"][label], label
    assert data["run"] == res["run"] and data["outcome"] == "ok"
    return data


# -- attack -------------------------------------------------------------------------------------

def block_elements() -> dict[str, dict]:
    r = cli("block", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {e["cidr"]: e for e in json.loads(r.stdout)["hosts"]["lb1"]["elements"]}


def balancer_states() -> dict[str, str]:
    r = cli("cluster", "status", "--json")
    assert r.returncode == 0, r.stderr
    return {m["host"]: m["balancer_state"] for m in json.loads(r.stdout)["sites"]["portal"]}


@pytest.fixture
def attack_sources(member_lock_per_test):
    """Three more internet addresses for this test; afterwards lb1 as it was (the blocks this
    test caused removed, the table deleted if it was not there), the addresses gone and nginx
    on every member serving through the balancer."""
    had_table = ssh("lb1", f"nft list table {BLOCK_TABLE}").returncode == 0
    before = set(block_elements())
    for addr in (FLOODER, PROBER, BYSTANDER):
        run_in("internet", ["ip", "addr", "replace", f"{addr}/32", "dev", "lo"])
    try:
        yield
    finally:
        for web in T.WEB_HOSTS:
            faults.start_service(web, "nginx")
        if had_table:
            new = sorted(set(block_elements()) - before)
            if new:
                r = cli("block", "remove", *new)
                assert r.returncode == 0, r.stderr
        else:
            ssh("lb1", f"nft delete table {BLOCK_TABLE}")
        for addr in (FLOODER, PROBER, BYSTANDER):
            run_in("internet", ["ip", "addr", "del", f"{addr}/32", "dev", "lo"], check=False)
        assert set(block_elements()) == (before if had_table else set())
        assert wait_for(lambda: set(balancer_states().values()) == {"UP"}, 20)


def test_attack_blocks_the_attacking_sources_on_the_balancer_and_the_site_keeps_answering(attack_sources):
    for addr in (FLOODER, PROBER, BYSTANDER):
        assert answered(addr), f"the public address does not answer {addr}"
    # The flood took nginx on web2 down (the runbook restarts it); web1 carries the site.
    faults.stop_service("web2", "nginx")
    assert wait_for(lambda: balancer_states()["web2"] != "UP", 20), "lb1 still sends traffic to web2"
    # A flood from one address (240 requests within a second: whichever way a minute boundary
    # splits them, one minute has the threshold of 120), probes (.env, wp-login, …: at least
    # 3) from another, ordinary visits from a third.
    flood = "".join(f'url = "{T.PUBLIC_URL}news/2024/article-{i % 9 + 1:03d}.html"\noutput = "/dev/null"\n'
                    for i in range(240))
    run_in("internet", ["curl", "-s", "--interface", FLOODER, "-K", "-"], input=flood.encode())
    for path in ("wp-login.php", ".env", "cgi-bin/test.cgi", "index.html?id=1%27%20or%201=1", ".git/config"):
        run_in("internet", ["curl", "-s", "-o", "/dev/null", "--interface", PROBER, T.PUBLIC_URL + path])
    for path in ("", "news/2024/article-001.html", "healthz"):
        assert http_status(BYSTANDER, T.PUBLIC_URL + path) == 200

    # The internet's client address may carry other sessions' request loops: allow-listed.
    r = incident("attack", "--site", "portal", "--since", "2m", "--ttl", "10m", "--exclude", T.CLIENT_ADDR)
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert res["outcome"] == "ok" and res["failed_step"] is None
    assert outcomes(res) == {"assess": "ok", "find attacking ranges": "ok", "block": "ok",
                             "confirm site answers": "ok", "restart services if needed": "ok",
                             "raise monitoring": "ok"}
    attackers = {f"{FLOODER}/32", f"{PROBER}/32"}
    details = step_details(res["run"])
    found = {p["cidr"]: p["reasons"] for p in details["find attacking ranges"]["proposals"]}
    assert attackers <= set(found)
    assert any("in one minute" in why for why in found[f"{FLOODER}/32"])
    assert any("probe" in why for why in found[f"{PROBER}/32"])
    assert f"{BYSTANDER}/32" not in found and f"{T.CLIENT_ADDR}/32" not in found
    assert not any(c.startswith("198.18.") for c in found)  # never the site's own networks
    blocked = details["block"]
    assert set(blocked["blocked"]) == set(found) and blocked["ttl_s"] == 600
    assert len(res["linked_runs"]) == 2  # block-from-logs and block-add
    restarted = details["restart services if needed"]["hosts"]
    assert restarted["web2"] == {"name": "nginx", "was_running": False, "restarted": True, "running": True}
    assert restarted["web1"] == {"name": "nginx", "was_running": True, "restarted": False, "running": True}
    assert services.check("web2", "nginx") and wait_for(lambda: balancer_states()["web2"] == "UP", 20)

    # The blocks are on lb1, with the incident named, and they work: the attackers get no
    # answer at all through the public address while everybody else still does.
    listed = block_elements()
    for cidr in attackers:
        assert res["run"] in listed[cidr]["comment"] and "incident attack" in listed[cidr]["comment"]
        assert 0 < listed[cidr]["expires"] <= 600
    assert http_status(FLOODER) == 0 and http_status(PROBER) == 0
    assert answered(BYSTANDER) and answered(T.CLIENT_ADDR) and answered(None, T.VIP_URL)
    assert f"{BYSTANDER}/32" not in listed and f"{T.CLIENT_ADDR}/32" not in listed

    data = report_of(res)
    assert data["severity"] == "minor" and data["report_upward"] is False  # the site kept answering
    for cidr in attackers:
        assert cidr in data["fields_zh"]["事件性质"] and cidr in data["findings"]["blocked ranges"]
    assert any(m.startswith("block — done") for m in data["fields_zh"]["采取的措施"])


# -- db-failure ---------------------------------------------------------------------------------

def su(dbname: str = T.DB_NAME) -> psycopg.Connection:
    return psycopg.connect(host=T.DB1_ADDR, port=T.DB_PORT, user=T.DB_SUPERUSER,
                           password=read_secret("db_superuser_password"), dbname=dbname,
                           autocommit=True, connect_timeout=5)


def databases() -> set[str]:
    with su("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def table_digests() -> dict[str, tuple[int, str]]:
    """Per table of the portal database: (rows, md5 of every row as text, in row order)."""
    out = {}
    with su() as conn:
        for s, t in conn.execute("SELECT schemaname, relname FROM pg_stat_user_tables ORDER BY 1, 2").fetchall():
            out[f"{s}.{t}"] = tuple(conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) "
                f'FROM "{s}"."{t}" x').fetchone())
    return out


@pytest.fixture
def portal_db(member_lock_per_test):
    """The portal database's contents before the test; afterwards PostgreSQL running, the
    contents as before (re-seeded if not) and no database left over by the restores."""
    faults.start_service("db1", "postgresql")
    before_dbs, before = databases(), table_digests()
    try:
        yield before
    finally:
        faults.start_service("db1", "postgresql")
        if table_digests() != before:
            with su() as conn:
                conn.execute("DROP TABLE IF EXISTS comments, attachments, articles, users, categories CASCADE")
                seed.seed(conn)
        with su("postgres") as conn:
            for name in sorted(databases() - before_dbs):
                if name.startswith(f"{T.DB_NAME}__"):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        assert databases() == before_dbs and table_digests() == before


def _log_time(line: str) -> datetime:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)


def test_db_failure_starts_the_database_restores_the_dump_live_and_keeps_the_logs(portal_db):
    # The last good dump: a database-only backup of the intact database.
    r = cli("backup", "--site", "portal", "--database-only", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    snap_id = json.loads(r.stdout)["results"][0]["database"]["snapshot"]
    snaps = json.loads(cli("snapshots", "--site", "portal", "--json").stdout)["snapshots"]
    dump_counts = next(s for s in snaps if s["id"] == snap_id)["meta"]["row_counts"]
    assert {t: n for t, (n, _) in portal_db.items()} == dump_counts

    # The failure: a table emptied, another dropped, then the server stopped.
    with su() as conn:
        conn.execute("TRUNCATE comments")
        conn.execute("DROP TABLE attachments")
    broke_at = datetime.now(UTC)
    faults.stop_service("db1", "postgresql")
    assert not services.check("db1", "postgresql")

    r = incident("db-failure", "--site", "portal")
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert outcomes(res) == {
        "assess": "ok", "start database": "ok", "compare with last dump": "ok",
        "restore into scratch (proof)": "ok", "restore live": "ok", "restart site services": "ok",
        "verify through the balancer": "ok", "collect database logs": "ok"}
    details = step_details(res["run"])
    assert details["start database"]["hosts"]["db1"] == {
        "name": "postgresql", "was_running": False, "restarted": True, "running": True}
    compared = details["compare with last dump"]
    assert compared["snapshot"] == snap_id
    assert compared["differs"] == ["public.attachments", "public.comments"]
    live = details["restore live"]
    assert live["target"] == "live" and live["snapshot"] == snap_id
    assert live["verified"] is True and live["rows"] == sum(dump_counts.values())
    # The damaged database is kept for the investigation, and the report says so.
    assert live["kept_database"].startswith("portal__before_")
    assert live["drop_command"] == f'DROP DATABASE "{live["kept_database"]}";'
    # Both restores (scratch proof, live) are runs of their own, linked from this one.
    assert [details[s]["run"] for s in ("restore into scratch (proof)", "restore live")] == res["linked_runs"]
    assert all(run_id.startswith(tuple("0123456789")) and "restore-site" in run_id for run_id in res["linked_runs"])

    # The database answers again with every table and row of the dump (and the same content).
    assert services.check("db1", "postgresql")
    after = table_digests()
    assert {t: n for t, (n, _) in after.items()} == dump_counts
    assert after == portal_db
    # The site passes its checks through the balancer.
    assert answered(None, T.VIP_URL + "healthz") and answered(None, T.VIP_URL)

    # The database logs were kept, unchanged, and they cover the restart the runbook made.
    kept = details["collect database logs"]["logs_sha256"]
    assert "postgresql-15-main.log" in kept
    data = report_of(res)
    arts = {a["name"]: a for a in data["artifacts"] if a["run"] == res["run"]}
    log = arts["postgresql-postgresql-15-main.log"]
    assert log["sha256"] == kept["postgresql-15-main.log"]
    text = (EVIDENCE / log["path"]).read_bytes()
    assert hashlib.sha256(text).hexdigest() == log["sha256"]
    ready = [ln for ln in text.decode("utf-8", "replace").splitlines()
             if "database system is ready to accept connections" in ln]
    assert ready and _log_time(ready[-1]) >= broke_at.replace(microsecond=0)

    assert data["severity"] == "major" and data["report_upward"] is True  # data was replaced
    assert "public.comments" in data["fields_zh"]["影响范围"]
    assert "replaced from the last good dump" in data["fields_zh"]["事件性质"]
    assert live["kept_database"] in json.dumps(data["findings"], ensure_ascii=False)


# -- network ------------------------------------------------------------------------------------

@pytest.fixture
def lines_restored(member_lock_per_test):
    """Afterwards: both lines up and the primary active again (through the CLI if needed)."""
    assert lab_api.active_line() == T.DEFAULT_LINE
    try:
        yield
    finally:
        for name in T.LINES:
            faults.line_up(name)
        if lab_api.active_line() != T.DEFAULT_LINE:
            r = cli("line", "failback")
            if r.returncode != 0:
                lab_api.set_active_line(T.DEFAULT_LINE)
        assert lab_api.active_line() == T.DEFAULT_LINE


def test_network_fails_over_waits_for_the_repair_and_fails_back(lines_restored):
    faults.line_down("primary")
    proc = subprocess.Popen([*resilience_argv(), "--config", CONFIG, "incident", "network", "--site", "portal",
                             "--wait", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert wait_for(lambda: lab_api.active_line() == "standby" or proc.poll() is not None, 40), \
            "no failover to the standby line"
        assert lab_api.active_line() == "standby", proc.communicate()
        assert answered(T.CLIENT_ADDR)  # the internet reaches the site over the standby line
        assert proc.poll() is None  # still waiting for the repair
        faults.line_up("primary")
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err + out
    res = json.loads(out)
    assert outcomes(res) == {"check lines": "ok", "fail over": "ok", "wait for repair": "ok",
                             "fail back": "ok", "verify": "ok"}
    details = step_details(res["run"])
    assert details["check lines"]["active"] == "primary"
    assert details["check lines"]["healthy"] == {"primary": False, "standby": True}
    assert details["fail over"]["to"] == "standby"
    assert details["wait for repair"]["repaired_after_s"] >= 0
    assert details["verify"]["active"] == "primary" and details["verify"]["site_ok"] is True
    assert details["verify"]["active_line_healthy"] is True
    assert len(res["linked_runs"]) == 2  # the failover and the failback runs
    assert lab_api.active_line() == "primary"
    assert answered(T.CLIENT_ADDR)

    data = report_of(res)
    assert data["severity"] == "minor" and data["report_upward"] is False  # the standby carried it
    assert "before: primary, after: primary" in data["fields_zh"]["影响范围"]
    assert data["fields_zh"]["事件发展趋势"] == "contained: traffic on primary"


def test_network_no_wait_only_fails_over(lines_restored):
    faults.line_down("primary")
    r = incident("network", "--site", "portal", "--no-wait")
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert outcomes(res) == {"check lines": "ok", "fail over": "ok", "wait for repair": "skipped",
                             "fail back": "skipped", "verify": "ok"}
    assert lab_api.active_line() == "standby" and answered(T.CLIENT_ADDR)
    assert len(res["linked_runs"]) == 1
    data = report_of(res)
    assert "after: standby" in data["fields_zh"]["影响范围"]
    assert "fail back once the primary is repaired" in data["fields_zh"]["事件发展趋势"]
    # The documented way back once the line is repaired.
    faults.line_up("primary")
    r = cli("line", "failback")
    assert r.returncode == 0, r.stderr
    assert lab_api.active_line() == "primary" and answered(T.CLIENT_ADDR)
