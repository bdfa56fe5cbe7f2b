"""Tamper watch in the lab: from `lab fault tamper web1` (with `resilience watch --site portal
--auto-respond` running) until web1 receives no traffic, and until the site is whole again.

    sudo .venv/bin/python benchmarks/watch.py [--reps 3] [--json]

Each repetition: the lab settled (sites pristine, members UP, unquarantined); the real
watcher started (lab config, its own evidence folder) and ready; the fault injected; then
every 20 ms: HAProxy's state of web1 (admin socket, read from the ops host), the home page
through the VIP (a defaced body counts as an exposure), web1's tree on disk, and web1's home
page directly. Measured from the injection:

- ``out``: HAProxy reports web1 MAINT (it receives no new traffic) — goal 2 s;
- ``restored``: web1's tree is the pristine site again (files restored from the snapshot);
- ``whole``: web1 UP on the balancer and serving the pristine home page — goal 30 s;
- ``defaced_via_vip``: defaced home pages the VIP served before web1 was out.

Then the tamper runbook's steps (from the evidence) show where the time went. Holds the
shared member-tests lock (/var/lib/resilience-lab/member-tests.lock) for every repetition.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resilience.control.cluster import parse_show_stat  # noqa: E402
from resilience.evidence import Ledger  # noqa: E402
from resilience.lab import faults, site  # noqa: E402
from resilience.lab import layout as L  # noqa: E402
from resilience.lab import topology as T  # noqa: E402

VENV_BIN = Path(sys.executable).parent
LAB_CONFIG = REPO / "inventories" / "lab" / "resilience.yml"
LOCK = Path("/var/lib/resilience-lab/member-tests.lock")
HOST = "web1"


def cli(cfg: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "resilience"), "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, check=False)


def states() -> dict[str, str]:
    out = subprocess.run(["socat", "stdio", f"UNIX-CONNECT:{L.haproxy_socket()}"], input=b"show stat -1 4 -1\n",
                         capture_output=True, timeout=5, check=False).stdout.decode()
    return {h: s["status"] for h, s in parse_show_stat(out, "portal").items()}


def home_sha(address: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{address}/", timeout=1) as r:  # noqa: S310 - lab address
            return hashlib.sha256(r.read()).hexdigest()
    except OSError:
        return None


def settle(cfg: Path) -> None:
    for web in T.WEB_HOSTS:
        if not site.is_pristine(L.site_dir(web)):
            faults.untamper(web)
    for m in json.loads(cli(cfg, "cluster", "status", "--site", "portal", "--json").stdout)["sites"]["portal"]:
        if m["quarantined"] or not m["serving"]:
            r = cli(cfg, "rejoin", m["host"])
            if r.returncode:
                sys.exit(f"rejoin {m['host']} failed: {r.stderr}")
    if cli(cfg, "integrity", "check", "--site", "portal").returncode != 0:
        cli(cfg, "backup", "--site", "portal", "--files-only")


def one(cfg: Path, evidence: Path) -> dict:
    settle(cfg)
    proc = subprocess.Popen([str(VENV_BIN / "resilience"), "--config", str(cfg), "watch", "--site", "portal",
                             "--auto-respond", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    events: list[dict] = []
    threading.Thread(target=lambda: events.extend(json.loads(ln) for ln in proc.stdout if ln.strip()),
                     daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while not any(e["kind"] == "ready" for e in events):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"watch did not start: {proc.stderr.read() if proc.poll() is not None else 'timeout'}")
            time.sleep(0.05)
        pristine = site.index_sha256()
        vip, direct = "198.18.0.80", T.host(HOST).address
        t0 = time.monotonic()
        faults.tamper(HOST)
        r: dict = {"out": None, "restored": None, "whole": None, "defaced_via_vip": 0}
        while time.monotonic() - t0 < 600:
            now = time.monotonic() - t0
            st = states().get(HOST, "")
            if r["out"] is None:
                if st.startswith("MAINT"):
                    r["out"] = now
                elif home_sha(vip) not in (pristine, None):
                    r["defaced_via_vip"] += 1
            if r["restored"] is None and site.is_pristine(L.site_dir(HOST)):
                r["restored"] = now
            if r["restored"] is not None and st.startswith("UP") and home_sha(direct) == pristine:
                r["whole"] = now
                break
            time.sleep(0.02)
        deadline = time.monotonic() + 120
        while not any(e["kind"] in ("restored", "alarm") and e.get("host") == HOST for e in events):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        finding = next((e for e in events if e["kind"] == "finding"), {})
        r["detect_to_maint"] = finding.get("take_out_s")
        r["steps"] = runbook_steps(evidence, finding.get("run"))
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    finally:
        proc.terminate()
        proc.wait(180)
        settle(cfg)


def runbook_steps(evidence: Path, watch_run: str | None) -> dict[str, float]:
    if not watch_run:
        return {}
    recs = list(Ledger(evidence).records())
    respond = next((x for x in recs if x.get("run") == watch_run and x.get("step") == "respond"), None)
    rb = (respond or {}).get("details", {}).get("runbook_run")
    return {x["step"]: round(x["duration_s"], 2) for x in recs
            if rb and x.get("run") == rb and x["type"] == "step" and not x["step"].startswith(("task ", "playbook "))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    evidence = Path(tempfile.mkdtemp(prefix="rsl-watch-bench-"))
    data = yaml.safe_load(LAB_CONFIG.read_text())
    data["inventory"] = str(LAB_CONFIG.parent / data["inventory"])
    data["evidence"] = {"dir": str(evidence)}
    data["watch"] = {"interval": 300}
    cfg = evidence / "resilience.yml"
    cfg.write_text(yaml.safe_dump(data))
    runs = []
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    for i in range(args.reps):
        with open(LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                runs.append(one(cfg, evidence))
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        if not args.json:
            print(f"rep {i + 1}: {json.dumps(runs[-1])}", flush=True)
    summary = {k: statistics.median([r[k] for r in runs if r[k] is not None] or [float("nan")])
               for k in ("out", "restored", "whole", "detect_to_maint", "defaced_via_vip")}
    if args.json:
        print(json.dumps({"runs": runs, "median": summary}, indent=2))
        return
    print(f"\n{'measure':<34}{'median':>10}   runs")
    labels = {"out": "web1 out of traffic (MAINT), s", "detect_to_maint": "  of which detection -> MAINT, s",
              "restored": "web1 files pristine again, s", "whole": "site whole (web1 UP, pristine), s",
              "defaced_via_vip": "defaced pages served via the VIP"}
    for k, label in labels.items():
        print(f"{label:<34}{summary[k]:>10.3f}   {', '.join(str(r[k]) for r in runs)}")
    print("\ntamper runbook steps (s), last run:")
    for step, d in runs[-1]["steps"].items():
        print(f"  {step:<28}{d:>8.2f}")


if __name__ == "__main__":
    main()
