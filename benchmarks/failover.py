"""Failover time in the lab: from `lab fault line-down primary` until gw1's default route and
the upstream point at the standby line and the internet client gets the site again.

    sudo .venv/bin/python benchmarks/failover.py [--reps 5] [--switch-with ansible-playbook|runner]

Runs the real watcher (`resilience line watch --json`, lab config with its own evidence
folder), injects the fault, and polls gw1's default route, the internet's route to the public
prefix and `curl http://198.19.10.80/` from the internet namespace every 20 ms. After each
repetition the primary comes back and the watcher fails back (short hold). Also measures
the pieces: ansible-playbook's start-up, the switch playbook with nothing to do (both ways of
running it) and the upstream hook. Prints a table; --json prints the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resilience import lab as lab_api  # noqa: E402
from resilience.lab import faults  # noqa: E402
from resilience.lab import topology as T  # noqa: E402

VENV_BIN = Path(sys.executable).parent
LAB_CONFIG = REPO / "inventories" / "lab" / "resilience.yml"


def timed(argv: list[str], env: dict | None = None) -> float:
    t = time.monotonic()
    subprocess.run(argv, capture_output=True, check=True, env=env, cwd=REPO)
    return time.monotonic() - t


def pieces(cfg: Path, reps: int) -> dict[str, list[float]]:
    """Start-up costs, each measured ``reps`` times on the healthy lab (nothing to change)."""
    ap = str(VENV_BIN / "ansible-playbook")
    out: dict[str, list[float]] = {k: [] for k in (
        "ansible-playbook --version", "line_switch.yml no-op (ansible-playbook)",
        "line_switch.yml no-op (ansible-runner)", "upstream hook (resilience lab upstream)")}
    from resilience.config import load_config
    from resilience.control.switch import switch_gateway

    conf = load_config(cfg)
    for _ in range(reps):
        out["ansible-playbook --version"].append(timed([ap, "--version"]))
        conf.lines.switch_with = "ansible-playbook"
        t = time.monotonic()
        switch_gateway(conf, "line_switch.yml", "gw1", "primary")
        out["line_switch.yml no-op (ansible-playbook)"].append(time.monotonic() - t)
        conf.lines.switch_with = "runner"
        t = time.monotonic()
        switch_gateway(conf, "line_switch.yml", "gw1", "primary")
        out["line_switch.yml no-op (ansible-runner)"].append(time.monotonic() - t)
        out["upstream hook (resilience lab upstream)"].append(
            timed([str(VENV_BIN / "resilience"), "lab", "upstream", "primary"]))
    return out


class Watcher:
    def __init__(self, env: dict, hold: float, arm: bool):
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "resilience"), "line", "watch", "--json", "--failback-hold", str(hold)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait(lambda: any(e["event"] == "watching" for e in self.events), 120)
        if arm:
            self.wait(lambda: any(e["event"] == "armed" for e in self.events), 120)

    def _read(self) -> None:
        for text in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(text))

    @staticmethod
    def wait(pred, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise SystemExit("timed out waiting")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def last_switch(evidence: Path) -> dict:
    """How the last line-failover run's playbook ran (runner, armed?) and its step times."""
    runs: dict[str, list[dict]] = {}
    for text in (evidence / "ledger.jsonl").read_text().splitlines():
        rec = json.loads(text)
        if rec.get("type") == "run-start" and rec["action"] == "line-failover":
            runs[rec["run"]] = []
        elif rec.get("type") == "step" and rec["run"] in runs:
            runs[rec["run"]].append(rec)
    steps = {s["step"]: s for s in list(runs.values())[-1]}
    play = steps["playbook line_switch.yml"]["details"]
    return {"how": play.get("runner", "runner"), "playbook_s": play.get("elapsed_s"),
            "upstream_hook_s": steps["upstream"]["details"].get(
                "elapsed_s", steps["upstream"]["duration_s"])}


def one_failover(w: Watcher, settle: float) -> dict[str, float]:
    """Break the primary; time the gateway, the upstream and the client; let it fail back."""
    seen: dict[str, float] = {}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and "reachable" not in seen:
            if "gateway" in seen and "upstream" in seen:
                proc = lab_api.run_in("internet", ["curl", "-s", "-m", "0.5", "-o", "/dev/null",
                                                   "-w", "%{http_code}", T.PUBLIC_URL],
                                      check=False, timeout=5)
                if proc.stdout.strip() == "200":
                    seen["reachable"] = time.time()
            time.sleep(0.02)

    time.sleep(settle)  # the next switch's playbook is armed again (re-armed at each switch)
    n_events = len(w.events)
    t0 = time.time()
    faults.line_down("primary")
    t_fault = time.time()  # the drop rules are in place on both ends
    th = threading.Thread(target=client, daemon=True)
    th.start()
    end = time.monotonic() + 60
    while "reachable" not in seen and time.monotonic() < end:
        state = lab_api.line_state()
        for side in ("gateway", "upstream"):
            if state[side] == "standby" and side not in seen:
                seen[side] = time.time()
        time.sleep(0.02)
    stop.set()
    th.join()
    faults.line_up("primary")
    Watcher.wait(lambda: any(e["event"] == "failback" for e in w.events[n_events:]), 120)
    Watcher.wait(lambda: lab_api.active_line() == "primary", 30)
    new = w.events[n_events:]
    detect = next((e["decided"] for e in new if e["event"] == "failover"), None)
    return {"detect_s": (detect - t_fault) if detect else float("nan"),
            **{f"{k}_s": v - t_fault for k, v in seen.items()}, "fault_s": t_fault - t0}


def fmt(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    return (f"median {statistics.median(xs):5.2f}  min {min(xs):5.2f}  max {max(xs):5.2f}"
            f"  ({len(xs)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--switch-with", choices=["ansible-playbook", "runner"], default=None)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds between a failback and the next fault")
    ap.add_argument("--no-arm", action="store_true", help="cold ansible-playbook per switch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the lab)")
    # No `lab up` here: the lab is shared; only the hosts on the failover path must be healthy.
    hosts = lab_api.status()["hosts"]
    sick = [h for h in ("gw1", "isp1", "isp2", "internet", "lb1") if not hosts[h]["healthy"]]
    if sick:
        raise SystemExit(f"lab hosts not healthy: {', '.join(sick)} (sudo resilience lab up)")
    for ln in T.LINES:
        faults.line_up(ln)
    lab_api.set_active_line(T.DEFAULT_LINE)

    with tempfile.TemporaryDirectory(prefix="rsl-failover-") as tmp:
        data = yaml.safe_load(LAB_CONFIG.read_text())
        data["inventory"] = str(LAB_CONFIG.parent / data["inventory"])
        data["evidence"] = {"dir": f"{tmp}/evidence"}
        if args.no_arm:
            data["lines"]["arm"] = False
        if args.switch_with:
            data["lines"]["switch_with"] = args.switch_with
        cfg = Path(tmp) / "resilience.yml"
        cfg.write_text(yaml.safe_dump(data))
        env = {**os.environ, "RESILIENCE_CONFIG": str(cfg), "RESILIENCE_STATE_DIR": f"{tmp}/state",
               "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        costs = pieces(cfg, 3)
        load0 = os.getloadavg()[0]
        w = Watcher(env, args.hold, not args.no_arm)
        try:
            runs = []
            for _ in range(args.reps):
                runs.append(one_failover(w, args.settle))
                runs[-1].update(last_switch(Path(tmp) / "evidence"))
        finally:
            w.stop()
            for ln in T.LINES:
                faults.line_up(ln)
            lab_api.set_active_line(T.DEFAULT_LINE)
    result = {"switch_with": data["lines"]["switch_with"], "arm": data["lines"].get("arm", True),
              "policy": {
        k: data["lines"][k] for k in ("interval", "timeout", "down_after", "reliability")},
        "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)], "cpus": os.cpu_count(),
        "pieces_s": costs, "failovers": runs}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"switch with {result['switch_with']} (armed: {result['arm']}); policy {result['policy']}; "
          f"load average {result['load_avg'][0]} -> {result['load_avg'][1]} on {os.cpu_count()} cpus")
    print("start-up costs (s):")
    for k, v in costs.items():
        print(f"  {k:<44} {fmt(v)}")
    print("failover, seconds after line-down primary:")
    print("  rep  detected  gateway  upstream  client 200   playbook  hook  (how)")
    for i, r in enumerate(runs, 1):
        print(f"  {i:>3}  {r['detect_s']:8.2f}  {r.get('gateway_s', float('nan')):7.2f}  "
              f"{r.get('upstream_s', float('nan')):8.2f}  {r.get('reachable_s', float('nan')):10.2f}"
              f"   {r['playbook_s'] or float('nan'):8.2f}  {r['upstream_hook_s']:4.2f}  ({r['how']})")
    for k in ("detect_s", "gateway_s", "upstream_s", "reachable_s"):
        print(f"  {k:<12} {fmt([r.get(k, float('nan')) for r in runs])}")


if __name__ == "__main__":
    main()
