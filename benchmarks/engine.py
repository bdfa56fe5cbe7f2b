#!/usr/bin/env python3
"""Benchmark the backup engine against restic and borg on the same data, in one run.

    python benchmarks/engine.py [--scale 1.0] [--work .bench] [--tools resilience,restic,borg]

Generates a site with ../shared/bench/make_site.py (override with $MAKE_SITE), then for each
tool: full backup, no-change backup, 1 % churn backup (the same churned tree for every tool),
full restore; repository size and peak RSS (from wait4). Prints a table and the ratios to
restic, and writes them as JSON (--json-out). Page cache is warm for every tool alike.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
PASSWORD = "bench-password"
GOALS = {"full": 0.8, "nochange": 0.5, "churn": 0.5, "restore": 0.8, "size": 1.02, "rss": 1.0}


def make_site_script() -> Path:
    env = os.environ.get("MAKE_SITE")
    candidates = [Path(env)] if env else []
    candidates += [REPO_ROOT.parent / "shared" / "bench" / "make_site.py", REPO_ROOT / "../shared/bench/make_site.py"]
    for c in candidates:
        if c.exists():
            return c.resolve()
    sys.exit("make_site.py not found: set $MAKE_SITE")


def timed(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in bytes). Exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1) or (code == 1 and argv[0].endswith("restic")):
        sys.exit(f"{' '.join(argv)} failed ({code}): {err[-2000:]}")
    return dt, usage.ru_maxrss * 1024


def du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def warm(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                while fh.read(1 << 20):
                    pass


class Tool:
    name = ""

    def __init__(self, work: Path, site: Path):
        self.work, self.site = work, site
        self.repo = work / f"repo-{self.name}"
        self.env = dict(os.environ)

    def init(self) -> None: ...
    def backup(self, label: str) -> tuple[float, int]: ...
    def restore(self, target: Path) -> tuple[float, int]: ...


class Resilience(Tool):
    name = "resilience"

    def __init__(self, work: Path, site: Path):
        super().__init__(work, site)
        self.cfg = work / "resilience.yml"
        self.cfg.write_text(f"repository: {{url: {self.repo}}}\nevidence: {{dir: {work / 'evidence'}}}\n"
                            f"sites:\n  bench:\n    files: {{hosts: [localhost], path: {site}}}\n")
        self.env.update(RESILIENCE_PASSWORD=PASSWORD, RESILIENCE_STATE_DIR=str(work / "state"))
        exe = Path(sys.executable).parent / "resilience"
        self.cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "resilience"]

    def init(self) -> None:
        subprocess.run([*self.cmd, "--config", str(self.cfg), "init"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def backup(self, label: str) -> tuple[float, int]:
        return timed([*self.cmd, "--config", str(self.cfg), "backup", "--site", "bench"], env=self.env)

    def restore(self, target: Path) -> tuple[float, int]:
        return timed([*self.cmd, "--config", str(self.cfg), "restore", "--site", "bench", "--to", str(target)],
                     env=self.env)


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path, site: Path):
        super().__init__(work, site)
        self.env.update(RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY=str(self.repo),
                        RESTIC_CACHE_DIR=str(work / "restic-cache"))

    def init(self) -> None:
        subprocess.run(["restic", "init"], env=self.env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def backup(self, label: str) -> tuple[float, int]:
        return timed(["restic", "backup", "--quiet", str(self.site)], env=self.env)

    def restore(self, target: Path) -> tuple[float, int]:
        return timed(["restic", "restore", "latest", "--quiet", "--target", str(target)], env=self.env)


class Borg(Tool):
    name = "borg"

    def __init__(self, work: Path, site: Path):
        super().__init__(work, site)
        self.env.update(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=str(work / "borg-base"),
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        self.n = 0

    def init(self) -> None:
        subprocess.run(["borg", "init", "--encryption", "repokey-blake2", str(self.repo)], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def backup(self, label: str) -> tuple[float, int]:
        self.n += 1
        return timed(["borg", "create", f"{self.repo}::{label}-{self.n}", str(self.site)], env=self.env)

    def restore(self, target: Path) -> tuple[float, int]:
        target.mkdir(parents=True, exist_ok=True)
        return timed(["borg", "extract", f"{self.repo}::churn-{self.n}"], env=self.env, cwd=target)


TOOLS = {"resilience": Resilience, "restic": Restic, "borg": Borg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=REPO_ROOT / ".bench")
    ap.add_argument("--tools", default="resilience,restic,borg")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    names = [t for t in args.tools.split(",") if t]
    for t in names:
        if t != "resilience" and not shutil.which(t):
            sys.exit(f"{t} not installed: apt-get install -y {'borgbackup' if t == 'borg' else t}")
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    site = work / "site"
    gen = make_site_script()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(gen), str(site), "--scale", str(args.scale)], check=True)
    data_bytes = du(site)
    files = sum(len(f) for _, _, f in os.walk(site))
    print(f"site: {files} files, {data_bytes / 1e6:.0f} MB (generated in {time.perf_counter() - t0:.0f} s)")
    warm(site)
    tools = [TOOLS[n](work, site) for n in names]
    res: dict[str, dict[str, float]] = {t.name: {"rss": 0.0} for t in tools}
    for t in tools:
        t.init()
        for phase in ("full", "nochange"):
            dt, rss = t.backup(phase)
            res[t.name][phase] = dt
            res[t.name]["rss"] = max(res[t.name]["rss"], rss)
            print(f"  {t.name:<11} {phase:<9} {dt:7.2f} s  {rss / 1e6:6.0f} MB RSS", flush=True)
    subprocess.run([sys.executable, str(gen), str(site), "--churn", "0.01", "--seed", "2"], check=True)
    warm(site)
    for t in tools:
        dt, rss = t.backup("churn")
        res[t.name]["churn"] = dt
        res[t.name]["rss"] = max(res[t.name]["rss"], rss)
        print(f"  {t.name:<11} churn     {dt:7.2f} s  {rss / 1e6:6.0f} MB RSS", flush=True)
    for t in tools:
        target = work / f"restore-{t.name}"
        dt, rss = t.restore(target)
        res[t.name]["restore"] = dt
        res[t.name]["rss"] = max(res[t.name]["rss"], rss)
        res[t.name]["size"] = du(t.repo)
        print(f"  {t.name:<11} restore   {dt:7.2f} s  {rss / 1e6:6.0f} MB RSS", flush=True)
    # Deleting a restored tree right before the next tool's restore would bill that tool for
    # the filesystem's discard work (this disk is mounted with `discard`): delete at the end.
    for t in tools:
        shutil.rmtree(work / f"restore-{t.name}", ignore_errors=True)

    cols = ["full", "nochange", "churn", "restore", "size", "rss"]
    print()
    print(f"{'tool':<12}" + "".join(f"{c:>12}" for c in cols))
    for name, r in res.items():
        cells = [f"{r[c]:.2f} s" if c not in ("size", "rss") else f"{r[c] / 1e6:.0f} MB" for c in cols]
        print(f"{name:<12}" + "".join(f"{x:>12}" for x in cells))
    ratios = {}
    if "restic" in res:
        print(f"\nratio to restic (goal){'':<2}" + "".join(f"{c:>12}" for c in cols))
        for name, r in res.items():
            if name == "restic":
                continue
            ratios[name] = {c: r[c] / res["restic"][c] for c in cols if res["restic"][c]}
            print(f"{name:<24}" + "".join(f"{ratios[name][c]:>12.2f}" for c in cols))
        print(f"{'goal (resilience)':<24}" + "".join(f"{GOALS[c]:>12.2f}" for c in cols))
    out = {"scale": args.scale, "files": files, "bytes": data_bytes, "results": res, "ratios_to_restic": ratios}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
