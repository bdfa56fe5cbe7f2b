"""kill -9 at random moments never breaks the repository; concurrent backups are safe."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..fsutil import describe
from .engine_helpers import write_config

PW = "crash-test-pass"


def make_site(root: Path, seed: int, files: int = 250) -> None:
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i % 17}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([200, 5_000, 60_000, 300_000, 1_500_000])
        (d / f"f{i}.bin").write_bytes(rng.randbytes(size))


def cli(cfg: Path, *args: str, state: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_PASSWORD=PW, RESILIENCE_STATE_DIR=str(state))
    return subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), *args], env=env,
                          capture_output=True, text=True, check=False)


MARK = f"resilience-crash-test-{os.getpid()}"


def marked_processes() -> list[int]:
    """Pids of processes (backup parents or their workers) started by these tests."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if MARK.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    out.append(int(pid))
            except OSError:
                continue
    return out


def packs_of(repo: Path) -> list[Path]:
    return list((repo / "data").glob("*/*"))


def start_backup(cfg: Path, state: Path, site: str = "portal", processes: str = "auto") -> subprocess.Popen:
    env = dict(os.environ, RESILIENCE_PASSWORD=PW, RESILIENCE_STATE_DIR=str(state), RESILIENCE_PROCESSES=processes,
               RESILIENCE_CRASH_MARK=MARK)
    return subprocess.Popen([sys.executable, "-m", "resilience", "--config", str(cfg), "backup", "--site", site,
                             "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_at_random_points(tmp_path):
    site = tmp_path / "site"
    make_site(site, 1, files=150)
    cfg = write_config(tmp_path, site, tmp_path / "repo")
    assert cli(cfg, "init", state=tmp_path).returncode == 0
    # How long does one full backup take here? Kill within that window.
    (tmp_path / "probe").mkdir()
    probe_cfg = write_config(tmp_path / "probe", site, tmp_path / "probe-repo")
    cli(probe_cfg, "init", state=tmp_path)
    t0 = time.monotonic()
    assert cli(probe_cfg, "backup", "--site", "portal", state=tmp_path).returncode == 0
    full = time.monotonic() - t0
    rng = random.Random(42)
    killed = 0
    adopted = 0
    for i in range(7):
        # Each round rewrites the site, so the killed backup has as much work as the probe.
        make_site(site, 100 + i, files=150)
        # Alternate the two ways of reading: worker threads, and worker processes (whose
        # workers must die with their parent).
        proc = start_backup(cfg, tmp_path, processes="1" if i % 2 else "0")
        if i % 3 == 0:
            # Some rounds kill right after the first pack is stored, so that there is always
            # something for the next backup to adopt (timing alone is at the mercy of load).
            packs = set(packs_of(tmp_path / "repo"))
            deadline = time.monotonic() + 60
            while proc.poll() is None and set(packs_of(tmp_path / "repo")) <= packs and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.1))
        else:
            time.sleep(rng.uniform(0.05, max(0.1, full * 0.95)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        out, _err = proc.communicate()
        deadline = time.monotonic() + 10
        while marked_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not marked_processes(), "backup workers outlived their killed parent"
        v = cli(cfg, "verify", state=tmp_path)
        assert v.returncode == 0, v.stdout + v.stderr
        # The next (completed) backup adopts whatever the killed one had stored.
        done = cli(cfg, "backup", "--site", "portal", "--json", state=tmp_path)
        assert done.returncode == 0, done.stderr
        adopted += json.loads(done.stdout)["results"][0]["orphan_packs_adopted"]
    assert killed >= 3
    assert adopted > 0, f"no killed backup left packs to adopt (killed {killed})"
    v = cli(cfg, "verify", "--read-data", state=tmp_path)
    assert v.returncode == 0, v.stdout
    r = cli(cfg, "restore", "--site", "portal", "--to", str(tmp_path / "out"), state=tmp_path)
    assert r.returncode == 0, r.stderr
    assert describe(tmp_path / "out") == describe(site)


def test_two_backups_at_once_into_one_repository(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_site(a, 2, files=150)
    make_site(b, 3, files=150)
    cfg = write_config(tmp_path, a, tmp_path / "repo", extra="""\
  # second site appended below
""")
    text = cfg.read_text().replace("retention:", f"  other:\n    files: {{hosts: [localhost], path: {b}}}\nretention:")
    cfg.write_text(text)
    assert cli(cfg, "init", state=tmp_path).returncode == 0
    p1, p2 = start_backup(cfg, tmp_path, "portal"), start_backup(cfg, tmp_path, "other")
    o1, e1 = p1.communicate()
    o2, e2 = p2.communicate()
    assert p1.returncode == 0, e1
    assert p2.returncode == 0, e2
    v = cli(cfg, "verify", "--read-data", state=tmp_path)
    assert v.returncode == 0, v.stdout
    for name, src in (("portal", a), ("other", b)):
        r = cli(cfg, "restore", "--site", name, "--to", str(tmp_path / f"out-{name}"), state=tmp_path)
        assert r.returncode == 0, r.stderr
        assert describe(tmp_path / f"out-{name}") == describe(src)
