"""Run the line switch playbook: through ansible-runner (the project's wrapper), or directly
with ``ansible-playbook`` when the failover time matters more than streamed events.

Both run the same playbook (``lines.playbook``, default ``line_switch.yml``) with the same
inventory, strict host-key checking and an empty ansible.cfg of our own, limited to the
gateway, with ``-e line=NAME``; both record one step ``playbook line_switch.yml`` with the
per-host stats. ``lines.switch_with`` chooses (see docs/lines.md for the measured costs):

- ``runner``: :func:`resilience.control.ansible.run_playbook` (events → steps, progress);
- ``ansible-playbook``: one ``ansible-playbook`` process, its PLAY RECAP parsed; measured
  about 1 s faster per switch on this machine, which is what keeps a failover inside 3 s.

Ansible's own SSH connection reuse (``ControlPersist=60s`` in ``~/.ansible/cp``) is kept in
both: a watcher that switched once switches again without a new SSH handshake.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

from ..config import Config
from ..errors import PlaybookError, ResilienceError, UsageError
from ..evidence.redact import redact_text
from ..inventory import ansible_bin, ansible_env

_RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)"
                    r"\s+skipped=(\d+)")
_FATAL = re.compile(r"^(?:fatal|failed): \[([^\]]+)\].*?=> (\{.*\})\s*$")
_TASK = re.compile(r"^TASK \[(.*)\] \*+")


def switch_gateway(cfg: Config, playbook: str, host: str, line: str, *, check: bool = False,
                   run=None) -> dict:
    """Run the switch playbook on ``host`` for ``line``; return ``{"changed", "hosts",
    "how", "elapsed_s"}``. Raises PlaybookError when the host failed or was unreachable."""
    t0 = time.monotonic()
    how = getattr(cfg.lines, "switch_with", "runner") if cfg.lines else "runner"
    extravars = {"line": line, "gateway": host}
    if how == "runner":
        from .ansible import run_playbook

        res = run_playbook(cfg, playbook, limit=[host], extravars=extravars, check=check,
                           run=run, quiet=True)
        hosts, changed = res.hosts, res.changed
    else:
        hosts, changed = run_ansible_playbook(cfg, playbook, host, extravars, check=check,
                                              run=run)
    return {"changed": changed, "hosts": hosts, "how": how,
            "elapsed_s": round(time.monotonic() - t0, 3)}


def _playbook_path(cfg: Config, playbook: str) -> Path:
    from .ansible import playbook_path

    return playbook_path(cfg, playbook)


def parse_output(text: str) -> tuple[dict[str, dict[str, int]], list[dict]]:
    """Per-host stats from the PLAY RECAP and failures (host, task, msg) from ``fatal:``
    lines of ansible-playbook's default output (pure; unit-tested)."""
    hosts: dict[str, dict[str, int]] = {}
    failures: list[dict] = []
    task = None
    for ln in text.splitlines():
        m = _TASK.match(ln)
        if m:
            task = m.group(1)
            continue
        m = _FATAL.match(ln)
        if m:
            try:
                msg = str(json.loads(m.group(2)).get("msg", ""))
            except ValueError:
                msg = ""
            failures.append({"host": m.group(1), "task": task, "msg": redact_text(msg)[:300]})
            continue
        m = _RECAP.match(ln)
        if m:
            ok, changed, unreachable, failed, skipped = (int(x) for x in m.groups()[1:])
            hosts[m.group(1)] = {"ok": ok, "changed": changed, "failed": failed,
                                 "unreachable": unreachable, "skipped": skipped}
    return hosts, failures


def run_ansible_playbook(cfg: Config, playbook: str, host: str, extravars: dict, *,
                         check: bool = False, run=None, timeout: float = 120
                         ) -> tuple[dict[str, dict[str, int]], bool]:
    """Run ``ansible-playbook`` itself (no ansible-runner) and return (hosts, changed)."""
    path = _playbook_path(cfg, playbook)
    if cfg.inventory is None:
        raise UsageError(f"{cfg.source}: inventory: needed to run playbook {path.name}")
    env = ansible_env()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="resilience-ap-") as tmp:
        # Our own empty ansible.cfg: a stray one must not change how we connect.
        cfg_file = Path(tmp) / "ansible.cfg"
        cfg_file.write_text("[defaults]\n")
        env.update(ANSIBLE_CONFIG=str(cfg_file), ANSIBLE_STDOUT_CALLBACK="default",
                   ANSIBLE_TIMEOUT=str(int(max(1, cfg.ssh.connect_timeout))))
        argv = [ansible_bin("ansible-playbook"), "-i", str(cfg.inventory), str(path),
                "--limit", host, "-e", json.dumps(extravars)]
        if check:
            argv += ["--check", "--diff"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ResilienceError(f"playbook {path.name} timed out after {timeout:g}s") from None
    hosts, failures = parse_output(proc.stdout)
    changed = any(h["changed"] for h in hosts.values())
    bad = failures or any(h["failed"] or h["unreachable"] for h in hosts.values()) \
        or proc.returncode != 0 or host not in hosts
    if run is not None:
        run.record_step(f"playbook {path.name}", host=host, outcome="failed" if bad else "ok",
                        details={"rc": proc.returncode, "check": check, "hosts": hosts,
                                 "changed": changed, "failures": failures,
                                 "runner": "ansible-playbook",
                                 "elapsed_s": round(time.monotonic() - t0, 3)})
    if bad:
        first = failures[0] if failures else None
        why = (f"{first['host']}: {first['task']}: {first['msg']}" if first
               else redact_text((proc.stderr.strip().splitlines() or ["no output"])[-1]))
        raise PlaybookError(f"playbook {path.name} failed (rc {proc.returncode}): {why}")
    return hosts, changed
