"""Blocking in the lab: sources in the `internet` namespace blocked on lb1 through the public
address, unblocked, expired; protected addresses refused; blocks proposed from the web hosts'
access logs and applied. Each test leaves lb1 as it found it (no blocks; no table if there was
none)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resilience.lab import run_in
from resilience.lab import topology as T

from .labtools import REPO, answered, http_status, run_cli, ssh

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("member_lock")]

CONFIG = str(REPO / "inventories" / "lab" / "resilience.yml")
INVENTORY = str(REPO / "inventories" / "lab" / "hosts.yml")
FLOODER, PROBER, QUIET = "198.19.0.2", "198.19.0.3", "198.19.0.1"
TABLE = "inet resilience_block"


def block(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_cli("--config", CONFIG, "block", *args, timeout=timeout)


def elements() -> dict[str, dict]:
    r = block("list", "--json")
    assert r.returncode == 0, r.stderr
    return {e["cidr"]: e for e in json.loads(r.stdout)["hosts"]["lb1"]["elements"]}


def table_exists() -> bool:
    return ssh("lb1", f"nft list table {TABLE}").returncode == 0


# What blocking needs: the balancer, at least one web host, the public path. A web host being
# isolated by another test (quarantined, so `lab up` cannot call it healthy) must not stop these.
NEEDED = ("lb1", "gw1", "internet", "isp1")


@pytest.fixture(scope="module")
def lab_for_blocks(request):
    """The lab, when what blocking needs is healthy; else the session's `lab` fixture (up)."""
    if os.geteuid() == 0:
        from resilience import lab as lab_api

        hosts = lab_api.status().get("hosts", {})
        if all(hosts.get(h, {}).get("healthy") for h in NEEDED) and \
                any(hosts.get(w, {}).get("healthy") for w in T.WEB_HOSTS) and answered(None, T.VIP_URL):
            return hosts
    return request.getfixturevalue("lab")


@pytest.fixture
def clean_lb1(lab_for_blocks):
    """Leave lb1 as found: blocks removed, and the table deleted if it was not there."""
    assert answered(FLOODER) and answered(PROBER), "the public address does not answer the internet"
    existed = table_exists()
    yield
    if existed:
        ssh("lb1", f"nft flush set {TABLE} v4; nft flush set {TABLE} v6")
    else:
        ssh("lb1", f"nft delete table {TABLE}")


def test_block_drops_only_that_source_and_unblock_restores(clean_lb1):
    r = block("add", FLOODER, "--ttl", "10m", "--reason", "lab test: flood", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["hosts"]["lb1"]["added"] == [f"{FLOODER}/32"]
    assert http_status(FLOODER) == 0                      # no answer at all: dropped
    assert answered(T.CLIENT_ADDR)              # another internet source
    assert answered(None, T.VIP_URL)            # the ops host
    assert ssh("lb1", "true").returncode == 0             # and the ops host's SSH
    listed = elements()[f"{FLOODER}/32"]
    assert "lab test: flood" in listed["comment"] and res["run"] in listed["comment"]
    assert listed["packets"] > 0 and 0 < listed["expires"] <= 600
    # Idempotent: blocking it again changes nothing.
    again = json.loads(block("add", FLOODER, "--ttl", "10m", "--reason", "again", "--json").stdout)
    assert again["hosts"]["lb1"]["unchanged"] == [f"{FLOODER}/32"] and not again["hosts"]["lb1"]["changed"]
    # The change is in the evidence ledger with its steps.
    shown = run_cli("--config", CONFIG, "evidence", "show", "--run", res["run"], "--json")
    assert shown.returncode == 0 and "check CIDRs against protected networks" in shown.stdout
    r = block("remove", FLOODER)
    assert r.returncode == 0 and "unblock 198.19.0.2/32" in r.stdout
    assert answered(FLOODER)
    r = block("remove", FLOODER, "--json")
    assert json.loads(r.stdout)["hosts"]["lb1"]["absent"] == [f"{FLOODER}/32"]


def test_a_block_expires_after_its_ttl(clean_lb1):
    r = block("add", PROBER, "--ttl", "3s", "--reason", "lab test: ttl")
    assert r.returncode == 0, r.stderr
    added = time.monotonic()
    assert http_status(PROBER, timeout=1) == 0
    while http_status(PROBER, timeout=1) != 200:
        assert time.monotonic() - added < 15, "block did not expire"
        time.sleep(0.3)
    assert f"{PROBER}/32" not in elements()


def test_dry_run_changes_nothing(clean_lb1):
    r = block("add", FLOODER, "--reason", "lab test: dry run", "--dry-run")
    assert r.returncode == 0 and "would block 198.19.0.2/32" in r.stdout
    assert f"{FLOODER}/32" not in (elements() if table_exists() else {})
    assert answered(FLOODER)


@pytest.mark.parametrize("cidr, why", [
    (T.OPS_ADDR, "the ops host"),
    ("198.18.0.0/16", "the ops host"),
    ("198.18.0.96/28", "control.protected"),
    (T.LB1_ADDR, "inventory host lb1"),
    (T.GW_LAN_ADDR, "inventory host gw1"),
    ("198.19.0.5/24", "host bits"),
])
def test_cli_refuses_protected_and_invalid(lab_for_blocks, cidr, why):
    r = block("add", cidr, "--reason", "lab test: must refuse")
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_playbook_alone_is_idempotent_check_safe_and_refuses_protected(clean_lb1):
    def play(extra: dict, *check: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).parent / "ansible-playbook"), "-i", INVENTORY,
             str(REPO / "playbooks" / "block_sources.yml"), "-e", json.dumps(extra), *check],
            capture_output=True, text=True, cwd=REPO, timeout=180, check=False)

    def changed(proc) -> int:
        recap = next(ln for ln in proc.stdout.splitlines() if ln.startswith("lb1 ") and "changed=" in ln)
        return int(recap.split("changed=")[1].split()[0])

    add = {"block_add": [{"cidr": f"{FLOODER}/32", "timeout": 600, "comment": "playbook test"}]}
    p = play(add, "--check")
    assert p.returncode == 0 and changed(p) == 1 and answered(FLOODER)
    p = play(add)
    assert p.returncode == 0 and changed(p) == 1 and http_status(FLOODER) == 0
    p = play(add)
    assert p.returncode == 0 and changed(p) == 0
    p = play({"block_remove": [f"{FLOODER}/32"]}, "--check")
    assert p.returncode == 0 and changed(p) == 1 and http_status(FLOODER) == 0
    p = play({"block_remove": [f"{FLOODER}/32"]})
    assert p.returncode == 0 and changed(p) == 1 and answered(FLOODER)
    p = play({"block_remove": [f"{FLOODER}/32"]})
    assert p.returncode == 0 and changed(p) == 0
    # Run by hand without the config's protected list, it still refuses the platform itself.
    p = play({"block_add": [{"cidr": T.WEB1_ADDR, "timeout": 60}]})
    assert p.returncode != 0 and "refusing to block" in p.stdout
    p = play({"block_add": [{"cidr": "198.18.0.0/30", "timeout": 60}]})  # the ops host (SSH_CLIENT)
    assert p.returncode != 0 and "refusing to block" in p.stdout


def _generate_traffic() -> None:
    flood = "".join(f'url = "{T.PUBLIC_URL}news/2024/article-{i % 9 + 1:03d}.html"\noutput = "/dev/null"\n'
                    for i in range(150))
    run_in("internet", ["curl", "-s", "--interface", FLOODER, "-K", "-"], input=flood.encode())
    for path in ("wp-login.php", ".env", "cgi-bin/test.cgi", "index.html?id=1%27%20or%201=1", ".git/config"):
        run_in("internet", ["curl", "-s", "-o", "/dev/null", "--interface", PROBER, T.PUBLIC_URL + path])
    for _ in range(3):
        assert answered(QUIET)


def test_from_logs_proposes_the_flood_and_the_probe_then_applies(clean_lb1):
    _generate_traffic()
    # The internet's client address may be busy with other tests' request loops: keep it out.
    common = ("--site", "portal", "--since", "2m", "--exclude", T.CLIENT_ADDR)
    r = block("from-logs", *common, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    proposed = {p["cidr"]: p for p in res["proposals"]}
    assert {f"{FLOODER}/32", f"{PROBER}/32"} <= set(proposed)
    assert f"{QUIET}/32" not in proposed
    assert proposed[f"{FLOODER}/32"]["evidence"]["peak_per_minute"] >= 120
    assert "dotfile" in proposed[f"{PROBER}/32"]["evidence"]["probe_kinds"]
    assert set(res["logs"]) == {"web1", "web2"} and all(h["sha256"] for h in res["logs"].values())
    assert not any(p["cidr"].startswith("198.18.") for p in res["proposals"])
    assert res["applied"] is None and answered(FLOODER)  # proposing blocks nothing

    r = block("from-logs", *common, "--apply", "--ttl", "2m", "--reason", "lab test: from-logs")
    assert r.returncode == 0, r.stderr
    assert http_status(FLOODER) == 0 and http_status(PROBER) == 0
    assert answered(QUIET) and answered(None, T.VIP_URL)
    listed = elements()
    assert "lab test: from-logs" in listed[f"{FLOODER}/32"]["comment"]
