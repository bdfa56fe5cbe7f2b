"""Run the playbooks of ``playbooks/`` with ansible-runner: the control plane's only way to
change hosts.

Contract of :func:`run_playbook`:

- every run gets a fresh private data dir (mode 0700, removed afterwards): ansible-runner
  otherwise reuses a stale ``env/cmdline`` and extravars from an earlier run;
- host keys are verified: ansible-runner sets ``ANSIBLE_HOST_KEY_CHECKING=False`` unless told
  otherwise, which makes Ansible put ``StrictHostKeyChecking=no`` *before* the inventory's own
  ssh arguments (OpenSSH keeps the first value), so we always pass it explicitly as ``True``;
- the inventory is the config's ``inventory``; ``check=True`` runs ``--check --diff``;
- per-host stats, failures (host, task, message) and published values come back in a
  :class:`PlaybookResult`; a failed or unreachable host raises :class:`PlaybookError` (exit 1)
  whose one-line message names the host and task, and whose ``.result`` is the full result;
- each task result (task + host) is recorded as an evidence step of ``run`` (outcome, changed,
  module) — never the module's output, so nothing a task returns (secrets, ``no_log`` data)
  reaches the ledger; a failure message is kept only when the task is not ``no_log``;
- on a terminal (and not ``quiet``) each task result is printed as it happens;
- Ctrl-C cancels the playbook through ansible-runner's ``cancel_callback`` and is re-raised
  as KeyboardInterrupt once the run has stopped (the evidence records ``cancelled``).

Values a playbook publishes (``PlaybookResult.facts``): for each host, the merge of every
``set_fact: {resilience_result: {...}}`` it ran (later keys win); the data of
``set_stats`` (aggregated, not per host) appears under the key ``"_run"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PlaybookError, UsageError
from ..evidence.redact import redact_text

if TYPE_CHECKING:
    from ..config import Config
    from ..evidence.run import Run

#: The playbooks shipped with the project (``<repo>/playbooks``).
DEFAULT_PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
STAT_KEYS = ("ok", "changed", "failed", "unreachable", "skipped")
_PLAYBOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
_NO_LOG_MSG = "output hidden (no_log)"


@dataclass
class PlaybookResult:
    """What one playbook run did. ``status`` is ansible-runner's (successful, failed,
    timeout, canceled); ``rc`` the exit code of ansible-playbook."""

    playbook: str
    status: str
    rc: int
    check: bool
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    changed: bool = False
    facts: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def playbooks_dir(config: Config) -> Path:
    """The folder playbooks are taken from: ``control.playbooks`` or the project's own."""
    folder = getattr(config.control, "playbooks", None)
    return Path(folder) if folder else DEFAULT_PLAYBOOKS


def playbook_path(config: Config, playbook: str) -> Path:
    """Resolve a playbook name (``isolate`` or ``isolate.yml``) inside :func:`playbooks_dir`;
    a name with a path in it, or one that does not exist, is a UsageError."""
    name = playbook if playbook.endswith((".yml", ".yaml")) else f"{playbook}.yml"
    if not _PLAYBOOK_NAME.match(name):
        raise UsageError(f"invalid playbook name {playbook!r} (a file name in the playbooks folder)")
    path = playbooks_dir(config) / name
    if not path.is_file():
        raise UsageError(f"playbook {name} not found in {playbooks_dir(config)}")
    return path


def runner_env(config: Config) -> dict[str, str]:
    """The environment every playbook runs with (host keys verified, no retry files, no
    colour, no cowsay). Pure: unit-testable."""
    tag = hashlib.sha256(str(config.inventory).encode()).hexdigest()[:12]
    env = {
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        # One SSH round trip per task instead of three (the lab hosts need no tty for root).
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_NOCOWS": "True",
        "ANSIBLE_TIMEOUT": str(int(max(1, config.ssh.connect_timeout))),
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        # SSH masters are kept per inventory: a master opened for another inventory (other
        # known_hosts) must never let a connection skip its own host key check.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(Path.home() / ".ansible" / "cp" / f"rsl-{tag}"),
    }
    return env


def run_playbook(config: Config, playbook: str, *, limit: list[str] | None = None,
                 extravars: dict | None = None, check: bool = False, run: Run | None = None,
                 quiet: bool = False, timeout: int | None = None) -> PlaybookResult:
    """Run ``playbook`` against the config's inventory (optionally ``limit``-ed to hosts) and
    return its :class:`PlaybookResult`. ``check`` runs it in check mode with diffs. Task
    results become steps of ``run`` when given. Raises PlaybookError when a host failed or was
    unreachable or the run did not succeed, UsageError for a bad playbook name or no
    inventory, KeyboardInterrupt when cancelled with Ctrl-C."""
    import ansible_runner

    path = playbook_path(config, playbook)
    if config.inventory is None:
        raise UsageError(f"{config.source}: inventory: needed to run playbook {path.name}")
    if limit is not None and not limit:
        raise UsageError(f"playbook {path.name}: empty host limit")
    recorder = _Recorder(path.name, check, run, _progress(quiet))
    cancel = threading.Event()
    data_dir = tempfile.mkdtemp(prefix="resilience-ansible-")
    envvars = runner_env(config)
    # An empty ansible.cfg of our own: a stray one in the working directory or ~/.ansible.cfg
    # must not change how we connect (e.g. turn host key checking off again).
    cfg_file = Path(data_dir) / "ansible.cfg"
    cfg_file.write_text("[defaults]\n")
    envvars["ANSIBLE_CONFIG"] = str(cfg_file)
    if extravars:
        # Written to a 0600 file that ansible-runner passes as -e @file: given as a dict,
        # ansible-runner would put them on the command line, readable by anyone in `ps`.
        _write_private(Path(data_dir) / "env" / "extravars", json.dumps(extravars))
    kwargs: dict[str, Any] = dict(
        private_data_dir=data_dir,
        project_dir=str(path.parent),
        playbook=path.name,
        inventory=str(config.inventory),
        envvars=envvars,
        quiet=True,
        event_handler=recorder.event,
        cancel_callback=cancel.is_set,
        settings={"suppress_ansible_output": True},
        timeout=timeout,
    )
    venv_bin = Path(sys.executable).parent
    if (venv_bin / "ansible-playbook").exists():
        # The venv's ansible-playbook first, whatever PATH cron gives us. In this process
        # too: ansible-runner that finds no ansible-playbook on its own PATH (cron, or
        # .venv/bin/resilience from a plain shell) drops the playbook argument and fails with
        # rc 2 ("the following arguments are required: playbook").
        parts = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
        if str(venv_bin) not in parts:
            os.environ["PATH"] = os.pathsep.join([str(venv_bin), *parts])
        envvars["PATH"] = os.environ["PATH"]
    if limit:
        kwargs["limit"] = ",".join(limit)
    if check:
        kwargs["cmdline"] = "--check --diff"
    try:
        with _sigint_cancels(cancel):
            r = ansible_runner.run(**kwargs)
        # Read before the data dir goes: stats come from the stored events.
        result = recorder.result(r.status, r.rc if r.rc is not None else -1, recorder.stats)
    finally:
        recorder.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    if run is not None:
        run.record_step(f"playbook {path.name}", outcome=_outcome(result, cancel.is_set()),
                        details={"status": result.status, "rc": result.rc, "check": check,
                                 "limit": limit, "hosts": result.hosts, "changed": result.changed,
                                 "failures": result.failures})
    if cancel.is_set() or result.status == "canceled":
        raise KeyboardInterrupt
    if result.failures or result.status != "successful":
        raise PlaybookError(_failure_message(result), result=result)
    return result


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _outcome(result: PlaybookResult, cancelled: bool) -> str:
    if cancelled or result.status == "canceled":
        return "cancelled"
    return "ok" if result.status == "successful" and not result.failures else "failed"


def _failure_message(result: PlaybookResult) -> str:
    if not result.failures:
        return f"playbook {result.playbook} {result.status} (rc {result.rc})"
    f = result.failures[0]
    what = "unreachable" if f.get("unreachable") else "failed"
    more = f" (and {len(result.failures) - 1} more failure(s))" if len(result.failures) > 1 else ""
    msg = " ".join(str(f.get("msg") or "").split())[:300]
    return f"playbook {result.playbook}: {f['host']} {what} at task {f['task']!r}: {msg}{more}"


class _Recorder:
    """Turns ansible-runner events into steps, progress lines and the result."""

    def __init__(self, playbook: str, check: bool, run: Run | None, progress):
        self.playbook, self.check, self.run, self.progress = playbook, check, run, progress
        self.failures: list[dict] = []
        self.facts: dict[str, dict] = {}
        self.stats: dict = {}
        self.lock = threading.Lock()

    def event(self, ev: dict) -> bool:
        kind = ev.get("event", "")
        data = ev.get("event_data") or {}
        if kind == "playbook_on_stats":
            self.stats = data
            if data.get("artifact_data"):
                self.facts["_run"] = dict(data["artifact_data"])
        outcome = _HOST_RESULT_EVENTS.get(kind)
        if outcome is None or not data.get("host"):
            return True
        with self.lock:
            self._host_result(outcome, data)
        return True

    def _host_result(self, outcome: str, data: dict) -> None:
        host, task = data["host"], data.get("task") or "?"
        res = data.get("res") or {}
        no_log = bool(res.get("_ansible_no_log") or data.get("no_log"))
        changed = bool(res.get("changed")) and outcome == "ok"
        ignored = outcome == "failed" and bool(data.get("ignore_errors"))
        published = (res.get("ansible_facts") or {}).get("resilience_result")
        if outcome == "ok" and isinstance(published, dict) and not no_log:
            self.facts.setdefault(host, {}).update(published)
        msg = None
        if outcome in ("failed", "unreachable"):
            msg = _NO_LOG_MSG if no_log else redact_text(_message(res))
            if outcome == "unreachable":
                msg = _ssh_summary(msg)
            if not ignored:
                self.failures.append({"host": host, "task": task, "msg": msg,
                                      "unreachable": outcome == "unreachable"})
        if self.run is not None:
            details = {"playbook": self.playbook, "task": task, "module": data.get("task_action"),
                       "changed": changed, "check": self.check}
            if data.get("duration") is not None:
                details["task_duration_s"] = round(float(data["duration"]), 3)
            if ignored:
                details["ignored"] = True
            step_outcome = {"ok": "ok", "skipped": "skipped"}.get(outcome, "ok" if ignored else "failed")
            self.run.record_step(f"task {task}", host=host, outcome=step_outcome, details=details,
                                 error=msg if step_outcome == "failed" else None)
        if self.progress is not None:
            self.progress(host, task, "changed" if changed else ("ignored" if ignored else outcome), msg)

    def result(self, status: str, rc: int, stats: dict) -> PlaybookResult:
        return PlaybookResult(self.playbook, status, rc, self.check, hosts_from_stats(stats),
                              list(self.failures), any(s["changed"] for s in hosts_from_stats(stats).values()),
                              dict(self.facts))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


def hosts_from_stats(stats: dict) -> dict[str, dict[str, int]]:
    """Per-host counters from ansible-runner's ``stats`` (``failures``/``dark`` renamed to
    ``failed``/``unreachable``). Pure: unit-testable."""
    names = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
             "skipped": "skipped"}
    hosts: dict[str, dict[str, int]] = {}
    for key, name in names.items():
        for host, n in (stats.get(key) or {}).items():
            hosts.setdefault(host, dict.fromkeys(STAT_KEYS, 0))[name] = int(n)
    for host in (stats.get("processed") or {}):
        hosts.setdefault(host, dict.fromkeys(STAT_KEYS, 0))
    return hosts


_SSH_REASONS = (
    (("host key verification failed", "remote host identification has changed", "no ed25519 host key is known",
      "host key is known"), "host key verification failed (unknown or changed host key; refusing to connect)"),
    (("permission denied",), "permission denied (key not accepted)"),
    (("connection refused",), "connection refused"),
    (("timed out", "no route to host"), "no answer (timed out or no route)"),
)


def _ssh_summary(msg: str) -> str:
    """One readable reason for an unreachable host instead of OpenSSH's banner of @s."""
    low = msg.lower()
    for needles, reason in _SSH_REASONS:
        if any(n in low for n in needles):
            return reason
    return msg


def _message(res: dict) -> str:
    # A failed command's msg is only "non-zero return code": its stderr says why.
    if res.get("msg") == "non-zero return code" and str(res.get("stderr") or "").strip():
        return str(res["stderr"]).strip().splitlines()[-1]
    for key in ("msg", "stderr", "reason"):
        if res.get(key):
            return str(res[key]).strip()
    return "failed"


class _Printer:
    """One line per task result on stderr, through rich."""

    STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "unreachable": "bold red",
             "skipped": "dim", "ignored": "dim"}

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)

    def __call__(self, host: str, task: str, outcome: str, msg: str | None) -> None:
        style = self.STYLE.get(outcome, "")
        tail = f": {msg}" if msg else ""
        self.console.print(f"[{style}]{outcome:>11}[/] {host:<8} {task}{tail}", markup=True)

    def close(self) -> None:
        pass


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    try:
        from ..cli.context import app

        if app().json:
            return None
    except Exception:  # noqa: BLE001 - outside click there is no --json to honour
        pass
    return _Printer()


class _sigint_cancels:
    """While active (main thread only), Ctrl-C sets ``event`` instead of raising, so
    ansible-runner stops the playbook and cleans up before we re-raise."""

    def __init__(self, event: threading.Event):
        self.event, self.previous = event, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
