#!/usr/bin/env python3
"""Benchmark remote site backups and restores in the lab (needs root and `resilience lab up`).

    python benchmarks/remote.py [--scale 1.0] [--work .bench-remote]

Loads a site made by ../shared/bench/make_site.py onto web1 (/var/www/bench), then measures in
one run: a raw `ssh web1 tar -cf - … > /dev/null` (the transport's ceiling), resilience's first
backup from web1 and its no-change backup, a delta restore of web1 after 10 files were
tampered with, and a full restore onto an empty folder of web2 against a raw
`tar | ssh web2 tar -x`. Prints seconds and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from resilience.lab import layout as L  # noqa: E402
from resilience.lab.keys import ssh_argv  # noqa: E402

sys.path.insert(0, str(HERE))
from engine import make_site_script  # noqa: E402


def timed(argv, **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, **kw)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=HERE.parent / ".bench-remote")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src = L.www_dir("web1") / "bench"
    shutil.rmtree(src, ignore_errors=True)
    for host in ("web2",):
        for name in ("bench-empty", "bench-raw"):
            shutil.rmtree(L.www_dir(host) / name, ignore_errors=True)
    subprocess.run([sys.executable, str(make_site_script()), str(src), "--scale", str(args.scale)], check=True)
    files = sum(len(f) for _, _, f in os.walk(src))
    size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(src) for f in fs)
    print(f"site on web1:/var/www/bench: {files} files, {size / 1e6:.0f} MB")
    env = dict(os.environ, RESILIENCE_PASSWORD="bench", RESILIENCE_STATE_DIR=str(work / "state"))
    exe = Path(sys.executable).parent / "resilience"
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "resilience"]

    def config(name: str, host: str, path: str) -> Path:
        cfg = work / f"{name}.yml"
        cfg.write_text(f"repository: {{url: {work / 'repo'}}}\n"
                       f"inventory: {HERE.parent / 'inventories/lab/hosts.yml'}\n"
                       f"ssh: {{identity_file: {L.client_key()}, known_hosts: {L.known_hosts()}}}\n"
                       f"evidence: {{dir: {work / 'evidence'}}}\n"
                       f"sites:\n  bench:\n    files: {{hosts: [{host}], path: {path}}}\n")
        return cfg

    backup_cfg = config("backup", "web1", "/var/www/bench")
    empty_cfg = config("empty", "web2", "/var/www/bench-empty")
    subprocess.run([*cli, "--config", str(backup_cfg), "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    res: dict[str, float] = {}
    res["raw_ssh_tar"] = timed([*ssh_argv("web1"), "tar -cf - -C /var/www bench"], stdout=subprocess.DEVNULL)
    res["first_backup"] = timed([*cli, "--config", str(backup_cfg), "backup", "--site", "bench"], env=env)
    res["nochange_backup"] = timed([*cli, "--config", str(backup_cfg), "backup", "--site", "bench"], env=env)
    # Tamper with 10 files on web1, then restore it.
    victims = sorted(str(p.relative_to(src)) for p in (src / "html").rglob("*.html"))[:10]
    for v in victims:
        with open(src / v, "a") as f:
            f.write("<p>defaced</p>")
    res["delta_restore_10"] = timed([*cli, "--config", str(backup_cfg), "restore", "--site", "bench", "--host",
                                     "web1", "--files-only", "--yes"], env=env, stdout=subprocess.DEVNULL)
    res["full_restore_empty_member"] = timed([*cli, "--config", str(empty_cfg), "restore", "--site", "bench",
                                              "--host", "web2", "--files-only", "--yes"], env=env,
                                             stdout=subprocess.DEVNULL)
    raw_restore = (f"tar -cf - -C {src} . | {' '.join(ssh_argv('web2'))} "
                   "'mkdir -p /var/www/bench-raw && tar -xf - -C /var/www/bench-raw'")
    res["raw_tar_to_member"] = timed(["sh", "-c", raw_restore])
    ratios = {
        "first_backup_throughput_vs_raw": res["raw_ssh_tar"] / res["first_backup"],
        "full_restore_vs_raw": res["full_restore_empty_member"] / res["raw_tar_to_member"],
    }
    for k, v in res.items():
        print(f"{k:<28} {v:7.2f} s")
    for k, v in ratios.items():
        print(f"{k:<34} {v:5.2f}")
    print("goals: throughput ≥ 0.80, no-change ≤ 2 s, delta restore ≤ 2 s, full restore ≤ 1.20 × raw")
    if args.json_out:
        args.json_out.write_text(json.dumps({"files": files, "bytes": size, "seconds": res, "ratios": ratios}, indent=2))
    shutil.rmtree(src, ignore_errors=True)
    for name in ("bench-empty", "bench-raw"):
        shutil.rmtree(L.www_dir("web2") / name, ignore_errors=True)


if __name__ == "__main__":
    main()
