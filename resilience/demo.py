"""``make demo``: the main job on the embedded default, no root and no lab needed.

Creates ``./demo/`` with a sample portal site, a local repository and a config, then runs the
real CLI: init, backup, change the site, backup again, diff, restore the first snapshot,
verify, and verify the evidence ledger. Running it again starts from scratch.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from .lab.site import write_site


def _run(cfg: Path, *args: str, env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "resilience", "--config", str(cfg), *args]
    print(f"\n$ resilience {' '.join(args)}", flush=True)
    proc = subprocess.run(argv, env=env, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: 'resilience {' '.join(args)}' exited {proc.returncode}")


def main(base: Path | None = None) -> None:
    base = (base or Path.cwd() / "demo").resolve()
    shutil.rmtree(base, ignore_errors=True)
    site = base / "site"
    base.mkdir(parents=True)
    write_site(site)
    os.symlink("index.html", site / "home.html")
    pw = base / "repo.pass"
    pw.write_text(secrets.token_urlsafe(24) + "\n")
    pw.chmod(0o600)
    cfg = base / "resilience.yml"
    cfg.write_text(
        "# The embedded default: a local site into a local repository (written by make demo).\n"
        "repository: {url: ./repo, password_file: ./repo.pass}\n"
        "evidence: {dir: ./evidence}\n"
        "sites:\n"
        f"  portal:\n    files: {{hosts: [localhost], path: {site}}}\n"
        "retention: {keep_daily: 7, keep_weekly: 4, keep_monthly: 12}\n"
    )
    env = dict(os.environ)
    env.pop("RESILIENCE_PASSWORD", None)
    env["RESILIENCE_STATE_DIR"] = str(base / "state")
    print(f"demo folder: {base}")
    _run(cfg, "config", "check", env=env)
    _run(cfg, "init", env=env)
    _run(cfg, "backup", "--site", "portal", "-v", env=env)
    # A day of publishing: the home page changes and a notice is added.
    index = site / "index.html"
    index.write_bytes(index.read_bytes().replace(b"</body>", b"<p>Notice: office hours changed.</p></body>"))
    (site / "news" / "2026-11-27-notice.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>通知</title></head>"
        "<body><h1>关于调整办公时间的通知</h1></body></html>\n", encoding="utf-8")
    _run(cfg, "backup", "--site", "portal", "-v", env=env)
    _run(cfg, "snapshots", env=env)
    first = _first_snapshot(cfg, env)
    _run(cfg, "diff", first, "latest", env=env)
    _run(cfg, "restore", "--site", "portal", "--snapshot", first, "--to", str(base / "restored"), env=env)
    _run(cfg, "verify", "--read-data", env=env)
    _run(cfg, "evidence", "show", env=env)
    _run(cfg, "evidence", "verify", env=env)
    print(f"\ndemo done: the first snapshot is restored in {base / 'restored'}")


def _first_snapshot(cfg: Path, env: dict[str, str]) -> str:
    import json

    out = subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), "snapshots", "--json"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["snapshots"][0]["short_id"]


if __name__ == "__main__":
    main()
