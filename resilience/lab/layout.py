"""Where the lab keeps its files on the ops host (the lab state folder).

Layout under :func:`lab_dir` (default /var/lib/resilience-lab)::

    ssh/id_ed25519[.pub]     the lab's SSH client key (root on every host accepts it)
    ssh/known_hosts          the hosts' public keys, written by the lab (no TOFU)
    ssh/authorized_keys      what every lab sshd accepts
    secrets/*                generated passwords and keys, mode 0600
    evidence/                evidence folder named by inventories/lab/resilience.yml
    hosts/NAME/              one folder per host:
        pids/                anchor.pid, sshd.pid, nginx.pid, ... (read by status and down)
        etc/                 configs (sshd_config + host key, nginx/, haproxy/, hosts, hostname)
        log/                 mounted on the host's /var/log
        root/                mounted on the host's /root
        www/                 mounted on the host's /var/www (web hosts)
        run/                 lb1: mounted on /run/haproxy; db1: run/postgresql on /run/postgresql
        data/                db1: pgdata; s3: SeaweedFS volumes
"""

from __future__ import annotations

import os
from pathlib import Path

from . import topology as T

LAB_DIR_ENV = "RESILIENCE_LAB_DIR"
DEFAULT_LAB_DIR = Path("/var/lib/resilience-lab")

# Secret files, by purpose; the checked-in inventories/lab/resilience.yml names these paths.
SECRET_FILES = {
    "repo_password": "repo.pass",
    "s3_secret_key": "s3-secret-access-key",
    "db_superuser_password": "db-superuser.pass",
    "db_backup_password": "db-backup.pass",
}


# Each host mounts its own copy over these, so a lab folder below one would vanish from view
# inside the hosts (and services there need to read their configs from it).
SHADOWED = ("/tmp", "/run", "/root", "/var/log", "/var/www", "/etc")


def lab_dir() -> Path:
    """The lab state folder: ``$RESILIENCE_LAB_DIR`` if set, else /var/lib/resilience-lab.

    Raises UsageError for a folder the hosts could not see (below /tmp, /run, /root, ...).
    """
    env = os.environ.get(LAB_DIR_ENV)
    path = Path(env).absolute() if env else DEFAULT_LAB_DIR
    for top in SHADOWED:
        if path == Path(top) or Path(top) in path.parents:
            from ..errors import UsageError

            raise UsageError(f"{LAB_DIR_ENV}={path}: the lab folder cannot be below {top} "
                             "(each lab host mounts its own there); use e.g. /var/tmp/lab")
    return path


def ssh_dir() -> Path:
    return lab_dir() / "ssh"


def client_key() -> Path:
    """The lab SSH client private key."""
    return ssh_dir() / "id_ed25519"


def known_hosts() -> Path:
    """The known_hosts file holding every lab host's public key."""
    return ssh_dir() / "known_hosts"


def authorized_keys() -> Path:
    return ssh_dir() / "authorized_keys"


def secrets_dir() -> Path:
    return lab_dir() / "secrets"


def secret_path(purpose: str) -> Path:
    """Path of the secret file for ``purpose`` (a key of :data:`SECRET_FILES`)."""
    return secrets_dir() / SECRET_FILES[purpose]


def pgpass_file() -> Path:
    """libpq password file holding db1's superuser password (derived from its secret)."""
    return secrets_dir() / "db-superuser.pgpass"


def host_dir(name: str) -> Path:
    return lab_dir() / "hosts" / name


def pid_file(host: str, what: str) -> Path:
    """Pid file of ``what`` ("anchor" or a service name) on ``host``."""
    return host_dir(host) / "pids" / f"{what}.pid"


def netns_inode_file(host: str) -> Path:
    """Records the inode of the host's network namespace, so `down` finds its processes
    even after the namespace's name is gone."""
    return host_dir(host) / "pids" / "netns.ino"


def log_dir(host: str) -> Path:
    """The folder mounted on the host's /var/log."""
    return host_dir(host) / "log"


def www_dir(host: str) -> Path:
    """The folder mounted on the host's /var/www."""
    return host_dir(host) / "www"


def site_dir(host: str) -> Path:
    """The portal as seen from the ops host (the host sees it at /var/www/portal)."""
    return www_dir(host) / T.SITE_PATH.rsplit("/", 1)[-1]


def haproxy_run_dir() -> Path:
    """lb1's HAProxy runtime folder (admin socket, pid, server state); /run/haproxy in lb1."""
    return host_dir("lb1") / "run"


def haproxy_socket() -> Path:
    """The HAProxy admin socket as reachable from the ops host."""
    return haproxy_run_dir() / "admin.sock"


def pg_data_dir() -> Path:
    return host_dir("db1") / "data" / "pgdata"


def pg_socket_dir() -> Path:
    """PostgreSQL's unix socket folder (also /run/postgresql inside db1)."""
    return host_dir("db1") / "run" / "postgresql"


def evidence_dir() -> Path:
    return lab_dir() / "evidence"
