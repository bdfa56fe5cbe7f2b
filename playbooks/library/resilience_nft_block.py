#!/usr/bin/python3
"""Ansible module: keep source blocks in an nftables table on the host it runs on.

The table (``inet resilience_block`` by default) holds two interval sets with timeouts, ``v4``
and ``v6``, and one chain hooked at prerouting, priority raw (-300), that drops every packet
whose source is in a set: before conntrack, before routing, so it covers the host's own
addresses (the VIP) and anything it forwards.

Contract (idempotent, check-mode safe):

- ``state: present`` creates the table if missing and repairs a drifted chain (missing or
  extra rules); a set of the wrong type or flags is an error, never silently recreated.
- ``add``: ``[{cidr, timeout (s), comment}]``. A CIDR already covered by an element (itself
  or a wider one) is *unchanged*, whatever its remaining time: a second run changes nothing.
  Elements inside a new, wider CIDR are replaced by it (the kernel rejects overlaps).
- ``remove``: CIDRs; removes every element inside each one. An element that is wider than
  a CIDR cannot be split: it is reported in ``still_covered`` and left alone.
- ``remove_all``: empties both sets. ``state: absent`` deletes the table.
- ``protected``: CIDRs that no added element may overlap; loopback and the address this
  module is controlled from (``SSH_CLIENT``) are always protected. A violation fails the task
  before anything changes.

Returns ``added``, ``removed``, ``unchanged``, ``replaced``, ``still_covered``, ``absent``
(CIDRs asked to be removed that were not blocked), ``created`` and ``elements`` (the sets'
content after the change, or as it would be in check mode).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re

DOCUMENTATION = r"""
module: resilience_nft_block
short_description: Block source CIDRs with nftables interval sets that have timeouts
options:
  table: {type: str, default: resilience_block}
  state: {type: str, default: present, choices: [present, absent]}
  add: {type: list, elements: dict, default: []}
  remove: {type: list, elements: str, default: []}
  remove_all: {type: bool, default: false}
  protected: {type: list, elements: str, default: []}
"""

SETS = {4: "v4", 6: "v6"}
SET_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}
CHAIN = "prerouting"
PRIORITY = -300
MAX_TIMEOUT = 366 * 86400
COMMENT_BYTES = 120  # nft allows 128; keep a margin for the ellipsis
ALWAYS_PROTECTED = ("127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128")
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


class BlockError(Exception):
    """A request this module refuses; the task fails with this message."""


def network(text) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR (or single address) as a network; host bits set is an error."""
    try:
        return ipaddress.ip_network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise BlockError(f"invalid CIDR {text!r}: {exc}") from None


def clean_comment(text) -> str:
    """A reason fit for an nft element comment: printable, one line, at most 120 bytes."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(text or ""))
    s = " ".join(s.split())
    raw = s.encode("utf-8")
    if len(raw) > COMMENT_BYTES:
        s = raw[:COMMENT_BYTES - 3].decode("utf-8", "ignore") + "..."
    return s


def script(table: str) -> str:
    """The nft script that creates the table (run only when it does not exist)."""
    return f"""table inet {table} {{
    set v4 {{ type ipv4_addr; flags interval, timeout; counter; comment "blocked sources (resilience block)"; }}
    set v6 {{ type ipv6_addr; flags interval, timeout; counter; comment "blocked sources (resilience block)"; }}
    chain {CHAIN} {{
        type filter hook prerouting priority {PRIORITY}; policy accept;
        ip saddr @v4 counter drop
        ip6 saddr @v6 counter drop
    }}
}}
"""


def _val_networks(val) -> list:
    """Networks an element value of ``nft -j`` covers (address, prefix or range)."""
    if isinstance(val, str):
        return [ipaddress.ip_network(val)]
    if isinstance(val, dict) and "prefix" in val:
        return [ipaddress.ip_network(f"{val['prefix']['addr']}/{val['prefix']['len']}")]
    if isinstance(val, dict) and "range" in val:
        lo, hi = (ipaddress.ip_address(a) for a in val["range"])
        return list(ipaddress.summarize_address_range(lo, hi))
    raise BlockError(f"unexpected set element {val!r}")


def elements_of(listing: dict) -> list[dict]:
    """The elements of both sets in a ``nft -j list table`` document, as plain dicts:
    ``cidr`` (text), ``family``, ``timeout``, ``expires`` (s), ``comment``, ``packets``,
    ``bytes``, and ``val`` (the nft value, needed to delete it)."""
    out = []
    for item in listing.get("nftables", []):
        s = item.get("set")
        if not s or s.get("name") not in SETS.values():
            continue
        for e in s.get("elem", []) or []:
            body = e.get("elem", e) if isinstance(e, dict) else e
            if isinstance(body, dict) and "val" in body:
                val, meta = body["val"], body
            else:
                val, meta = body, {}
            nets = _val_networks(val)
            counter = meta.get("counter") or {}
            out.append({
                "cidr": str(nets[0]) if len(nets) == 1 else f"{val['range'][0]}-{val['range'][1]}",
                "networks": nets,
                "family": nets[0].version,
                "timeout": meta.get("timeout"),
                "expires": meta.get("expires"),
                "comment": meta.get("comment", ""),
                "packets": counter.get("packets", 0),
                "bytes": counter.get("bytes", 0),
                "val": val,
            })
    return out


def _covers(outer: list, inner) -> bool:
    return any(inner.version == o.version and inner.subnet_of(o) for o in outer)


def _overlaps(a: list, b) -> bool:
    return any(b.version == n.version and b.overlaps(n) for n in a)


def plan(elements: list[dict], add: list[dict], remove: list[str], remove_all: bool,
         protected: list[str]) -> dict:
    """Decide what changes (pure). Returns ``{"delete": [element], "insert": [{net, timeout,
    comment}], "added", "removed", "unchanged", "replaced", "still_covered", "absent"}`` or
    raises BlockError for a protected or invalid request."""
    guard = [network(p) for p in (*ALWAYS_PROTECTED, *protected)]
    wanted: list[dict] = []
    for item in add:
        if not isinstance(item, dict) or "cidr" not in item:
            raise BlockError(f"an add item needs a cidr: {item!r}")
        net = network(item["cidr"])
        hit = [str(p) for p in guard if p.version == net.version and p.overlaps(net)]
        if hit:
            raise BlockError(f"refusing to block {net}: it overlaps protected {', '.join(hit)}")
        try:
            timeout = int(item.get("timeout", 86400))
        except (TypeError, ValueError):
            raise BlockError(f"{net}: timeout must be a number of seconds") from None
        if not 1 <= timeout <= MAX_TIMEOUT:
            raise BlockError(f"{net}: timeout must be between 1 s and {MAX_TIMEOUT} s")
        wanted.append({"net": net, "timeout": timeout, "comment": clean_comment(item.get("comment"))})
    # Within one request a CIDR inside another one is covered by it.
    wanted = [w for w in wanted
              if not any(o is not w and w["net"] != o["net"] and w["net"].version == o["net"].version
                         and w["net"].subnet_of(o["net"]) for o in wanted)]
    seen, unique = set(), []
    for w in wanted:
        if w["net"] not in seen:
            seen.add(w["net"])
            unique.append(w)

    result = {"delete": [], "insert": [], "added": [], "removed": [], "unchanged": [],
              "replaced": [], "still_covered": [], "absent": []}
    live = list(elements)
    if remove_all:
        result["delete"] = list(live)
        result["removed"] = [e["cidr"] for e in live]
        live = []
    for text in remove:
        net = network(text)
        inside = [e for e in live if all(n.version == net.version and n.subnet_of(net) for n in e["networks"])]
        wider = [e for e in live if e not in inside and _overlaps(e["networks"], net)]
        for e in inside:
            result["delete"].append(e)
            result["removed"].append(e["cidr"])
            live.remove(e)
        result["still_covered"] += [{"cidr": str(net), "by": e["cidr"]} for e in wider]
        if not inside and not wider:
            result["absent"].append(str(net))
    for w in unique:
        net = w["net"]
        if any(_covers(e["networks"], net) for e in live):
            result["unchanged"].append(str(net))
            continue
        inner = [e for e in live if _overlaps(e["networks"], net)]
        partial = [e for e in inner if not all(n.version == net.version and n.subnet_of(net) for n in e["networks"])]
        if partial:
            raise BlockError(f"cannot add {net}: it partly overlaps the range {partial[0]['cidr']}; remove that first")
        for e in inner:
            result["delete"].append(e)
            result["replaced"].append({"cidr": e["cidr"], "by": str(net)})
            live.remove(e)
        result["insert"].append(w)
        result["added"].append(str(net))
    return result


def _nft_val(net):
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def batch(table: str, p: dict) -> dict:
    """The ``nft -j -f -`` document that applies a plan in one transaction."""
    cmds = []
    for e in p["delete"]:
        cmds.append({"delete": {"element": {"family": "inet", "table": table, "name": SETS[e["family"]],
                                            "elem": [e["val"]]}}})
    for w in p["insert"]:
        elem = {"val": _nft_val(w["net"]), "timeout": w["timeout"]}
        if w["comment"]:
            elem["comment"] = w["comment"]
        cmds.append({"add": {"element": {"family": "inet", "table": table, "name": SETS[w["net"].version],
                                         "elem": [{"elem": elem}]}}})
    return {"nftables": cmds}


def _rule_shape(rule: dict) -> tuple | None:
    """``(protocol, set)`` for a ``<proto> saddr @set [counter] drop`` rule, else None."""
    expr = rule.get("expr", [])
    kinds = [next(iter(x)) for x in expr]
    if kinds not in (["match", "counter", "drop"], ["match", "drop"]):
        return None
    m = expr[0]["match"]
    left = m.get("left", {}).get("payload", {})
    if m.get("op") != "==" or left.get("field") != "saddr" or not str(m.get("right", "")).startswith("@"):
        return None
    return left.get("protocol"), m["right"][1:]


def drift(listing: dict) -> list[str]:
    """What differs from the expected shape, as fixable ``chain`` problems; raises BlockError
    for sets that cannot be fixed in place (wrong type or flags)."""
    sets = {i["set"]["name"]: i["set"] for i in listing.get("nftables", []) if "set" in i}
    problems = []
    for version, name in SETS.items():
        s = sets.get(name)
        if s is None:
            problems.append(f"set {name} missing")
        elif s.get("type") != SET_TYPES[version] or not {"interval", "timeout"} <= set(s.get("flags", [])):
            raise BlockError(f"set {name} exists with type {s.get('type')} flags {s.get('flags')}; "
                             "expected interval,timeout — delete the table (state=absent) and re-run")
    chains = [i["chain"] for i in listing.get("nftables", []) if "chain" in i]
    chain = next((c for c in chains if c.get("name") == CHAIN), None)
    if chain is None or chain.get("hook") != "prerouting" or chain.get("prio") != PRIORITY \
            or chain.get("policy") != "accept":
        problems.append("chain missing or hooked differently")
    rules = sorted(filter(None, (_rule_shape(i["rule"]) for i in listing.get("nftables", [])
                                 if "rule" in i and i["rule"].get("chain") == CHAIN)))
    n_rules = sum(1 for i in listing.get("nftables", []) if "rule" in i and i["rule"].get("chain") == CHAIN)
    if rules != [("ip", "v4"), ("ip6", "v6")] or n_rules != 2:
        problems.append("chain rules differ")
    return problems


def repair_script(table: str, listing: dict, problems: list[str]) -> str:
    """nft commands that bring the table back to the expected shape, keeping set elements."""
    lines = []
    sets = {i["set"]["name"] for i in listing.get("nftables", []) if "set" in i}
    for version, name in SETS.items():
        if name not in sets:
            lines.append(f"add set inet {table} {name} {{ type {SET_TYPES[version]}; flags interval, timeout; counter; }}")
    chains = {i["chain"]["name"] for i in listing.get("nftables", []) if "chain" in i}
    if CHAIN in chains:
        lines.append(f"delete chain inet {table} {CHAIN}")
    lines.append(f"add chain inet {table} {CHAIN} {{ type filter hook prerouting priority {PRIORITY}; policy accept; }}")
    lines.append(f"add rule inet {table} {CHAIN} ip saddr @v4 counter drop")
    lines.append(f"add rule inet {table} {CHAIN} ip6 saddr @v6 counter drop")
    return "\n".join(lines) + "\n"


def public(elements: list[dict]) -> list[dict]:
    """Elements without the internal keys, sorted, for the module's result."""
    keys = ("cidr", "family", "timeout", "expires", "comment", "packets", "bytes")
    return sorted(({k: e[k] for k in keys} for e in elements), key=lambda e: (e["family"], e["cidr"]))


def _ssh_client() -> list[str]:
    """The address this module is controlled from (never to be blocked), if known."""
    for var in ("SSH_CLIENT", "SSH_CONNECTION"):
        first = (os.environ.get(var) or "").split(" ")[0]
        try:
            addr = ipaddress.ip_address(first)
        except ValueError:
            continue
        return [str(ipaddress.ip_network(addr))]
    return []


def main() -> None:  # pragma: no cover - runs inside Ansible on the target host
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec=dict(
            table=dict(type="str", default="resilience_block"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            add=dict(type="list", elements="dict", default=[]),
            remove=dict(type="list", elements="str", default=[]),
            remove_all=dict(type="bool", default=False),
            protected=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    table = p["table"]
    if not _TABLE_RE.match(table):
        module.fail_json(msg=f"invalid table name {table!r}")
    nft = module.get_bin_path("nft", required=True)

    def run(args, data=None):
        rc, out, err = module.run_command([nft, *args], data=data, binary_data=True)
        if rc != 0:
            module.fail_json(msg=f"nft {' '.join(args)}: {err.strip() or out.strip()}", rc=rc)
        return out

    rc, out, err = module.run_command([nft, "-j", "list", "table", "inet", table])
    exists = rc == 0
    if not exists and "No such file or directory" not in err:
        module.fail_json(msg=f"nft list table inet {table}: {err.strip()}")
    listing = json.loads(out) if exists else {"nftables": []}

    if p["state"] == "absent":
        if exists and not module.check_mode:
            run(["delete", "table", "inet", table])
        module.exit_json(changed=exists, deleted=exists, elements=[])

    protected = []
    for item in p["protected"] + _ssh_client():
        try:
            protected.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            # An inventory host named by DNS name: it cannot be matched against a CIDR here.
            module.warn(f"protected entry {item!r} is not an address; not checked")
    try:
        problems = drift(listing) if exists else []
        elements = elements_of(listing)
        the_plan = plan(elements, p["add"], p["remove"], p["remove_all"], protected)
    except BlockError as exc:
        module.fail_json(msg=str(exc))
    changed = not exists or bool(problems) or bool(the_plan["delete"] or the_plan["insert"])
    if not module.check_mode:
        if not exists:
            run(["-f", "-"], data=script(table))
        elif problems:
            run(["-f", "-"], data=repair_script(table, listing, problems))
        if the_plan["delete"] or the_plan["insert"]:
            run(["-j", "-f", "-"], data=json.dumps(batch(table, the_plan)))
        after = elements_of(json.loads(run(["-j", "list", "table", "inet", table])))
    else:
        gone = {id(e) for e in the_plan["delete"]}
        after = [e for e in elements if id(e) not in gone] + [
            {"cidr": str(w["net"]), "family": w["net"].version, "timeout": w["timeout"], "expires": w["timeout"],
             "comment": w["comment"], "packets": 0, "bytes": 0} for w in the_plan["insert"]]
    module.exit_json(
        changed=changed, created=not exists, repaired=problems,
        added=the_plan["added"], removed=the_plan["removed"], unchanged=the_plan["unchanged"],
        replaced=the_plan["replaced"], still_covered=the_plan["still_covered"], absent=the_plan["absent"],
        elements=public(after),
    )


if __name__ == "__main__":
    main()
