"""What may be blocked: CIDR validation and the networks no block may ever cover.

Pure functions (no I/O beyond reading the inventory), so the safety rules are unit-tested on
their own. The balancer-side module (``playbooks/library/resilience_nft_block.py``) checks the
same protected list again, so a playbook run by hand cannot cut the platform off either.

Rules (docs/blocking.md):

- a CIDR is an address (``/32`` or ``/128`` implied) or ``address/prefix`` with no host bits
  set — ``198.19.0.5/24`` is refused with the network it probably meant, because silently
  widening a typo can block thousands of addresses;
- IPv4 prefixes shorter than /8 and IPv6 prefixes shorter than /32 are refused as absurdly wide;
- nothing may overlap the ops host (``control.ops_addresses``), ``control.protected``, any
  inventory host's address, or the special networks (loopback, unspecified, link-local,
  multicast, broadcast) — blocking those breaks the balancer itself.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..config import Config

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MIN_PREFIX = {4: 8, 6: 32}
MAX_TTL = 365 * 86400
DEFAULT_TTL = "24h"
MAX_REASON = 500

SPECIAL = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/32", "unspecified address"),
    ("::/128", "unspecified address"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
)


@dataclass(frozen=True)
class Protected:
    """A network no block may overlap, and why (shown in the refusal)."""

    network: Network
    why: str


def parse_cidr(text: str) -> Network:
    """The network ``text`` names, or UsageError (one line) saying what is wrong with it."""
    raw = str(text).strip()
    if not raw:
        raise UsageError("empty CIDR")
    try:
        loose = ipaddress.ip_network(raw, strict=False)
    except ValueError as exc:
        raise UsageError(f"invalid CIDR {raw!r}: {exc}") from None
    minimum = MIN_PREFIX[loose.version]
    if loose.prefixlen < minimum:
        raise UsageError(f"refusing to block {raw}: wider than /{minimum} (IPv{loose.version})")
    if loose.version == 6 and loose.network_address.ipv4_mapped is not None:
        raise UsageError(f"{raw}: give IPv4-mapped addresses as plain IPv4")
    try:
        return ipaddress.ip_network(raw, strict=True)
    except ValueError:
        raise UsageError(f"{raw} has host bits set; did you mean {loose}?") from None


def parse_cidrs(texts: list[str] | tuple[str, ...]) -> list[Network]:
    """Parse every CIDR, drop duplicates (order kept); UsageError on the first bad one."""
    if not texts:
        raise UsageError("give at least one CIDR")
    out: list[Network] = []
    for t in texts:
        net = parse_cidr(t)
        if net not in out:
            out.append(net)
    return out


def parse_ttl(text: str) -> int:
    """Seconds of a ``--ttl`` such as ``90s``, ``30m``, ``24h``, ``7d`` (1 s to 365 d)."""
    from ..config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--ttl: {exc}") from None
    if not 1 <= seconds <= MAX_TTL:
        raise UsageError(f"--ttl: must be between 1s and 365d, got {text!r}")
    return seconds


def clean_reason(text: str | None) -> str:
    """The ``--reason``: one non-empty line of at most 500 characters."""
    reason = " ".join(str(text or "").split())
    if not reason:
        raise UsageError("--reason: give a reason (it is recorded with the block)")
    if len(reason) > MAX_REASON:
        raise UsageError(f"--reason: at most {MAX_REASON} characters")
    return reason


def protected_networks(config: Config) -> list[Protected]:
    """Everything no block may overlap: the ops host, ``control.protected``, every inventory
    host's address (``ansible_host`` when it is an address) and the special networks."""
    prot = [Protected(ipaddress.ip_network(a), "the ops host (control.ops_addresses)")
            for a in config.control.ops_addresses]
    prot += [Protected(ipaddress.ip_network(n), "control.protected") for n in config.control.protected]
    if config.inventory is not None:
        from ..inventory import load_inventory

        inv = load_inventory(config.inventory)
        for name in sorted(inv.hosts):
            try:
                addr = ipaddress.ip_address(inv.address(name))
            except ValueError:
                continue  # a DNS name: nothing to compare a CIDR with
            prot.append(Protected(ipaddress.ip_network(addr), f"inventory host {name}"))
    prot += [Protected(ipaddress.ip_network(n), why) for n, why in SPECIAL]
    return prot


def conflicts(net: Network, protected: list[Protected]) -> list[Protected]:
    """The protected networks ``net`` overlaps (either contains the other), narrowest first:
    "inventory host lb1" says more than the /24 around it."""
    hits = [p for p in protected if p.network.version == net.version and p.network.overlaps(net)]
    return sorted(hits, key=lambda p: -p.network.prefixlen)


def refuse_protected(nets: list[Network], protected: list[Protected]) -> None:
    """UsageError naming the first CIDR that overlaps a protected network, and which one."""
    for net in nets:
        hit = conflicts(net, protected)
        if hit:
            p = hit[0]
            raise UsageError(f"refusing to block {net}: it overlaps {p.network}, {p.why}")


def extravar_protected(protected: list[Protected]) -> list[str]:
    """The protected networks as the playbook's ``block_protected`` list."""
    return sorted({str(p.network) for p in protected})
