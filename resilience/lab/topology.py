"""The lab's address plan and host roster: the one place other code reads them from.

Every address lives in 198.18.0.0/15 (RFC 2544 benchmarking space), so no lab packet can be
mistaken for real traffic. The root namespace is the "ops host": it only gets an address on
the lab bridge; its routes are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- the site LAN (bridge in the root namespace) -------------------------------------------
BRIDGE = "rsl-lan"
LINK_PREFIX = "rsl-"  # every link the lab creates in the root namespace starts with this
LAN_PREFIXLEN = 24
LAN_NET = "198.18.0.0/24"
OPS_ADDR = "198.18.0.1"

WEB1_ADDR = "198.18.0.11"
WEB2_ADDR = "198.18.0.12"
DB1_ADDR = "198.18.0.21"
LB1_ADDR = "198.18.0.31"
VIP_ADDR = "198.18.0.80"
S3_ADDR = "198.18.0.41"
S3_PORT = 8333
GW_LAN_ADDR = "198.18.0.254"

# --- the outside world ---------------------------------------------------------------------
PUBLIC_NET = "198.19.10.0/24"
PUBLIC_ADDR = "198.19.10.80"  # the site's public address, on gw1's lo, DNAT to the VIP
INTERNET_NET = "198.19.0.0/24"
PROBE_TARGETS = ("198.19.0.1", "198.19.0.2", "198.19.0.3")
CLIENT_ADDR = "198.19.0.100"  # the internet namespace's "user" address

VIP_URL = f"http://{VIP_ADDR}/"
PUBLIC_URL = f"http://{PUBLIC_ADDR}/"
S3_ENDPOINT = f"http://{S3_ADDR}:{S3_PORT}"
S3_BUCKET = "resilience"
S3_ACCESS_KEY_ID = "resilience-lab"  # fixed so the checked-in config can name it
S3_REGION = "us-east-1"

DB_NAME = "portal"
DB_SUPERUSER = "postgres"
DB_BACKUP_ROLE = "resilience_backup"
DB_PORT = 5432
PG_BIN = "/usr/lib/postgresql/15/bin"

SITE_NAME = "portal"
SITE_PATH = "/var/www/portal"
HAPROXY_BACKEND = "portal"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"  # the path as seen inside lb1


@dataclass(frozen=True)
class Line:
    """One uplink of gw1: gw1's end, the ISP's end and the ISP's link to the internet."""

    name: str
    isp: str
    gw_if: str
    gw_addr: str
    isp_if: str
    isp_addr: str
    isp_inet_if: str
    isp_inet_addr: str
    inet_if: str
    inet_addr: str
    table: int  # gw1 routing table for traffic sourced from this line's address


LINES: dict[str, Line] = {
    "primary": Line("primary", "isp1", "wan-primary", "198.18.1.1", "to-gw1", "198.18.1.2",
                    "to-inet", "198.18.3.1", "to-isp1", "198.18.3.2", 101),
    "standby": Line("standby", "isp2", "wan-standby", "198.18.2.1", "to-gw1", "198.18.2.2",
                    "to-inet", "198.18.4.1", "to-isp2", "198.18.4.2", 102),
}
DEFAULT_LINE = "primary"


@dataclass(frozen=True)
class Host:
    """A lab host: one network + mount + UTS namespace, anchored by a long-lived process."""

    name: str
    address: str | None  # its LAN address (None for hosts outside the site LAN)
    services: tuple[str, ...] = ()
    extra_addrs: tuple[str, ...] = field(default=())  # more /32s on lo (VIP, public, probes)

    @property
    def netns(self) -> str:
        return self.name

    @property
    def on_lan(self) -> bool:
        return self.address is not None

    @property
    def lan_link(self) -> str:
        """Name of the root-namespace end of this host's veth on the bridge."""
        return LINK_PREFIX + self.name


# Order matters: s3 first because SeaweedFS is the slowest to come up.
HOSTS: dict[str, Host] = {
    h.name: h
    for h in (
        Host("s3", S3_ADDR, ("s3", "sshd")),
        Host("web1", WEB1_ADDR, ("sshd", "nginx")),
        Host("web2", WEB2_ADDR, ("sshd", "nginx")),
        Host("db1", DB1_ADDR, ("sshd", "postgresql")),
        Host("lb1", LB1_ADDR, ("sshd", "haproxy"), (VIP_ADDR,)),
        Host("gw1", GW_LAN_ADDR, ("sshd",), (PUBLIC_ADDR,)),
        Host("isp1", None),
        Host("isp2", None),
        Host("internet", None, (), (*PROBE_TARGETS, CLIENT_ADDR)),
    )
}
WEB_HOSTS = ("web1", "web2")
SSH_HOSTS = tuple(n for n, h in HOSTS.items() if "sshd" in h.services)
# Every service name `lab fault stop/start` understands.
SERVICE_NAMES = ("sshd", "nginx", "haproxy", "postgresql", "s3")


def mac_for(addr: str, *, port: bool = False) -> str:
    """A fixed, locally administered MAC for the interface holding ``addr``.

    Stable MACs mean a rebuilt host answers with the MAC its neighbours already cached, so
    nobody waits for a stale ARP entry to expire. ``port`` gives the MAC of the root-side
    (bridge port) end of that host's veth.
    """
    octets = [int(o) for o in addr.split(".")]
    return ":".join(f"{b:02x}" for b in [0x06 if port else 0x02, 0x00, *octets])


def host(name: str) -> Host:
    """The named host, or a UsageError that lists the valid names."""
    from ..errors import UsageError

    if name not in HOSTS:
        raise UsageError(f"unknown lab host {name!r} (valid: {', '.join(HOSTS)})")
    return HOSTS[name]


def line(name: str) -> Line:
    """The named line ('primary' or 'standby'), or a UsageError naming the valid ones."""
    from ..errors import UsageError

    if name not in LINES:
        raise UsageError(f"unknown line {name!r} (valid: {', '.join(LINES)})")
    return LINES[name]
