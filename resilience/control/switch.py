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

import contextlib
import json
import re
import subprocess
import tempfile
import threading
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


def _argv_env(cfg: Config, playbook: str, host: str, extravars: dict, check: bool):
    """argv and environment of one ansible-playbook run, and the temporary folder holding
    its (empty, our own) ansible.cfg: a stray one must not change how we connect."""
    path = _playbook_path(cfg, playbook)
    if cfg.inventory is None:
        raise UsageError(f"{cfg.source}: inventory: needed to run playbook {path.name}")
    tmp = tempfile.TemporaryDirectory(prefix="resilience-ap-")
    cfg_file = Path(tmp.name) / "ansible.cfg"
    cfg_file.write_text("[defaults]\n")
    env = ansible_env()
    env.update(ANSIBLE_CONFIG=str(cfg_file), ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_TIMEOUT=str(int(max(1, cfg.ssh.connect_timeout))))
    argv = [ansible_bin("ansible-playbook"), "-i", str(cfg.inventory), str(path),
            "--limit", host, "-e", json.dumps(extravars)]
    if check:
        argv += ["--check", "--diff"]
    return argv, env, tmp


def run_ansible_playbook(cfg: Config, playbook: str, host: str, extravars: dict, *,
                         check: bool = False, run=None, timeout: float = 120
                         ) -> tuple[dict[str, dict[str, int]], bool]:
    """Run ``ansible-playbook`` itself (no ansible-runner) and return (hosts, changed)."""
    path = _playbook_path(cfg, playbook)
    t0 = time.monotonic()
    argv, env, tmp = _argv_env(cfg, playbook, host, extravars, check)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ResilienceError(f"playbook {path.name} timed out after {timeout:g}s") from None
    finally:
        tmp.cleanup()
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


# The task of line_switch.yml that changes the route (its name starts so), and the result
# lines that mean it is done (switched, already right, or nothing to do).
SWITCH_TASK = "Point the default route at"
SWITCH_DONE = re.compile(r"^(changed|ok|skipping): \[")


ARM_PREFIX = "rsl-arm-"


def _remove_stale_arms() -> None:
    """Remove armed-pipe folders left by watcher processes that no longer exist."""
    import os
    import shutil

    base = Path(tempfile.gettempdir())
    for path in base.glob(f"{ARM_PREFIX}*"):
        pid = path.name[len(ARM_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


class NotArmed(ResilienceError):
    """The armed playbook was gone: nothing was changed, run a cold one."""


class ArmedSwitch:
    """The switch playbook started ahead of time (armed mode of line_switch.yml): it connects
    to the gateway, then waits for the line on a named pipe. :meth:`fire` writes the line and
    waits for the playbook to finish, so a failover pays ~0.4 s instead of ansible-playbook's
    whole start-up. One shot: arm again after firing. Works with both ``switch_with`` modes
    (the runner one runs :func:`run_playbook` in a thread)."""

    def __init__(self, cfg: Config, playbook: str, host: str, *, check: bool = False):
        self.cfg, self.playbook, self.host, self.check = cfg, playbook, host, check
        self.how = getattr(cfg.lines, "switch_with", "runner") if cfg.lines else "runner"
        self.dir: str | None = None
        self.fifo: str | None = None
        self.proc: subprocess.Popen | None = None
        self.thread = None
        self.outcome: dict = {}
        self.cfg_dir: tempfile.TemporaryDirectory | None = None
        self.output: list[str] = []
        self.switched = threading.Event()

    def arm(self) -> None:
        """Start the playbook; it waits for :meth:`fire`. Returns at once."""
        import os

        _remove_stale_arms()
        # mode 0700: only we write the pipe; our pid in the name lets a later watcher remove
        # the folder if this process dies without cleaning up (SIGKILL, power loss).
        self.dir = tempfile.mkdtemp(prefix=f"{ARM_PREFIX}{os.getpid()}-")
        self.fifo = os.path.join(self.dir, "line")
        os.mkfifo(self.fifo, 0o600)
        extravars = {"line_fifo": self.fifo, "gateway": self.host}
        if self.how == "runner":

            def target() -> None:
                from .ansible import run_playbook

                try:
                    res = run_playbook(self.cfg, self.playbook, limit=[self.host],
                                       extravars=extravars, check=self.check, quiet=True)
                    self.outcome["result"] = (res.hosts, res.changed, res.rc, [])
                except PlaybookError as exc:
                    r = exc.result
                    self.outcome["result"] = ((r.hosts, r.changed, r.rc, r.failures) if r
                                              else ({}, False, -1, []))
                    self.outcome["error"] = str(exc)
                except Exception as exc:  # noqa: BLE001 - reported by fire()
                    self.outcome["error"] = redact_text(str(exc))

            self.thread = threading.Thread(target=target, daemon=True)
            self.thread.start()
        else:
            argv, env, self.cfg_dir = _argv_env(self.cfg, self.playbook, self.host, extravars,
                                                self.check)
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, text=True, env=env,
                                         start_new_session=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        """Collect the playbook's output; note when the route task has reported, which is
        when the gateway has switched (the play's end and ansible's exit come later)."""
        in_switch_task = False
        for text in self.proc.stdout:
            self.output.append(text)
            if text.startswith("TASK ["):
                in_switch_task = text.startswith(f"TASK [{SWITCH_TASK}")
            elif in_switch_task and SWITCH_DONE.match(text):
                self.switched.set()
        self.switched.set()  # the process ended: nobody waits for a report that never comes

    def alive(self) -> bool:
        """True while the armed playbook is waiting (or still starting)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return self.thread is not None and self.thread.is_alive()

    def ready(self) -> bool:
        """True once the armed playbook waits on the pipe (it touched ``PIPE.ready``)."""
        import os

        return bool(self.fifo) and self.alive() and os.path.exists(f"{self.fifo}.ready")

    def _write(self, text: str, timeout: float) -> bool:
        import errno
        import os

        end = time.monotonic() + timeout
        while time.monotonic() < end and self.alive():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: the playbook is not reading yet
                    raise
                time.sleep(0.01)
                continue
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            return True
        return False

    def fire(self, line: str, *, run=None, timeout: float = 120, on_switched=None) -> dict:
        """Switch to ``line`` through the armed playbook; same result and step as
        :func:`switch_gateway`. ``on_switched()`` is called as soon as the playbook reported
        its route task done without failure (with ``switch_with: ansible-playbook``; with the
        runner, after the playbook ended), while ansible finishes the play. Raises
        PlaybookError when it failed, NotArmed when the armed playbook was not there to take
        the decision (nothing changed: run a cold one)."""
        t0 = time.monotonic()
        path = _playbook_path(self.cfg, self.playbook)
        if not self._write(f"{line}\n", timeout):
            self.disarm()
            raise NotArmed(f"armed playbook {path.name} did not take the decision")
        early = False
        if self.proc is not None:
            self.switched.wait(timeout)
            if on_switched is not None and not any(_FATAL.match(t) for t in self.output) \
                    and self.proc.poll() is None:
                early = True
                on_switched()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.disarm()
                raise ResilienceError(f"playbook {path.name} timed out") from None
            out = err = "".join(self.output)
            hosts, failures = parse_output(out)
            rc = self.proc.returncode
        else:
            self.thread.join(timeout)
            hosts, _, rc, failures = self.outcome.get("result", ({}, False, -1, []))
            err = self.outcome.get("error", "")
        self._cleanup()
        changed = any(h.get("changed") for h in hosts.values())
        bad = bool(failures) or rc != 0 or self.host not in hosts or any(
            h.get("failed") or h.get("unreachable") for h in hosts.values())
        if run is not None:
            run.record_step(f"playbook {path.name}", host=self.host,
                            outcome="failed" if bad else "ok",
                            details={"rc": rc, "check": self.check, "hosts": hosts,
                                     "changed": changed, "failures": failures,
                                     "runner": f"{self.how} (armed)",
                                     "elapsed_s": round(time.monotonic() - t0, 3)})
        if bad:
            first = failures[0] if failures else None
            why = (f"{first['host']}: {first['task']}: {first['msg']}" if first
                   else redact_text((str(err).strip().splitlines() or ["no output"])[-1]))
            raise PlaybookError(f"playbook {path.name} failed (rc {rc}): {why}")
        if on_switched is not None and not early:
            on_switched()
        return {"changed": changed, "hosts": hosts, "how": f"{self.how} (armed)",
                "elapsed_s": round(time.monotonic() - t0, 3)}

    def disarm(self) -> None:
        """Let the armed playbook end without changing anything (or stop it)."""
        if self.fifo and self.alive() and self._write("none\n", 2):
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=10)
            elif self.thread is not None:
                self.thread.join(10)
        if self.proc is not None and self.proc.poll() is None:
            import os
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        import shutil

        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = self.fifo = None
        if self.cfg_dir is not None:
            self.cfg_dir.cleanup()
            self.cfg_dir = None
