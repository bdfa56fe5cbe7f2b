"""Isolate and rejoin members of the lab's portal through the real HAProxy, nftables and
Ansible; every test puts the members back (rejoin) whatever happens."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("member_lock")]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "inventories/lab/resilience.yml"
INVENTORY = ROOT / "inventories/lab/hosts.yml"
BIN = Path(sys.executable).parent
VIP, WEB1 = "198.18.0.80", "198.18.0.11"


def cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "resilience"), "--config", str(CONFIG), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)


def cli_json(*args: str, env: dict | None = None) -> dict:
    proc = cli(*args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def playbook(name: str, *args: str) -> subprocess.CompletedProcess:
    """ansible-playbook alone, as an operator would run it."""
    env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_NOCOLOR="True")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(INVENTORY), str(ROOT / "playbooks" / name), *args],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    out = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", proc.stdout, re.M):
        out[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return out


def lab_cfg():
    from resilience.config import load_config

    return load_config(CONFIG)


def members() -> dict[str, dict]:
    from resilience.control.cluster import members as m

    return {x["host"]: x for x in m(lab_cfg(), "portal")}


def run_in(host: str, command: str) -> str:
    from resilience import lab

    return lab.run_in(host, ["sh", "-c", command]).stdout


def admin_states() -> str:
    """The admin state column of every server (drain/maint), not the timers."""
    text = run_in("lb1", "echo 'show servers state' | socat stdio /run/haproxy/admin.sock")
    return "\n".join(" ".join(ln.split()[i] for i in (1, 3, 6)) for ln in text.splitlines()
                     if len(ln.split()) > 6 and not ln.startswith("#"))


def reset_members() -> None:
    """Put every portal member back: quarantine off, READY (the state of a fresh lab)."""
    for host in ("web1", "web2"):
        run_in(host, "nft delete table inet resilience_quarantine 2>/dev/null; rm -f /run/resilience-quarantine.nft /run/resilience/quarantine.nft; true")
        run_in("lb1", f"echo 'set server portal/{host} state ready' | socat stdio /run/haproxy/admin.sock")
    run_in("lb1", "echo 'show servers state' | socat stdio /run/haproxy/admin.sock > /run/haproxy/server-state")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(m["serving"] for m in members().values()):
        time.sleep(0.5)


@pytest.fixture
def clean_members(lab):
    reset_members()
    yield
    reset_members()


class RequestLoop:
    """GETs through the VIP in a thread, one new connection each, counting failures."""

    def __init__(self):
        self.ok, self.failed, self.served_by, self.errors = 0, 0, set(), []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection(VIP, 80, timeout=5)
            try:
                conn.request("GET", "/healthz", headers={"Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                    self.served_by.add(resp.getheader("X-Served-By"))
                else:
                    self.failed += 1
                    self.errors.append(resp.status)
            except OSError as exc:
                self.failed += 1
                self.errors.append(repr(exc))
            finally:
                conn.close()
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def served_by(n: int = 20) -> set[str]:
    seen = set()
    for _ in range(n):
        conn = http.client.HTTPConnection(VIP, 80, timeout=5)
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        seen.add(resp.getheader("X-Served-By"))
        conn.close()
    return seen


def http_reachable(address: str) -> bool:
    conn = http.client.HTTPConnection(address, 80, timeout=2)
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def test_isolate_under_load_then_rejoin(clean_members):
    from resilience.control.ssh import SSH, target_for

    with RequestLoop() as loop:
        res = cli_json("isolate", "web1", "--reason", "lab test: tampering drill")
        time.sleep(1)
    assert loop.failed == 0, loop.errors[:5]
    assert loop.ok > 20
    assert res["balancer"]["portal"]["after"] == "MAINT" and res["quarantined"] is True

    # Cut off from the ops host's HTTP, still reachable by its SSH.
    assert not http_reachable(WEB1)
    with SSH() as ssh:
        assert ssh.run(target_for(lab_cfg(), "web1"), "hostname", timeout=30).stdout.strip() == b"web1"
    m = members()
    assert m["web1"]["balancer_state"] == "MAINT" and m["web1"]["quarantined"] is True
    assert served_by(10) == {"web2"}

    # The logs are in the evidence, with digests that match the stored copies.
    paths = {x["path"] for x in res["logs"]}
    assert {"/var/log/auth.log", "/var/log/nginx/portal.access.log"} <= paths
    evidence = Path(lab_cfg().evidence.dir)
    for x in res["logs"]:
        assert hashlib.sha256((evidence / x["artifact"]).read_bytes()).hexdigest() == x["sha256"]
    assert cli("evidence", "verify").returncode == 0

    # Again: nothing changes. The last serving member is refused, with one line, exit 2.
    assert cli_json("isolate", "web1", "--reason", "again")["changed"] is False
    refused = cli("isolate", "web2", "--reason", "would take the site down")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "last serving member" in refused.stderr
    assert members()["web2"]["serving"]

    # MAINT survives an HAProxy reload (the playbook saved the server-state file).
    run_in("lb1", "kill -USR2 $(cat /run/haproxy/haproxy.pid)")
    time.sleep(2)
    assert members()["web1"]["balancer_state"] == "MAINT"

    # A member that does not serve the genuine site is refused: its quarantine goes back on.
    from resilience.lab import faults

    faults.tamper("web1")
    try:
        refused = cli("rejoin", "web1")
        assert refused.returncode == 1 and "does not serve the expected content" in refused.stderr, refused.stderr
        assert "quarantine restored" in refused.stderr and "Traceback" not in refused.stderr
        m = members()
        assert m["web1"]["balancer_state"] == "MAINT" and m["web1"]["quarantined"] is True
        assert not http_reachable(WEB1)
    finally:
        faults.untamper("web1")

    with RequestLoop() as loop:
        back = cli_json("rejoin", "web1")
        time.sleep(1)
    assert loop.failed == 0, loop.errors[:5]
    assert back["changed"] is True and back["quarantined"] is False
    assert back["balancer"]["portal"]["after"] == "UP"
    assert served_by(20) == {"web1", "web2"}
    assert cli_json("rejoin", "web1")["changed"] is False

    # READY survives a reload too.
    run_in("lb1", "kill -USR2 $(cat /run/haproxy/haproxy.pid)")
    time.sleep(2)
    assert members()["web1"]["balancer_state"].startswith("UP")


def test_dry_run_changes_nothing(clean_members):
    before = (admin_states(), run_in("web1", "nft list ruleset"))
    # As from cron: the venv's bin folder is not on PATH (ansible-runner used to fail then).
    cron_env = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    res = cli_json("isolate", "web1", "--reason", "lab test: dry run", "--dry-run", env=cron_env)
    assert res["dry_run"] and res["would_change"] == {"balancer": ["portal"], "quarantine": True}
    assert {x["path"] for x in res["logs"]} >= {"/var/log/auth.log"}
    assert (admin_states(), run_in("web1", "nft list ruleset")) == before
    res = cli_json("rejoin", "web1", "--dry-run")
    assert res["would_change"] == {"quarantine": False, "balancer": []}
    assert (admin_states(), run_in("web1", "nft list ruleset")) == before
    assert served_by(10) == {"web1", "web2"}


def test_playbooks_run_alone_idempotent_and_check_mode_is_safe(clean_members, tmp_path):
    first = recap(playbook("collect_logs.yml", "-e", "target=web2", "-e", f"collect_dest={tmp_path}"))
    assert first["web2"]["failed"] == 0 and first["web2"]["changed"] == 0
    assert (tmp_path / "web2/var/log/auth.log").is_file()

    before = (admin_states(), run_in("web2", "nft list ruleset"))
    check = recap(playbook("isolate.yml", "-e", "target=web2", "--check", "--diff"))
    assert check["lb1"]["changed"] == 0
    assert (admin_states(), run_in("web2", "nft list ruleset")) == before

    assert recap(playbook("isolate.yml", "-e", "target=web2"))["web2"]["changed"] > 0
    again = recap(playbook("isolate.yml", "-e", "target=web2"))
    assert again["lb1"]["changed"] == 0 and again["web2"]["changed"] == 0
    assert members()["web2"]["balancer_state"] == "MAINT"

    isolated = (admin_states(), run_in("web2", "nft list ruleset"))
    playbook("rejoin.yml", "-e", "target=web2", "--check")
    assert (admin_states(), run_in("web2", "nft list ruleset")) == isolated

    assert recap(playbook("rejoin.yml", "-e", "target=web2"))["lb1"]["changed"] > 0
    again = recap(playbook("rejoin.yml", "-e", "target=web2"))
    assert again["lb1"]["changed"] == 0 and again["web2"]["changed"] == 0
    assert served_by(20) == {"web1", "web2"}


def _inventory_with_known_hosts(tmp_path: Path, known_hosts: str):
    inv = yaml.safe_load(INVENTORY.read_text())
    (tmp_path / "known_hosts").write_text(known_hosts)
    args = inv["all"]["vars"]["ansible_ssh_common_args"]
    inv["all"]["vars"]["ansible_ssh_common_args"] = re.sub(r"UserKnownHostsFile=\S+",
                                                           f"UserKnownHostsFile={tmp_path / 'known_hosts'}", args)
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inv))
    return lab_cfg().model_copy(update={"inventory": tmp_path / "hosts.yml"})


@pytest.mark.parametrize("case", ["unknown", "changed"])
def test_unknown_or_changed_host_key_is_refused(lab, tmp_path, case):
    from resilience.control.ansible import run_playbook
    from resilience.errors import PlaybookError

    real = Path("/var/lib/resilience-lab/ssh/known_hosts").read_text().splitlines()
    if case == "unknown":
        known = ""
    else:  # web1's names with web2's key
        web1 = next(ln for ln in real if ln.split()[0].split(",")[0] == "web1")
        web2 = next(ln for ln in real if ln.split()[0].split(",")[0] == "web2")
        known = f"{web1.split()[0]} {' '.join(web2.split()[1:])}\n"
    cfg = _inventory_with_known_hosts(tmp_path, known)
    with pytest.raises(PlaybookError) as err:
        run_playbook(cfg, "ping", limit=["web1"], quiet=True)
    assert "web1 unreachable" in str(err.value)
    assert "host key" in str(err.value).lower()
    assert err.value.result.hosts["web1"]["unreachable"] == 1
    # Nothing was learned on first use.
    assert (tmp_path / "known_hosts").read_text() == known


def test_ctrl_c_cancels_the_playbook_and_is_recorded(clean_members):
    import signal

    from resilience.evidence import Ledger

    proc = subprocess.Popen([str(BIN / "resilience"), "--config", str(CONFIG), "rejoin", "web1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # inside the first playbook
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    ends = [r for r in Ledger(lab_cfg().evidence.dir).records() if r["type"] == "run-end" and r["action"] == "rejoin"]
    assert ends[-1]["outcome"] == "cancelled"
    leftover = subprocess.run(["pgrep", "-f", "ansible-playbook.*rejoin.yml"], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == ""
