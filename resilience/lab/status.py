"""`lab status`: what runs, where, and whether it answers.

The shape (a stable contract; tests and other features read it)::

    {"ok": bool, "vip": "http://198.18.0.80/", "s3_endpoint": "http://198.18.0.41:8333",
     "public_url": "http://198.19.10.80/", "active_line": "primary"|"standby"|null,
     "lines": {"primary": {"gateway_active": bool, "upstream_active": bool, "fault": bool}, ...},
     "hosts": {NAME: {"netns", "address", "anchor_pid", "healthy", "services": {svc: bool}}}}

Web hosts add "url"; db1 adds "dsn" (superuser, with the password: a lab-only test aid) and
"superuser_password_file"; lb1 adds "vip" and "admin_socket"; s3 adds "endpoint".
Hosts with no daemon still have checks: gw1 "nat" (its nftables NAT table is loaded),
the ISPs "forwarding", the internet "upstream" (a route to the site's public prefix).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from . import layout as L
from . import routing, services
from . import topology as T
from .netns import anchor_pid
from .system import require_root, run


def superuser_dsn() -> str | None:
    """postgresql:// DSN of db1's superuser including the password (None without a secret)."""
    try:
        pw = L.secret_path("db_superuser_password").read_text().strip()
    except OSError:
        return None
    return (f"postgresql://{T.DB_SUPERUSER}:{quote(pw, safe='')}@{T.DB1_ADDR}:{T.DB_PORT}/"
            f"{T.DB_NAME}")


def _host_status(name: str) -> dict:
    h = T.HOSTS[name]
    anchor = anchor_pid(name)
    checks: dict[str, bool] = {}
    for svc in h.services:
        checks[svc] = anchor is not None and services.check(name, svc)
    if name == "gw1":
        checks["nat"] = anchor is not None and routing.NFT_SITE_TABLE in routing.nft_tables(name)
    if name in ("isp1", "isp2"):
        # /proc/sys/net shows the netns of the reader, so read it through a process in it.
        checks["forwarding"] = anchor is not None and \
            (run(["nsenter", "-t", str(anchor), "-n", "cat",
                          "/proc/sys/net/ipv4/ip_forward"], check=False).stdout.strip() == "1")
    if name == "internet":
        checks["upstream"] = anchor is not None and routing.line_state()["upstream"] is not None
    address = h.address
    if address is None:
        address = T.CLIENT_ADDR if name == "internet" else \
            next(ln.isp_addr for ln in T.LINES.values() if ln.isp == name)
    entry = {"netns": h.netns, "address": address, "anchor_pid": anchor,
             "healthy": anchor is not None and all(checks.values()), "services": checks}
    if name in T.WEB_HOSTS:
        entry["url"] = f"http://{h.address}/"
    if name == "db1":
        entry["dsn"] = superuser_dsn()
        # The same DSN naming a libpq password file: survives the CLI's redaction of passwords.
        entry["dsn_via_file"] = (f"postgresql://{T.DB_SUPERUSER}@{T.DB1_ADDR}:{T.DB_PORT}/"
                                 f"{T.DB_NAME}?passfile={L.pgpass_file()}")
        entry["superuser_password_file"] = str(L.secret_path("db_superuser_password"))
    if name == "lb1":
        entry["vip"] = T.VIP_URL
        entry["admin_socket"] = str(L.haproxy_socket())
    if name == "s3":
        entry["endpoint"] = T.S3_ENDPOINT
    return entry


def collect() -> dict:
    """The lab's status (see the module doc). Needs root; never raises for a down lab."""
    require_root("status")
    with ThreadPoolExecutor(max_workers=len(T.HOSTS)) as ex:
        hosts = dict(zip(T.HOSTS, ex.map(_host_status, T.HOSTS), strict=True))
    state = routing.line_state() if hosts["gw1"]["anchor_pid"] and \
        hosts["internet"]["anchor_pid"] else {"gateway": None, "upstream": None}
    faults = routing.line_faults() if hosts["gw1"]["anchor_pid"] else \
        {n: False for n in T.LINES}
    lines = {n: {"gateway_active": state["gateway"] == n, "upstream_active": state["upstream"] == n,
                 "fault": faults.get(n, False)} for n in T.LINES}
    active = state["gateway"] if state["gateway"] == state["upstream"] else None
    return {
        "ok": all(h["healthy"] for h in hosts.values()),
        "vip": T.VIP_URL,
        "s3_endpoint": T.S3_ENDPOINT,
        "public_url": T.PUBLIC_URL,
        "active_line": active,
        "lines": lines,
        "lab_dir": str(L.lab_dir()),
        "hosts": hosts,
    }
