"""The tamper watch in the lab: integrity check, one round, the live watch (a touch is not
tampering), and the live watch with --auto-respond bringing a tampered member back without a
person. Every test that tampers or takes a member out holds the shared member-tests lock and
leaves the lab as it found it (members UP and unquarantined, sites pristine, the latest
portal snapshot matching the pristine site)."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from resilience.lab import faults, site
from resilience.lab import layout as L
from resilience.lab import topology as T

from .labtools import REPO, resilience_argv, run_cli, ssh

pytestmark = pytest.mark.lab
CONFIG = REPO / "inventories" / "lab" / "resilience.yml"
TAMPERED = {"index.html", *site.article_paths()[:faults.TAMPERED_ARTICLES]}
GOAL_OUT_S, GOAL_WHOLE_S = 2.0, 30.0


def cli(*args, timeout=600, config=CONFIG):
    return run_cli("--config", str(config), *args, timeout=timeout)


def balancer_states() -> dict[str, str]:
    """HAProxy's status of each portal server, read on the admin socket from the ops host
    (<lab>/hosts/lb1/run/admin.sock): no SSH in the timing loop."""
    sock = L.haproxy_socket()
    out = subprocess.run(["socat", "stdio", f"UNIX-CONNECT:{sock}"], input=b"show stat -1 4 -1\n",
                         capture_output=True, timeout=5, check=False).stdout.decode()
    from resilience.control.cluster import parse_show_stat

    return {h: s["status"] for h, s in parse_show_stat(out, "portal").items()}


def serves_pristine(host: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{T.host(host).address}/", timeout=2) as r:  # noqa: S310 - lab address
            return hashlib.sha256(r.read()).hexdigest() == site.index_sha256()
    except OSError:
        return False


def settle_lab() -> None:
    """Members pristine, unquarantined and UP; the latest snapshot equal to the pristine site."""
    for web in T.WEB_HOSTS:
        if not site.is_pristine(L.site_dir(web)):
            faults.untamper(web)
    status = json.loads(cli("cluster", "status", "--site", "portal", "--json").stdout)
    for m in status["sites"]["portal"]:
        if m["quarantined"] or not m["serving"]:
            r = cli("rejoin", m["host"], timeout=300)
            assert r.returncode == 0, r.stderr
    if cli("integrity", "check", "--site", "portal").returncode != 0:
        r = cli("backup", "--site", "portal", "--files-only")
        assert r.returncode == 0, r.stderr


@pytest.fixture
def pristine(member_lock_per_test):
    """A known starting point, restored after the test."""
    if cli("snapshots", "--site", "portal").returncode == 2:
        assert cli("init").returncode == 0
    snaps = json.loads(cli("snapshots", "--site", "portal", "--json").stdout).get("snapshots", [])
    if not any(s["kind"] == "files" for s in snaps):
        for web in T.WEB_HOSTS:
            faults.untamper(web)
        assert cli("backup", "--site", "portal").returncode == 0
    settle_lab()
    yield
    settle_lab()


class Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_config(tmp_path):
    """The lab config plus a webhook on 127.0.0.1 (the test's own HTTP server); yields
    (config path, list of received events)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Hook.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    data = yaml.safe_load(CONFIG.read_text())
    data["inventory"] = str(CONFIG.parent / data["inventory"])
    data["notify"] = {"webhooks": [{"url": f"http://127.0.0.1:{server.server_port}/hook?token=s3cr3t-token"}]}
    data["watch"] = {"interval": 300, "timeout": 3}
    cfg = tmp_path / "resilience.yml"
    cfg.write_text(yaml.safe_dump(data))
    yield cfg, Hook.received
    server.shutdown()


class LiveWatch:
    """`resilience watch` running as a process, its JSON events collected by a thread."""

    def __init__(self, config: Path, *args: str):
        self.proc = subprocess.Popen([*resilience_argv(), "--config", str(config), "watch", "--site", "portal",
                                      "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=REPO)
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def wait_for(self, kind: str, timeout: float, host: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e["kind"] == kind and (host is None or e.get("host") == host):
                    return e
            if self.proc.poll() is not None:
                raise AssertionError(f"watch exited {self.proc.returncode}: {self.proc.stderr.read()}")
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event within {timeout} s; events: {self.events}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(150)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def ledger_run(run_id: str) -> list[dict]:
    from resilience.evidence import Ledger

    return [r for r in Ledger(L.evidence_dir()).records() if r.get("run") == run_id]


def test_integrity_check_clean(pristine):
    r = cli("integrity", "check", "--site", "portal", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["clean"] and set(res["members"]) == {"web1", "web2"}
    assert all(m["compared"] > 100 and not m["error"] for m in res["members"].values())
    assert any(rec["type"] == "run-end" and rec["outcome"] == "ok" for rec in ledger_run(res["run"]))


def test_integrity_check_lists_what_a_tamper_changed(pristine):
    faults.tamper("web1")
    # Excluded paths have no baseline: a new cache file is not a finding.
    assert ssh("web1", "mkdir -p /var/www/portal/cache && echo x > /var/www/portal/cache/new.html").returncode == 0
    r = cli("integrity", "check", "--site", "portal", "--json")
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    w1, w2 = res["members"]["web1"], res["members"]["web2"]
    assert set(w1["modified"]) == TAMPERED and w1["added"] == ["uploads/shell.php"] and w1["removed"] == []
    assert w2["clean"]
    steps = [rec for rec in ledger_run(res["run"]) if rec["type"] == "step"]
    assert {s["host"]: s["outcome"] for s in steps} == {"web1": "failed", "web2": "ok"}
    # Human output lists the files; only web2 asked: clean.
    human = cli("integrity", "check", "--site", "portal", "--host", "web1")
    assert human.returncode == 1 and "added      uploads/shell.php" in human.stdout
    assert cli("integrity", "check", "--site", "portal", "--host", "web2").returncode == 0
    bad = cli("integrity", "check", "--site", "portal", "--host", "db9")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a member" in bad.stderr
    ssh("web1", "rm -rf /var/www/portal/cache/new.html")


def test_watch_once_detects_records_and_notifies(pristine, webhook_config):
    config, received = webhook_config
    faults.tamper("web1")
    r = cli("watch", "--site", "portal", "--once", "--json", config=config)
    assert r.returncode == 1, r.stderr
    res = json.loads(r.stdout)
    (finding,) = res["findings"]
    assert finding["host"] == "web1" and finding["source"] == "periodic comparison"
    assert set(finding["paths"]["modified"]) == TAMPERED and finding["paths"]["added"] == ["uploads/shell.php"]
    # The page check sees the defaced home page on web1 (digest) as an alarm too.
    assert any(k == "web:web1" for k in res["alarms"])
    recs = ledger_run(finding["run"])
    assert recs[0]["action"] == "tamper-watch"
    detect = next(x for x in recs if x.get("step") == "detect")
    assert detect["details"]["added"] == ["uploads/shell.php"]
    ev = next(e for e in received if e["event"] == "tamper-detected")
    assert ev["severity"] == "critical" and ev["details"]["host"] == "web1"
    assert "s3cr3t-token" not in json.dumps(recs) and "s3cr3t-token" not in r.stdout
    assert balancer_states()["web1"].startswith("UP")   # no --auto-respond: nothing taken out


def test_live_watch_touch_is_not_tampering(pristine):
    w = LiveWatch(CONFIG, "--interval", "300")
    try:
        w.wait_for("ready", 90)
        assert ssh("web1", "touch /var/www/portal/index.html /var/www/portal/news/2024/article-010.html"
                   ).returncode == 0
        ev = w.wait_for("touched", 20, host="web1")
        assert "content unchanged" in ev["summary"]
        # A real change right after is caught by the same stream.
        assert ssh("web1", "echo '<?php system($_GET[1]);' > /var/www/portal/uploads/x.php").returncode == 0
        found = w.wait_for("finding", 20, host="web1")
        assert found["paths"] == {"added": ["uploads/x.php"]} and found["source"] == "inotify"
        assert not [e for e in w.events if e["kind"] == "finding" and "index.html" in json.dumps(e)]
    finally:
        w.stop()
        ssh("web1", "rm -f /var/www/portal/uploads/x.php")


def test_reviewed_publish_is_not_tampering(pristine, tmp_path):
    """A publish moves the baseline: the live watch (auto-respond on) takes nothing out."""
    new = tmp_path / "site"
    site.write_site(new)
    (new / "news" / "2024" / "article-999.html").write_text("<html><body><main>notice 2024-117</main></body></html>")
    w = LiveWatch(CONFIG, "--auto-respond", "--interval", "300")
    try:
        w.wait_for("ready", 90)
        r = cli("publish", "--site", "portal", "--from", str(new), "--reviewer", "a", "--reviewer", "b",
                "--reviewer", "c", "-m", "watch test")
        assert r.returncode == 0, r.stderr
        # The swapped trees restart the streams; each then compares fully, finds the new
        # article, re-reads the snapshot list and moves to the publish's snapshot.
        moved = w.wait_for("baseline", 30)
        assert moved["summary"].startswith("baseline moved to snapshot")
        time.sleep(2)
        assert not [e for e in w.events if e["kind"] in ("finding", "alarm")], w.events
        assert all(s.startswith("UP") for s in balancer_states().values())
        assert cli("integrity", "check", "--site", "portal").returncode == 0
    finally:
        w.stop()
    # (pristine's teardown puts the pristine site back and snapshots it as the baseline)


def test_live_watch_auto_respond_restores_without_a_person(pristine, webhook_config, record_property):
    config, received = webhook_config
    w = LiveWatch(config, "--auto-respond")
    try:
        w.wait_for("ready", 90)
        t0 = time.monotonic()
        faults.tamper("web1")
        t_tampered = time.monotonic()
        t_out = t_whole = None
        deadline = t0 + 300
        while time.monotonic() < deadline:
            states = balancer_states()
            if t_out is None and states.get("web1", "").startswith("MAINT"):
                t_out = time.monotonic() - t0
            if t_out is not None and states.get("web1", "").startswith("UP") and \
                    site.is_pristine(L.site_dir("web1")) and serves_pristine("web1"):
                t_whole = time.monotonic() - t0
                break
            time.sleep(0.05)
        restored = w.wait_for("restored", 60, host="web1")
        timings = {"tamper_s": round(t_tampered - t0, 3), "out_of_traffic_s": t_out and round(t_out, 3),
                   "whole_again_s": t_whole and round(t_whole, 3), "response_s": restored.get("response_s"),
                   "take_out_after_detection_s": w.wait_for("finding", 1)["take_out_s"]}
        print("watch timings:", timings)
        for k, v in timings.items():
            record_property(k, v)
        assert t_out is not None and t_out <= 2 * GOAL_OUT_S, timings
        # The goal is 30 s; isolate and rejoin are Ansible playbooks that take 20-40 s each
        # on this shared machine: the bound is loose, the numbers are recorded.
        assert t_whole is not None, timings
        finding = w.wait_for("finding", 1, host="web1")
        assert finding["taken_out"] and finding["source"] == "inotify"
        recs = ledger_run(finding["run"])
        steps = [x["step"] for x in recs if x["type"] == "step"]
        assert steps[:4] == ["detect", "take out of traffic", "notify", "respond"]
        assert recs[-1]["type"] == "run-end" and recs[-1]["outcome"] == "ok"
        assert {e["event"] for e in received} >= {"tamper-detected", "tamper-resolved"}
        assert balancer_states()["web2"].startswith("UP")
    finally:
        w.stop()


def test_no_auto_respond_against_the_last_serving_member(pristine, webhook_config):
    config, received = webhook_config
    sock = L.haproxy_socket()

    def admin(cmd: str) -> None:
        subprocess.run(["socat", "stdio", f"UNIX-CONNECT:{sock}"], input=cmd.encode() + b"\n",
                       capture_output=True, timeout=5, check=True)

    admin("set server portal/web2 state maint")
    try:
        faults.tamper("web1")
        r = cli("watch", "--site", "portal", "--once", "--auto-respond", "--json", config=config)
        assert r.returncode == 1, r.stderr
        res = json.loads(r.stdout)
        assert res["findings"][0]["taken_out"] is False
        assert any(e["kind"] == "alarm" and "alarm only" in e["summary"] for e in res["events"])
        assert balancer_states()["web1"].startswith("UP")
        assert any(e["event"] == "tamper-detected" for e in received)
    finally:
        admin("set server portal/web2 state ready")
        deadline = time.monotonic() + 20
        while not balancer_states()["web2"].startswith("UP") and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(autouse=True)
def _no_stray_watchers():
    yield
    # Every stream's inotifywait ends with the watch (killed when our ssh stdin closes).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [h for h in T.WEB_HOSTS if ssh(h, "pgrep -x inotifywait >/dev/null && echo y || true").stdout.strip()]
        if not left:
            return
        time.sleep(0.5)
    pytest.fail(f"inotifywait left running on {left}")


