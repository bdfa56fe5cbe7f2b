"""A command whose run fails sends its result to the configured webhook (a real HTTP server on
127.0.0.1); a successful one does not, and a dead webhook never changes the exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .test_notify_formats import Hook

BIN = Path(sys.executable).parent / "resilience"


def config(tmp_path: Path, url: str, repo: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text("hello")
    cfg = tmp_path / "resilience.yml"
    cfg.write_text(f"repository: {{url: {repo}}}\n"
                   f"evidence: {{dir: {tmp_path / 'evidence'}}}\n"
                   f"notify: {{webhooks: [{{url: '{url}/hook', format: json}}], events: [failure]}}\n"
                   f"sites:\n  portal:\n    files: {{hosts: [localhost], path: {site}}}\n")
    return cfg


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_PASSWORD="pw", RESILIENCE_STATE_DIR=str(cfg.parent / "state"))
    return subprocess.run([str(BIN), "--config", str(cfg), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_failed_run_is_notified_and_a_good_one_is_not(tmp_path):
    hook = Hook()
    try:
        cfg = config(tmp_path, hook.url, tmp_path / "no-repository-here")
        failed = cli(cfg, "backup", "--site", "portal")
        assert failed.returncode != 0
        assert len(hook.got) == 1
        path, body = hook.got[0]
        assert path == "/hook" and "backup" in str(body) and "pw" not in str(body)

        cfg = config(tmp_path, hook.url, tmp_path / "repo")
        assert cli(cfg, "init").returncode == 0
        assert cli(cfg, "backup", "--site", "portal").returncode == 0
        assert len(hook.got) == 1  # init and a good backup: nothing sent (events: [failure])
    finally:
        hook.close()


def test_a_dead_webhook_never_changes_the_exit_code(tmp_path):
    cfg = config(tmp_path, "http://127.0.0.1:9", tmp_path / "missing")  # discard port: refused
    quiet = cfg.with_name("quiet.yml")
    quiet.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if not ln.startswith("notify:")))
    expected = cli(quiet, "backup", "--site", "portal")
    res = cli(cfg, "backup", "--site", "portal")
    assert expected.returncode != 0 and res.returncode == expected.returncode
    assert "notification" in res.stderr and "notification" not in expected.stderr
    assert "Traceback" not in res.stderr
