"""The lab's SSH keys, known_hosts and generated secrets.

Secrets are created once and never rotated by `lab up`: the repository password in
particular must outlive any number of lab rebuilds, or earlier backups become unreadable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from . import layout as L
from . import topology as T
from .system import run

HOST_KEY = "ssh_host_ed25519_key"


def write_private(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` with mode 0600 unless it already holds exactly that.
    Returns True when the file changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text() == text:
            os.chmod(path, 0o600)
            return False
    except OSError:
        pass
    fd = os.open(path.with_suffix(path.suffix + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(path.with_suffix(path.suffix + ".tmp"), path)
    return True


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write a non-secret file only if its content differs. Returns True when it changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def ensure_secrets() -> dict[str, Path]:
    """Create every missing secret file (mode 0600, random); return {purpose: path}."""
    sdir = L.secrets_dir()
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)
    out = {}
    for purpose in L.SECRET_FILES:
        path = L.secret_path(purpose)
        if not path.exists() or not path.read_text().strip():
            # S3 secret keys are conventionally 40 characters; the rest just need entropy.
            value = secrets.token_urlsafe(30)[:40] if purpose == "s3_secret_key" \
                else secrets.token_urlsafe(24)
            write_private(path, value + "\n")
        os.chmod(path, 0o600)
        out[purpose] = path
    # A libpq password file for the superuser, so a DSN can name it instead of embedding
    # the password (see status: "dsn_via_file").
    pw = read_secret("db_superuser_password").replace("\\", "\\\\").replace(":", "\\:")
    write_private(L.pgpass_file(), f"{T.DB1_ADDR}:{T.DB_PORT}:*:{T.DB_SUPERUSER}:{pw}\n")
    return out


def read_secret(purpose: str) -> str:
    """The secret for ``purpose`` (stripped). Raises ResilienceError if it is missing."""
    from ..errors import ResilienceError

    path = L.secret_path(purpose)
    try:
        value = path.read_text().strip()
    except OSError:
        raise ResilienceError(f"lab secret {path} is missing (run: resilience lab up)") from None
    if not value:
        raise ResilienceError(f"lab secret {path} is empty (run: resilience lab up)")
    return value


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and Path(str(path) + ".pub").exists():
        return
    path.unlink(missing_ok=True)
    Path(str(path) + ".pub").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        what="ssh-keygen")


def host_key(host: str) -> Path:
    """The host's private SSH host key (its .pub sits next to it)."""
    return L.host_dir(host) / "etc" / "ssh" / HOST_KEY


def ensure_ssh_keys() -> None:
    """Client key, one host key per SSH host, authorized_keys and known_hosts.

    known_hosts is written from the keys generated here, so the first connection is already
    verified: nothing is ever learned on first use.
    """
    sdir = L.ssh_dir()
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)
    _keygen(L.client_key(), "resilience-lab-ops")
    pub = Path(str(L.client_key()) + ".pub").read_text().strip()
    write_if_changed(L.authorized_keys(), pub + "\n", 0o600)
    lines = []
    for name in T.SSH_HOSTS:
        key = host_key(name)
        _keygen(key, f"root@{name}")
        kind, blob = Path(str(key) + ".pub").read_text().split()[:2]
        lines.append(f"{name},{T.HOSTS[name].address} {kind} {blob}")
    write_if_changed(L.known_hosts(), "\n".join(lines) + "\n", 0o644)


def ssh_argv(host: str, *, known_hosts: Path | None = None, timeout: float = 5) -> list[str]:
    """The ssh command line that reaches ``host`` as root with strict host-key checking."""
    return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts or L.known_hosts()}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
            "-o", f"ConnectTimeout={timeout:g}", "-o", "LogLevel=ERROR",
            "-i", str(L.client_key()), f"root@{T.HOSTS[host].address}"]
