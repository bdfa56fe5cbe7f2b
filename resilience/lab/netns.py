"""Namespaces, anchors, per-host mounts and links.

A lab host is a network namespace (``ip netns``) plus a mount and a UTS namespace owned by
an *anchor*: ``ip netns exec NAME unshare --mount --uts --propagation private sleep infinity``.
Everything on the host is started with ``nsenter -t ANCHOR -m -u -n`` so it shares the
anchor's view: its own /var/www, /var/log, /root, /run, /tmp and hostname. Because the mount
namespace is private, none of those mounts is visible from the ops host, and all of them
vanish with the last process of the host.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import ResilienceError
from . import layout as L
from . import topology as T
from .system import (
    all_pids,
    kill_pids,
    netns_inode_of,
    pid_alive,
    read_pid,
    run,
    spawn,
)

NETNS_DIR = Path("/run/netns")
SKEL_FILES = ("/etc/skel/.bashrc", "/etc/skel/.profile")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_inode(name: str) -> int | None:
    """Inode of the named network namespace, or None if it does not exist (or is a stale
    file left without its mount)."""
    path = netns_path(name)
    try:
        if not os.path.ismount(path):
            return None
        return os.stat(path).st_ino
    except OSError:
        return None


def anchor_pid(name: str) -> int | None:
    """The pid of the host's anchor if it is alive and really sits in the host's netns."""
    pid = read_pid(L.pid_file(name, "anchor"))
    if not pid_alive(pid):
        return None
    ino = netns_inode(T.HOSTS[name].netns)
    if ino is None or netns_inode_of(pid) != ino:
        return None
    try:
        # A private mount namespace is what makes it an anchor (pid reuse would not have one).
        if os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino:
            return None
    except OSError:
        return None
    return pid


def enter_argv(name: str, *, pid: int | None = None) -> list[str]:
    """The nsenter prefix that runs a command on host ``name`` (raises if it is not up)."""
    pid = pid or anchor_pid(name)
    if pid is None:
        raise ResilienceError(f"lab host {name} is not running (run: resilience lab up)")
    return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "--"]


def _prepare_dirs(name: str) -> None:
    hdir = L.host_dir(name)
    for sub in ("pids", "etc", "log", "root", "run", "www"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(hdir / "root", 0o700)
    for skel in SKEL_FILES:
        dst = hdir / "root" / Path(skel).name
        if Path(skel).exists() and not dst.exists():
            dst.write_bytes(Path(skel).read_bytes())
    (hdir / "etc" / "hostname").write_text(name + "\n")
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{name}"]
    lines += [f"{h.address}\t{h.name}" for h in T.HOSTS.values() if h.on_lan and h.name != name]
    lines += [f"{T.VIP_ADDR}\tportal-vip", f"{T.S3_ADDR}\ts3.lab"]
    (hdir / "etc" / "hosts").write_text("\n".join(lines) + "\n")


def _mounts(name: str) -> list[tuple[str, ...]]:
    """What to mount inside the host, in order: ('tmpfs', target, options) / ('bind', src, dst)."""
    hdir = L.host_dir(name)
    ops: list[tuple[str, ...]] = [
        ("tmpfs", "/run", "mode=0755,size=64m"),
        ("tmpfs", "/tmp", "mode=1777,size=512m"),
        ("bind", str(L.log_dir(name)), "/var/log"),
        ("bind", str(hdir / "root"), "/root"),
        ("bind", str(hdir / "etc" / "hosts"), "/etc/hosts"),
        ("bind", str(hdir / "etc" / "hostname"), "/etc/hostname"),
    ]
    ops.append(("bind", str(L.www_dir(name)), "/var/www"))
    if name in T.WEB_HOSTS:
        ops.append(("bind", str(hdir / "etc" / "nginx"), "/etc/nginx"))
    if name == "lb1":
        ops += [("bind", str(hdir / "etc" / "haproxy"), "/etc/haproxy"),
                ("bind", str(L.haproxy_run_dir()), "/run/haproxy")]
    if name == "db1":
        ops += [("bind", str(L.pg_socket_dir()), "/run/postgresql")]
    return ops


def _mount_script(ops: list[tuple[str, ...]]) -> tuple[str, list[str]]:
    """A fixed shell script plus its positional arguments: data never becomes shell text."""
    # The copied /run/netns mounts would pin the *other* hosts' namespaces for as long as this
    # host lives; the mount namespace is private, so dropping them here leaves the ops host's.
    lines = ["set -e", 'hostname "$1"', "umount -R -l /run/netns 2>/dev/null || true"]
    args: list[str] = []
    n = 2
    for op in ops:
        if op[0] == "tmpfs":
            lines.append(f'mount -t tmpfs -o "${{{n + 1}}}" tmpfs "${{{n}}}"')
            args += [op[1], op[2]]
            n += 2
        else:
            # A target under a fresh tmpfs (/run/haproxy) has to be created first.
            lines.append(f'[ -e "${{{n + 1}}}" ] || mkdir -p "${{{n + 1}}}"')
            lines.append(f'mount --bind "${{{n}}}" "${{{n + 1}}}"')
            args += [op[1], op[2]]
            n += 2
        if op[1] == "/run":
            lines += ["mkdir -p /run/sshd", "chmod 0755 /run/sshd"]
    return "\n".join(lines), args


def _wait_anchor(name: str, pid: int, timeout: float = 5.0) -> None:
    own_mnt = os.stat("/proc/self/ns/mnt").st_ino
    ino = netns_inode(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ready = (netns_inode_of(pid) == ino
                     and os.stat(f"/proc/{pid}/ns/mnt").st_ino != own_mnt
                     and Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")
        except OSError:
            ready = False
        if ready:
            return
        if not pid_alive(pid):
            break
        time.sleep(0.01)
    raise ResilienceError(f"lab host {name}: its anchor process did not start")


def create_host(name: str) -> int:
    """Create host ``name`` from nothing: netns, anchor, hostname, mounts. Returns the anchor pid.

    The caller makes sure no older instance exists (see :func:`destroy_host`).
    """
    host = T.HOSTS[name]
    _prepare_dirs(name)
    if name in T.WEB_HOSTS:
        (L.host_dir(name) / "etc" / "nginx").mkdir(parents=True, exist_ok=True)
    if name == "lb1":
        (L.host_dir(name) / "etc" / "haproxy").mkdir(parents=True, exist_ok=True)
    if name == "db1":
        L.pg_socket_dir().mkdir(parents=True, exist_ok=True)
    run(["ip", "netns", "add", host.netns], what=f"ip netns add {host.netns}")
    ino = netns_inode(host.netns)
    L.netns_inode_file(name).write_text(f"{ino}\n")
    pid = spawn(["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts",
                 "--propagation", "private", "sleep", "infinity"],
                log=L.host_dir(name) / "anchor.log")
    _wait_anchor(host.netns, pid)
    L.pid_file(name, "anchor").write_text(f"{pid}\n")
    script, args = _mount_script(_mounts(name))
    run(["nsenter", "-t", str(pid), "-m", "-u", "--", "sh", "-c", script, "sh", name, *args],
        what=f"mounts of lab host {name}")
    # rp_filter off: replies may come back over the other line during a failover.
    sysctls = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
    if name in ("gw1", "isp1", "isp2"):
        sysctls.append("net.ipv4.ip_forward=1")
    run(["nsenter", "-t", str(pid), "-n", "--", "sysctl", "-q", "-w", *sysctls],
        what=f"sysctl on lab host {name}")
    run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
    return pid


def host_pids(name: str) -> set[int]:
    """Every process in the host's network namespace: the current one and the one recorded
    at creation (which may have lost its name but still hold processes)."""
    inodes = {ino for ino in (netns_inode(T.HOSTS[name].netns), _recorded_inode(name)) if ino}
    found: set[int] = set()
    if inodes:
        for pid in all_pids():
            if netns_inode_of(pid) in inodes:
                found.add(pid)
    return found


def _recorded_inode(name: str) -> int | None:
    try:
        return int(L.netns_inode_file(name).read_text().strip())
    except (OSError, ValueError):
        return None


def destroy_host(name: str) -> list[str]:
    """Kill every process of host ``name`` and delete its netns. Returns problems left over."""
    problems: list[str] = []
    left = kill_pids(host_pids(name))
    if left:
        problems.append(f"{name}: processes still alive: {', '.join(map(str, sorted(left)))}")
    netns = T.HOSTS[name].netns
    if netns_path(netns).exists():
        proc = run(["ip", "netns", "delete", netns], check=False)
        if proc.returncode != 0 and netns_path(netns).exists():
            problems.append(f"{name}: ip netns delete failed: {proc.stderr.strip()}")
    piddir = L.host_dir(name) / "pids"
    if piddir.is_dir():
        for f in piddir.glob("*"):
            f.unlink(missing_ok=True)
    return problems


# --- links ---------------------------------------------------------------------------------

def link_exists(ifname: str, netns: str | None = None) -> bool:
    if netns is None:
        return Path("/sys/class/net", ifname).exists()
    return run(["ip", "-n", netns, "link", "show", "dev", ifname], check=False).returncode == 0


def ensure_bridge() -> None:
    """The LAN bridge in the root namespace with the ops host's address on it."""
    if not link_exists(T.BRIDGE):
        # A bridge takes the lowest MAC of its ports unless given one: fix it, so the ops
        # host's MAC does not change whenever a host is rebuilt.
        run(["ip", "link", "add", T.BRIDGE, "address", T.mac_for(T.OPS_ADDR), "type", "bridge"],
            what="create bridge")
    run(["ip", "addr", "replace", f"{T.OPS_ADDR}/{T.LAN_PREFIXLEN}", "dev", T.BRIDGE])
    run(["ip", "link", "set", T.BRIDGE, "up"])


def ensure_lan_link(name: str) -> None:
    """veth rsl-NAME (root, on the bridge) <-> eth0 (in the host)."""
    host = T.HOSTS[name]
    root_end = host.lan_link
    if link_exists(root_end) and not link_exists("eth0", host.netns):
        run(["ip", "link", "delete", root_end], check=False)
    if not link_exists(root_end):
        run(["ip", "link", "add", root_end, "address", T.mac_for(host.address, port=True),
             "type", "veth", "peer", "name", "eth0", "address", T.mac_for(host.address),
             "netns", host.netns], what=f"create link {root_end}")
    run(["ip", "link", "set", root_end, "master", T.BRIDGE, "up"])


def ensure_p2p_link(ns_a: str, if_a: str, addr_a: str, ns_b: str, if_b: str,
                    addr_b: str) -> None:
    """A veth pair created directly inside two namespaces (never visible in the root one);
    MACs derive from the addresses the ends will carry."""
    if link_exists(if_a, ns_a) and link_exists(if_b, ns_b):
        return
    for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
        if link_exists(ifname, ns):
            run(["ip", "-n", ns, "link", "delete", ifname], check=False)
    run(["ip", "link", "add", if_a, "address", T.mac_for(addr_a), "netns", ns_a, "type", "veth",
         "peer", "name", if_b, "address", T.mac_for(addr_b), "netns", ns_b],
        what=f"create link {ns_a}:{if_a} <-> {ns_b}:{if_b}")


def lab_links() -> list[str]:
    """Links in the root namespace that belong to the lab (name starts with rsl-)."""
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(T.LINK_PREFIX))
    except OSError:
        return []


def delete_root_links() -> list[str]:
    """Delete every rsl-* link of the root namespace, the bridge last. Returns problems."""
    problems = []
    for name in sorted(lab_links(), key=lambda n: n == T.BRIDGE):
        if link_exists(name):
            proc = run(["ip", "link", "delete", name], check=False)
            if proc.returncode != 0 and link_exists(name):
                problems.append(f"link {name}: {proc.stderr.strip()}")
    return problems
