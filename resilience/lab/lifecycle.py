"""`lab up` and `lab down`.

``up`` is a sequence of *ensure* steps: each looks at what is there and only builds or starts
what is missing or broken, so a second ``up`` on a healthy lab changes nothing, and a
half-up lab (a host whose anchor died, a stopped service) gets completed. ``down`` kills every
process of every lab namespace, deletes the namespaces and the rsl-* links, and then checks
that nothing of the lab is left.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..errors import ResilienceError
from . import layout as L
from . import netns, provision, routing, services, site
from . import topology as T
from .keys import ensure_secrets, ensure_ssh_keys
from .lock import lab_lock
from .status import collect as collect_status
from .system import all_pids, netns_inode_of, pid_alive, preflight, read_pid, require_root

Progress = Callable[[str], None]


def _ensure_host(name: str) -> bool:
    """Reuse a running host, else rebuild it from nothing. True when it was (re)built."""
    if netns.anchor_pid(name) is not None:
        return False
    problems = netns.destroy_host(name)
    if problems:
        raise ResilienceError(f"cannot clean up the old {name}: {problems[0]}")
    netns.create_host(name)
    return True


def _network(active: str) -> None:
    netns.ensure_bridge()
    for h in T.HOSTS.values():
        if h.on_lan:
            netns.ensure_lan_link(h.name)
    for ln in T.LINES.values():
        netns.ensure_p2p_link("gw1", ln.gw_if, ln.gw_addr, ln.isp, ln.isp_if, ln.isp_addr)
        netns.ensure_p2p_link(ln.isp, ln.isp_inet_if, ln.isp_inet_addr, "internet", ln.inet_if,
                              ln.inet_addr)
    jobs = [lambda n=h.name: routing.configure_lan_host(n)
            for h in T.HOSTS.values() if h.on_lan and h.name != "gw1"]
    jobs += [lambda: routing.configure_gateway(active), lambda: routing.configure_internet(active)]
    jobs += [lambda n=name: routing.configure_isp(n) for name in T.LINES]
    with ThreadPoolExecutor(max_workers=4) as ex:
        for fut in [ex.submit(j) for j in jobs]:
            fut.result()


def _start_host_services(name: str) -> list[str]:
    started = []
    for svc in T.HOSTS[name].services:
        if services.start(name, svc):
            started.append(f"started {svc} on {name}")
    return started


def up(progress: Progress | None = None) -> dict:
    """Bring the whole lab up (idempotent); return {"elapsed_s", "phases_s", "changed",
    "status"}.

    Raises UsageError when not root or a required program is missing (with the apt-get
    line), ResilienceError when a host or service cannot be brought up.
    """
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    mark = [t0]

    def say(step: str) -> None:
        # Time spent in the step that just ended, and progress for -v.
        now = time.monotonic()
        if len(mark) > 1:
            phases[mark[1]] = round(now - mark[0], 2)
        mark[:] = [now, step]
        if progress:
            progress(step)

    preflight("up")
    changed: list[str] = []
    with lab_lock():
        say("keys")
        for sub in ("hosts", "evidence"):
            (L.lab_dir() / sub).mkdir(parents=True, exist_ok=True)
        before = {p: L.secret_path(p).exists() for p in L.SECRET_FILES}
        ensure_secrets()
        changed += [f"created secret {L.secret_path(p)}" for p, had in before.items() if not had]
        had_keys = L.known_hosts().exists()
        ensure_ssh_keys()
        if not had_keys:
            changed.append("generated SSH keys and known_hosts")

        say("namespaces")
        with ThreadPoolExecutor(max_workers=len(T.HOSTS)) as ex:
            built = dict(zip(T.HOSTS, ex.map(_ensure_host, T.HOSTS), strict=True))
        changed += [f"built host {n}" for n, b in built.items() if b]

        say("network")
        state = routing.line_state()
        active = state["upstream"] or state["gateway"] or T.DEFAULT_LINE
        _network(active)

        for web in T.WEB_HOSTS:
            root = L.site_dir(web)
            if not root.exists() or not any(root.iterdir()):
                site.write_site(root)
                changed.append(f"wrote the portal site on {web}")

        say("services")
        # One thread per host; s3 is first in the roster, so SeaweedFS (the slowest) starts
        # right away and the others come up while it boots.
        with ThreadPoolExecutor(max_workers=len(T.HOSTS)) as ex:
            futs = [ex.submit(_start_host_services, n) for n, h in T.HOSTS.items() if h.services]
            for fut in futs:
                changed += fut.result()

        say("data")
        changed += provision.ensure_database()
        changed += provision.ensure_bucket()

        say("health check")
        st = collect_status()
        say("done")
    bad = [n for n, h in st["hosts"].items() if not h["healthy"]]
    if bad:
        raise ResilienceError(f"lab is up but not healthy: {', '.join(bad)} "
                              "(see: resilience lab status)", details={"status": st})
    return {"elapsed_s": round(time.monotonic() - t0, 2), "phases_s": phases, "changed": changed,
            "status": st}


def leftovers() -> dict[str, list]:
    """What of the lab exists on this machine: namespaces, rsl-* links, mounts, processes."""
    names = {h.netns for h in T.HOSTS.values()}
    ns_left = sorted(n for n in names if netns.netns_path(n).exists())
    mounts = []
    try:
        with open("/proc/self/mountinfo") as f:
            lab = str(L.lab_dir())
            for line in f:
                mnt = line.split()[4]
                if (mnt.startswith(str(netns.NETNS_DIR) + "/") and mnt.rsplit("/", 1)[1] in names) \
                        or mnt.startswith(lab):
                    mounts.append(mnt)
    except OSError:
        pass
    procs: set[int] = set()
    inodes = set()
    ours = _lab_like_pids()
    for h in T.HOSTS:
        with contextlib.suppress(OSError, ValueError):
            inodes.add(int(L.netns_inode_file(h).read_text().strip()))
        piddir = L.host_dir(h) / "pids"
        if piddir.is_dir():
            for f in piddir.glob("*.pid"):
                pid = read_pid(f)
                if pid_alive(pid) and pid in ours:
                    procs.add(pid)
    if inodes:
        procs |= {p for p in all_pids() if netns_inode_of(p) in inodes}
    return {"netns": ns_left, "links": netns.lab_links(), "mounts": mounts,
            "processes": sorted(procs)}


def _lab_like_pids() -> set[int]:
    """Pids whose command line mentions the lab folder or a lab daemon: a recorded pid that
    was recycled by an unrelated program is not ours to report."""
    out = set()
    marks = (str(L.lab_dir()).encode(), b"sleep\x00infinity", b"haproxy", b"weed", b"sshd",
             b"nginx", b"postgres")
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if any(m in cmd for m in marks):
            out.add(pid)
    return out


def down(purge: bool = False, progress: Progress | None = None) -> dict:
    """Stop everything and remove namespaces, links and mounts; keep the lab folder's data
    unless ``purge``. Returns {"elapsed_s", "removed", "purged"}; raises ResilienceError when
    something could not be removed."""
    say = progress or (lambda _m: None)
    require_root("down")
    t0 = time.monotonic()
    removed: list[str] = []
    problems: list[str] = []
    with lab_lock():
        if netns.anchor_pid("db1") is not None:
            say("stopping PostgreSQL")
            try:
                if services.stop("db1", "postgresql"):
                    removed.append("stopped postgresql on db1")
            except ResilienceError as exc:
                problems.append(str(exc))
        say("hosts")
        with ThreadPoolExecutor(max_workers=len(T.HOSTS)) as ex:
            existed = {n: netns.netns_path(T.HOSTS[n].netns).exists() for n in T.HOSTS}
            results = dict(zip(T.HOSTS, ex.map(netns.destroy_host, T.HOSTS), strict=True))
        for name, probs in results.items():
            problems += probs
            if existed[name]:
                removed.append(f"removed host {name}")
        say("links")
        links = netns.lab_links()
        problems += netns.delete_root_links()
        removed += [f"removed link {ln}" for ln in links]
        left = leftovers()
        if any(left.values()):
            problems.append("left behind: " + "; ".join(f"{k}: {', '.join(map(str, v))}"
                                                         for k, v in left.items() if v))
        if purge and not problems:
            shutil.rmtree(L.lab_dir(), ignore_errors=True)
    if problems:
        raise ResilienceError(f"lab down incomplete: {problems[0]}",
                              details={"problems": problems})
    return {"elapsed_s": round(time.monotonic() - t0, 2), "removed": removed, "purged": purge}
