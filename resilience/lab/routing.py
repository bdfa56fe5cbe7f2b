"""Addresses, routes and nftables of the lab, and which of gw1's two lines is active.

The "upstream change" is modelled by one route: the internet namespace sends the site's
public prefix (198.19.10.0/24) to the ISP of the active line. In reality that is a DNS or BGP
change made outside the site; here :func:`set_upstream_line` stands in for it. gw1's own
default route is the part a failover playbook changes on the gateway.
"""

from __future__ import annotations

import ipaddress
import json

from ..errors import ResilienceError
from . import layout as L
from . import topology as T
from .system import run

LINK_PREFIXLEN = 30
NFT_SITE_TABLE = "rsl_site"  # gw1: DNAT of the public address + masquerade outbound
NFT_LINE_TABLE = "rsl_line_{}"  # gw1 and the ISP: a dead line (fault)


def _batch(netns: str, commands: list[str]) -> None:
    """Run ``ip -n NETNS -batch -`` with ``-force`` so one benign error does not stop the rest."""
    proc = run(["ip", "-n", netns, "-force", "-batch", "-"], input="\n".join(commands) + "\n",
               check=False)
    errors = [ln for ln in proc.stderr.splitlines()
              if ln.strip() and "File exists" not in ln and "No such file" not in ln
              and "Cannot find device" not in ln and "Command failed" not in ln]
    if errors:
        raise ResilienceError(f"network setup of {netns}: {errors[0].strip()}")


def _link_net(addr: str) -> str:
    return str(ipaddress.ip_interface(f"{addr}/{LINK_PREFIXLEN}").network)


def configure_lan_host(name: str) -> None:
    """Address, VIP and default route of a host on the site LAN (not gw1)."""
    host = T.HOSTS[name]
    cmds = ["link set lo up", "link set eth0 up",
            f"addr replace {host.address}/{T.LAN_PREFIXLEN} dev eth0"]
    for extra in host.extra_addrs:  # lb1's VIP: a secondary address, as keepalived would add
        cmds.append(f"addr replace {extra}/{T.LAN_PREFIXLEN} dev eth0")
    cmds.append(f"route replace default via {T.GW_LAN_ADDR} dev eth0")
    _batch(host.netns, cmds)


def configure_gateway(active: str) -> None:
    """gw1: LAN side, both uplinks, the public address, source routing per line, NAT."""
    gw = T.HOSTS["gw1"]
    cmds = ["link set lo up", "link set eth0 up",
            f"addr replace {gw.address}/{T.LAN_PREFIXLEN} dev eth0",
            f"addr replace {T.PUBLIC_ADDR}/32 dev lo"]
    for ln in T.LINES.values():
        cmds += [f"link set {ln.gw_if} up",
                 f"addr replace {ln.gw_addr}/{LINK_PREFIXLEN} dev {ln.gw_if}",
                 # Traffic sourced from a line's own address leaves by that line, whichever
                 # is active: this is what lets a prober test the standby line.
                 f"route replace default via {ln.isp_addr} dev {ln.gw_if} table {ln.table}"]
        if not _has_rule(gw.netns, ln.gw_addr, ln.table):
            cmds.append(f"rule add from {ln.gw_addr}/32 table {ln.table} priority {1000 + ln.table}")
    act = T.line(active)
    cmds.append(f"route replace default via {act.isp_addr} dev {act.gw_if}")
    _batch(gw.netns, cmds)
    apply_nft("gw1", site_ruleset())


def _has_rule(netns: str, source: str, table: int) -> bool:
    proc = run(["ip", "-n", netns, "-j", "rule", "show"], check=False)
    try:
        rules = json.loads(proc.stdout or "[]")
    except ValueError:
        return False
    return any(r.get("src") == source and str(r.get("table")) == str(table) for r in rules)


def configure_isp(line_name: str) -> None:
    """An ISP: toward gw1 and toward the internet; routes the site's prefixes to gw1."""
    ln = T.LINES[line_name]
    cmds = ["link set lo up", f"link set {ln.isp_if} up", f"link set {ln.isp_inet_if} up",
            f"addr replace {ln.isp_addr}/{LINK_PREFIXLEN} dev {ln.isp_if}",
            f"addr replace {ln.isp_inet_addr}/{LINK_PREFIXLEN} dev {ln.isp_inet_if}",
            f"route replace {T.INTERNET_NET} via {ln.inet_addr} dev {ln.isp_inet_if}",
            f"route replace {T.PUBLIC_NET} via {ln.gw_addr} dev {ln.isp_if}",
            f"route replace {T.LAN_NET} via {ln.gw_addr} dev {ln.isp_if}"]
    _batch(ln.isp, cmds)


def configure_internet(active: str) -> None:
    """The internet: probe targets and the client address on lo, routes back to each line's
    customer link, and the upstream route of the site's public prefix."""
    inet = T.HOSTS["internet"]
    cmds = ["link set lo up"] + [f"addr replace {a}/32 dev lo" for a in inet.extra_addrs]
    for ln in T.LINES.values():
        cmds += [f"link set {ln.inet_if} up",
                 f"addr replace {ln.inet_addr}/{LINK_PREFIXLEN} dev {ln.inet_if}",
                 f"route replace {_link_net(ln.gw_addr)} via {ln.isp_inet_addr} dev {ln.inet_if}"]
    _batch(inet.netns, cmds)
    set_upstream_line(active)


def site_ruleset() -> str:
    """gw1's NAT: the public address :80 to the VIP; LAN traffic leaving by a line is
    masqueraded (the LAN prefix is private to the site)."""
    wan = ", ".join(f'"{ln.gw_if}"' for ln in T.LINES.values())
    return f"""table ip {NFT_SITE_TABLE}
delete table ip {NFT_SITE_TABLE}
table ip {NFT_SITE_TABLE} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {T.PUBLIC_ADDR} tcp dport 80 dnat to {T.VIP_ADDR}:80
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr {T.PUBLIC_ADDR} tcp dport 80 dnat to {T.VIP_ADDR}:80
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname {{ {wan} }} ip saddr {T.LAN_NET} masquerade
    }}
}}
"""


def apply_nft(host: str, ruleset: str) -> None:
    """Load ``ruleset`` atomically into the host's netns (and keep a copy in its etc/)."""
    path = L.host_dir(host) / "etc" / "nftables.conf"
    path.write_text(ruleset)
    run(["ip", "netns", "exec", T.HOSTS[host].netns, "nft", "-f", str(path)],
        what=f"nftables on {host}")


def nft_tables(host: str) -> set[str]:
    """Names of the nftables tables in the host's netns (empty if it is not up)."""
    proc = run(["ip", "netns", "exec", T.HOSTS[host].netns, "nft", "list", "tables"],
               check=False)
    return {ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("table ")}


# --- lines ---------------------------------------------------------------------------------

def _route_gateway(netns: str, prefix: str) -> str | None:
    proc = run(["ip", "-n", netns, "-j", "route", "show", prefix], check=False)
    if proc.returncode != 0:
        return None
    try:
        routes = json.loads(proc.stdout or "[]")
    except ValueError:
        return None
    return next((r.get("gateway") for r in routes if r.get("gateway")), None)


def line_state() -> dict[str, str | None]:
    """Which line each side uses: ``{"gateway": gw1's default, "upstream": the internet's
    route to the public prefix}``; a value is None when the route is missing."""
    by_gw = {ln.isp_addr: ln.name for ln in T.LINES.values()}
    by_up = {ln.isp_inet_addr: ln.name for ln in T.LINES.values()}
    return {
        "gateway": by_gw.get(_route_gateway("gw1", "default") or ""),
        "upstream": by_up.get(_route_gateway("internet", T.PUBLIC_NET) or ""),
    }


def active_line() -> str | None:
    """'primary' or 'standby' when gw1 and the upstream agree, else None (lab down, or a
    failover half done)."""
    state = line_state()
    return state["gateway"] if state["gateway"] == state["upstream"] else None


def set_upstream_line(name: str) -> None:
    """Point the internet's route to the site's public prefix at the ISP of line ``name``
    (stands in for the DNS/BGP change of a real failover)."""
    ln = T.line(name)
    _batch("internet", [f"route replace {T.PUBLIC_NET} via {ln.isp_inet_addr} dev {ln.inet_if} "
                        f"src {T.CLIENT_ADDR}"])


def set_gateway_line(name: str) -> None:
    """Point gw1's default route at the ISP of line ``name``."""
    ln = T.line(name)
    _batch("gw1", [f"route replace default via {ln.isp_addr} dev {ln.gw_if}"])


def set_active_line(name: str, *, gateway: bool = True, upstream: bool = True) -> dict:
    """Make line ``name`` the active one: gw1's default route and/or the upstream route.

    A failover playbook changes gw1 itself and calls this with ``gateway=False``. Returns
    :func:`line_state` afterwards. Raises UsageError for an unknown line name.
    """
    T.line(name)
    if gateway:
        set_gateway_line(name)
    if upstream:
        set_upstream_line(name)
    return line_state()


def line_down(name: str) -> list[str]:
    """Fault: drop every packet on line ``name`` at both ends (gw1 and its ISP). The link
    stays up, like a dead line whose modem still shows a carrier. Returns what was done."""
    ln = T.line(name)
    table = NFT_LINE_TABLE.format(name)
    done = []
    for host, ifname in (("gw1", ln.gw_if), (ln.isp, ln.isp_if)):
        ruleset = f"""table netdev {table}
delete table netdev {table}
table netdev {table} {{
    chain ingress {{
        type filter hook ingress device "{ifname}" priority -500; policy drop;
    }}
    chain egress {{
        type filter hook egress device "{ifname}" priority -500; policy drop;
    }}
}}
"""
        run(["ip", "netns", "exec", T.HOSTS[host].netns, "nft", "-f", "-"], input=ruleset,
            what=f"line-down on {host}")
        done.append(f"{host}: drop all on {ifname} (nft table netdev {table})")
    return done



def line_lossy(name: str) -> list[str]:
    """Fault: gw1 drops every other ICMP echo request it sends out by line ``name`` (a line
    that loses half the probes, for the no-flapping test); other traffic passes. Same nft table
    as :func:`line_down`, so :func:`line_up` undoes either. Returns what was done."""
    ln = T.line(name)
    table = NFT_LINE_TABLE.format(name)
    ruleset = f"""table netdev {table}
delete table netdev {table}
table netdev {table} {{
    chain egress {{
        type filter hook egress device "{ln.gw_if}" priority -500; policy accept;
        icmp type echo-request numgen inc mod 2 == 0 drop
    }}
}}
"""
    run(["ip", "netns", "exec", T.HOSTS["gw1"].netns, "nft", "-f", "-"], input=ruleset,
        what="line-lossy on gw1")
    return [f"gw1: drop every other ICMP echo request out of {ln.gw_if} (nft table netdev {table})"]

def line_up(name: str) -> list[str]:
    """Undo :func:`line_down` for line ``name`` (no-op when the line is not faulted)."""
    ln = T.line(name)
    table = NFT_LINE_TABLE.format(name)
    done = []
    for host, ifname in (("gw1", ln.gw_if), (ln.isp, ln.isp_if)):
        if table in nft_tables(host):
            run(["ip", "netns", "exec", T.HOSTS[host].netns, "nft", "delete", "table",
                 "netdev", table], what=f"line-up on {host}")
            done.append(f"{host}: removed drop on {ifname}")
    return done


def line_faults() -> dict[str, bool]:
    """{line: True when a line-down fault is in place on either end}."""
    gw_tables = nft_tables("gw1")
    out = {}
    for ln in T.LINES.values():
        table = NFT_LINE_TABLE.format(ln.name)
        out[ln.name] = table in gw_tables or table in nft_tables(ln.isp)
    return out
