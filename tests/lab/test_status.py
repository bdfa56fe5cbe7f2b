"""``resilience status`` tells the truth about the lab: it is compared with what the lab's
hosts say when asked directly (inside their namespaces, not over the code path under test).

Reads only. The shared member-tests lock is held for the whole test so that no other test
isolates a member or fails a line over while the two views are taken.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resilience.lab import routing
from resilience.lab import topology as T
from resilience.lab.hosts import run_in

pytestmark = pytest.mark.lab
CONFIG = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "resilience.yml"
LOCK = "/var/lib/resilience-lab/member-tests.lock"


def _quarantined(host: str) -> bool:
    return run_in(host, ["nft", "list", "table", "inet", "resilience_quarantine"], check=False).returncode == 0


def _balancer_states() -> dict[str, str]:
    """Server -> operational state of the portal backend, straight from HAProxy's socket."""
    out = run_in("lb1", ["sh", "-c", "echo 'show servers state portal' | socat stdio /run/haproxy/admin.sock"]).stdout
    states = {}
    for line in out.splitlines():
        f = line.split()
        # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        if len(f) > 6 and f[1] == "portal":
            states[f[3]] = {"op": int(f[5]), "admin": int(f[6])}
    return states


def test_status_tells_the_truth_about_the_lab(lab):
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "resilience", "--config", str(CONFIG), "status", "--json"],
                           capture_output=True, text=True, timeout=60, check=False)
        elapsed = time.monotonic() - t0
        truth_q = {h: _quarantined(h) for h in T.WEB_HOSTS}
        truth_lb = _balancer_states()
        truth_line = routing.active_line()

    assert r.returncode in (0, 1), r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] is (r.returncode == 0)
    assert elapsed < 15, f"status took {elapsed:.1f}s"

    # The lab as every test leaves it: both members up, none quarantined, primary line active.
    assert truth_q == {"web1": False, "web2": False}
    assert all(s["op"] == 2 and s["admin"] == 0 for s in truth_lb.values()), truth_lb
    assert truth_line == "primary"

    members = res["sites"]["portal"]["members"]
    assert isinstance(members, list), members
    assert {m["host"]: m["quarantined"] for m in members} == truth_q
    assert {m["host"]: m["balancer_state"] for m in members} == {"web1": "UP", "web2": "UP"}
    assert not any(m["isolated"] for m in members)
    assert res["line"]["active"] == "primary" == res["line"]["primary"]
    assert res["ledger"]["ok"] is True

    # Whatever else needs attention (an old backup, no verify yet), it is not the members or
    # the line, and each reason is listed.
    assert not [a for a in res["attention"] if "isolated" in a or "line" in a or "members" in a]
    good = res["sites"]["portal"]["backup"]["last_good"]
    if good is not None:
        assert good["files"]["snapshot"] and good["age_s"] >= 0
