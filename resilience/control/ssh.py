"""SSH to the hosts of the inventory with the OpenSSH client, host keys always verified.

The data plane (listings, tar streams) uses the OpenSSH client rather than paramiko: measured
on this machine it moves a stream about twice as fast. Every connection uses
``StrictHostKeyChecking=yes`` against the configured known_hosts file (an unknown or changed
key is refused, never accepted), ``BatchMode=yes`` (no password prompts under cron), and a
per-process control master so that the many commands of one action share one connection.

Remote commands are run by the remote user's shell: build them with :func:`quote`.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from ..config import Config
from ..errors import ResilienceError, TemporaryError, UsageError
from ..evidence.redact import redact_text
from ..inventory import load_inventory

quote = shlex.quote


@dataclass(frozen=True)
class Target:
    """How to reach one host."""

    name: str
    address: str
    user: str
    port: int
    identity_file: str | None
    known_hosts: str | None
    connect_timeout: float

    def describe(self) -> str:
        return f"{self.user}@{self.name} ({self.address}:{self.port})"


def target_for(cfg: Config, host: str) -> Target:
    """The SSH target of an inventory host: address from ``ansible_host``; user, port and key
    from the host's Ansible variables when set, else from the config's ``ssh`` section."""
    if cfg.inventory is None:
        raise UsageError(f"{cfg.source}: inventory: needed to reach host {host!r}")
    hv = load_inventory(cfg.inventory).host(host)
    ssh = cfg.ssh
    key = hv.get("ansible_ssh_private_key_file") or (str(ssh.identity_file) if ssh.identity_file else None)
    return Target(
        name=host,
        address=str(hv.get("ansible_host", host)),
        user=str(hv.get("ansible_user", ssh.user)),
        port=int(hv.get("ansible_port", ssh.port)),
        identity_file=key,
        known_hosts=str(ssh.known_hosts) if ssh.known_hosts else None,
        connect_timeout=ssh.connect_timeout,
    )


class SSH:
    """Runs commands on hosts. Use as a context manager: the shared connections are closed
    at the end."""

    def __init__(self) -> None:
        self._dir: str | None = None
        self._masters: set[Target] = set()
        binary = shutil.which("ssh")
        if binary is None:
            raise UsageError("ssh not found: apt-get install -y openssh-client")
        self.binary = binary

    def __enter__(self) -> SSH:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _control_dir(self) -> str:
        if self._dir is None:
            # Socket paths are limited to 108 bytes: keep it short.
            self._dir = tempfile.mkdtemp(prefix="rsl-ssh-", dir="/tmp")
        return self._dir

    def argv(self, t: Target) -> list[str]:
        """The ssh command line for ``t`` (without the remote command)."""
        opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={max(1, int(t.connect_timeout))}",
            "-o", "ServerAliveInterval=10",
            "-o", "ServerAliveCountMax=3",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control_dir()}/%C",
            "-o", "ControlPersist=30",
            "-o", "LogLevel=ERROR",
            # AES-GCM first (the rest of OpenSSH's defaults after it): with AES-NI it costs
            # the client half the CPU of the default chacha20-poly1305 (measured: 0.85 vs
            # 2.24 CPU-s for a 1.4 GB tar stream), and the member the same again.
            "-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com",
            "-p", str(t.port),
            "-l", t.user,
        ]
        if t.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={t.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if t.identity_file:
            opts += ["-o", "IdentitiesOnly=yes", "-i", t.identity_file]
        return [self.binary, *opts, t.address, "--"]

    def register(self, t: Target) -> None:
        """Note that ``t``'s control master may exist, so that :meth:`close` ends it (for
        commands started from :meth:`argv` elsewhere, e.g. in worker processes)."""
        self._masters.add(t)

    def _command(self, t: Target, command: str) -> list[str]:
        self.register(t)
        return [*self.argv(t), command]

    def run(self, t: Target, command: str, *, input: bytes | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` (a shell command line) on ``t`` and capture its output."""
        try:
            proc = subprocess.run(self._command(t, command), input=input, capture_output=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise TemporaryError(f"{t.name}: command timed out after {timeout:.0f} s") from None
        if check:
            raise_for(t, proc.returncode, proc.stderr)
        return proc

    def popen(self, t: Target, command: str, **kw) -> subprocess.Popen:
        """Start ``command`` on ``t`` with pipes as given in ``kw`` (for streams)."""
        return subprocess.Popen(self._command(t, command), **kw)

    def close(self) -> None:
        for t in self._masters:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([*self.argv(t)[:-2], "-O", "exit", t.address], capture_output=True, timeout=5,
                               check=False)
        self._masters.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def ssh_reason(stderr: bytes) -> str:
    """Why ssh itself failed (exit 255), in one line without secrets."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "host key verification failed" in low or "remote host identification has changed" in low:
            return "host key verification failed (unknown or changed host key; refusing to connect)"
        if "permission denied" in low:
            return "permission denied (key not accepted)"
        if "connection refused" in low:
            return "connection refused"
        if "timed out" in low or "no route to host" in low:
            return "unreachable (" + ln.rsplit(":", 1)[-1].strip() + ")"
    return redact_text(lines[-1]) if lines else ""


def raise_for(t: Target, code: int, stderr: bytes) -> None:
    """Raise the right error for a failed remote command (255 = ssh itself failed)."""
    if code == 0:
        return
    if code == 255:
        reason = ssh_reason(stderr)
        if reason.startswith("host key"):
            raise ResilienceError(f"{t.name}: {reason}")
        if reason.startswith("permission denied"):
            raise UsageError(f"{t.name}: ssh {reason}")
        raise TemporaryError(f"{t.name}: ssh failed: {reason or 'connection error'}")
    lines = [ln for ln in stderr.decode("utf-8", "replace").strip().splitlines() if ln.strip()]
    # The first line usually says what went wrong; the last often only "exiting with failure".
    first = next((ln for ln in lines if "Exiting with failure" not in ln), lines[-1] if lines else "")
    raise ResilienceError(f"{t.name}: remote command failed (exit {code}): {redact_text(first)}")
