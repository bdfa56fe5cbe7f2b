"""Blocking, pure parts: CIDR validation and protection, the balancer module's plan, access-log
parsing and ranking, and the CLI's refusals (exit 2, one line) before anything runs."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience.actions.block import _comment, parse_nft_elements
from resilience.control import accesslog, blocking
from resilience.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def _module():
    path = REPO / "playbooks" / "library" / "resilience_nft_block.py"
    spec = importlib.util.spec_from_file_location("resilience_nft_block", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


nft = _module()

# --- CIDR validation --------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("203.0.113.7", "203.0.113.7/32"),
    (" 203.0.113.0/24 ", "203.0.113.0/24"),
    ("2001:db8::1", "2001:db8::1/128"),
    ("2001:db8::/48", "2001:db8::/48"),
    ("10.0.0.0/8", "10.0.0.0/8"),
])
def test_parse_cidr_accepts(text, expected):
    assert str(blocking.parse_cidr(text)) == expected


@pytest.mark.parametrize("text, message", [
    ("203.0.113.7/24", "has host bits set; did you mean 203.0.113.0/24?"),
    ("10.0.0.0/7", "wider than /8"),
    ("0.0.0.0/0", "wider than /8"),
    ("2001:db8::/31", "wider than /32"),
    ("::ffff:203.0.113.7", "IPv4-mapped"),
    ("example.org", "invalid CIDR"),
    ("203.0.113.300", "invalid CIDR"),
    ("", "empty CIDR"),
])
def test_parse_cidr_refuses_with_one_line(text, message):
    with pytest.raises(UsageError) as exc:
        blocking.parse_cidr(text)
    assert message in str(exc.value) and "\n" not in str(exc.value)


v4_nets = st.builds(lambda a, p: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}", strict=False),
                    st.integers(0, 2**32 - 1), st.integers(0, 32))


@given(v4_nets)
def test_parse_cidr_round_trips_or_refuses_only_wide(net):
    if net.prefixlen < 8:
        with pytest.raises(UsageError, match="wider than"):
            blocking.parse_cidr(str(net))
    else:
        assert blocking.parse_cidr(str(net)) == net


@given(st.integers(0, 2**32 - 1), st.integers(8, 31))
def test_host_bits_are_refused_and_the_network_suggested(addr, prefix):
    text = f"{ipaddress.IPv4Address(addr)}/{prefix}"
    loose = ipaddress.ip_network(text, strict=False)
    if loose.network_address == ipaddress.IPv4Address(addr):
        assert blocking.parse_cidr(text) == loose
    else:
        with pytest.raises(UsageError, match=f"did you mean {loose}"):
            blocking.parse_cidr(text)


def _range(net):
    return int(net.network_address), int(net.broadcast_address)


@given(v4_nets, v4_nets)
def test_refuse_protected_exactly_when_ranges_intersect(candidate, protected):
    lo1, hi1 = _range(candidate)
    lo2, hi2 = _range(protected)
    intersect = lo1 <= hi2 and lo2 <= hi1
    prot = [blocking.Protected(protected, "test")]
    if intersect:
        with pytest.raises(UsageError, match="refusing to block"):
            blocking.refuse_protected([candidate], prot)
    else:
        blocking.refuse_protected([candidate], prot)


def test_special_networks_are_always_protected():
    prot = [blocking.Protected(ipaddress.ip_network(n), why) for n, why in blocking.SPECIAL]
    for text in ("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "224.0.0.1", "255.255.255.255"):
        with pytest.raises(UsageError, match="refusing"):
            blocking.refuse_protected([blocking.parse_cidr(text)], prot)


def test_protected_networks_of_a_config(tmp_path):
    from resilience.config import validate_config

    cfg = validate_config({"control": {"ops_addresses": ["198.18.0.1"], "protected": ["198.18.0.0/24"]}},
                          tmp_path / "r.yml")
    prot = blocking.protected_networks(cfg)
    whys = {str(p.network): p.why for p in prot}
    assert "ops host" in whys["198.18.0.1/32"] and whys["198.18.0.0/24"] == "control.protected"
    assert "127.0.0.0/8" in whys


def test_protected_networks_include_inventory_hosts():
    from resilience.config import load_config

    cfg = load_config(REPO / "inventories" / "lab" / "resilience.yml")
    whys = {str(p.network): p.why for p in blocking.protected_networks(cfg)}
    assert whys["198.18.0.31/32"] == "inventory host lb1"
    assert whys["198.18.0.254/32"] == "inventory host gw1"


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("24h", 86400), ("365d", 365 * 86400)])
def test_ttl(text, seconds):
    assert blocking.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0s", "366d", "soon", ""])
def test_bad_ttl(text):
    with pytest.raises(UsageError, match="--ttl"):
        blocking.parse_ttl(text)


def test_reason_is_required_and_one_line():
    assert blocking.clean_reason("  credential\nstuffing ") == "credential stuffing"
    with pytest.raises(UsageError):
        blocking.clean_reason("   ")


def test_comment_keeps_the_run_id_within_nft_limits():
    c = _comment("岚溪" * 100, "20261127T051609Z-block-add-5cde24")
    assert c.endswith("[20261127T051609Z-block-add-5cde24]") and len(c.encode()) <= 120


# --- the balancer module's plan ----------------------------------------------------------------

LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6"}},
    {"table": {"family": "inet", "name": "resilience_block", "handle": 1}},
    {"set": {"family": "inet", "name": "v4", "table": "resilience_block", "type": "ipv4_addr",
             "flags": ["interval", "timeout"], "elem": [
                 {"elem": {"val": {"prefix": {"addr": "198.19.0.0", "len": 28}}, "timeout": 7200,
                           "expires": 7199, "comment": "flood", "counter": {"packets": 3, "bytes": 180}}},
                 {"elem": {"val": "203.0.113.9", "timeout": 60, "expires": 30, "comment": "probe",
                           "counter": {"packets": 0, "bytes": 0}}}]}},
    {"set": {"family": "inet", "name": "v6", "table": "resilience_block", "type": "ipv6_addr",
             "flags": ["interval", "timeout"]}},
    {"chain": {"family": "inet", "table": "resilience_block", "name": "prerouting", "type": "filter",
               "hook": "prerouting", "prio": -300, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "resilience_block", "chain": "prerouting", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@v4"}},
        {"counter": {"packets": 3, "bytes": 180}}, {"drop": None}]}},
    {"rule": {"family": "inet", "table": "resilience_block", "chain": "prerouting", "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@v6"}},
        {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}},
]}


def _plan(add=(), remove=(), remove_all=False, protected=()):
    return nft.plan(nft.elements_of(LISTING), list(add), list(remove), remove_all, list(protected))


def test_listing_is_parsed_the_same_by_module_and_cli():
    mod = nft.public(nft.elements_of(LISTING))
    cli = parse_nft_elements(LISTING)
    assert [e["cidr"] for e in mod] == [e["cidr"] for e in cli] == ["198.19.0.0/28", "203.0.113.9/32"]
    assert cli[0]["packets"] == 3 and cli[0]["expires"] == 7199 and cli[1]["comment"] == "probe"


def test_expected_table_has_no_drift():
    assert nft.drift(LISTING) == []
    flushed = {"nftables": [i for i in LISTING["nftables"] if "rule" not in i]}
    assert nft.drift(flushed) == ["chain rules differ"]


def test_a_set_of_the_wrong_kind_is_not_recreated_silently():
    bad = json.loads(json.dumps(LISTING))
    bad["nftables"][2]["set"]["flags"] = ["interval"]
    with pytest.raises(nft.BlockError, match="delete the table"):
        nft.drift(bad)


def test_add_new_and_covered():
    p = _plan(add=[{"cidr": "198.51.100.7", "timeout": 60, "comment": "x"},
                   {"cidr": "198.19.0.2/32", "timeout": 60}, {"cidr": "198.19.0.0/28", "timeout": 60}])
    assert p["added"] == ["198.51.100.7/32"]
    assert p["unchanged"] == ["198.19.0.0/28"]  # .2 is inside .0/28 of the same request: dropped
    assert not p["delete"]


def test_add_wider_replaces_inner_elements():
    p = _plan(add=[{"cidr": "198.19.0.0/24", "timeout": 60}])
    assert p["added"] == ["198.19.0.0/24"] and p["replaced"] == [{"cidr": "198.19.0.0/28", "by": "198.19.0.0/24"}]
    doc = nft.batch("resilience_block", p)["nftables"]
    assert list(doc[0]) == ["delete"] and list(doc[1]) == ["add"]


def test_remove_inner_wider_and_absent():
    p = _plan(remove=["198.19.0.0/16", "203.0.113.9/32"])
    assert p["removed"] == ["198.19.0.0/28", "203.0.113.9/32"]
    p = _plan(remove=["198.19.0.2", "192.0.2.1"])
    assert p["still_covered"] == [{"cidr": "198.19.0.2/32", "by": "198.19.0.0/28"}]
    assert p["absent"] == ["192.0.2.1/32"] and not p["delete"]
    assert len(_plan(remove_all=True)["delete"]) == 2


@pytest.mark.parametrize("cidr", ["198.18.0.0/16", "127.0.0.1", "::1", "198.18.0.1"])
def test_module_refuses_protected(cidr):
    with pytest.raises(nft.BlockError, match="refusing to block"):
        _plan(add=[{"cidr": cidr, "timeout": 60}], protected=["198.18.0.1/32"])


def test_module_refuses_bad_timeout_and_host_bits():
    with pytest.raises(nft.BlockError, match="timeout"):
        _plan(add=[{"cidr": "192.0.2.1", "timeout": 0}])
    with pytest.raises(nft.BlockError, match="invalid CIDR"):
        _plan(add=[{"cidr": "192.0.2.1/24", "timeout": 60}])


def test_comment_is_cleaned_for_nft():
    c = nft.clean_comment('a "quoted"\nreason\x00' + "x" * 300)
    assert "\n" not in c and "\x00" not in c and len(c.encode()) <= 120


# --- access logs ------------------------------------------------------------------------------

NOW = datetime(2026, 11, 27, 5, 30, tzinfo=UTC)


def line(addr, path, status=200, when=NOW, agent="Mozilla/5.0", method="GET"):
    t = when.strftime("%d/%b/%Y:%H:%M:%S +0000")
    req = f"{method} {path} HTTP/1.1" if method else path
    return f'{addr} - - [{t}] "{req}" {status} 123 "-" "{agent}"'


def test_parse_combined_line():
    e = accesslog.parse_line(line("198.19.0.2", "/news/a.html?x=1", 404))
    assert (e.addr, e.method, e.path, e.status) == ("198.19.0.2", "GET", "/news/a.html?x=1", 404)
    assert e.time == NOW


@pytest.mark.parametrize("text", [
    "garbage",
    "",
    'not-an-ip - - [27/Nov/2026:05:30:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-"',
    '198.19.0.2 - - [31/Foo/2026:05:30:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-"',
    '198.19.0.2 - - [27/Nov/2026:05:30:00 +0000] "GET / HTTP/1.1" abc 1 "-" "-"',
    '198.19.0.2 - - [27/Nov/2026:05:30:00 +0000] "GET / HTTP/1.1',
])
def test_malformed_lines_are_none(text):
    assert accesslog.parse_line(text) is None


def test_escaped_quotes_and_non_http_request_lines():
    e = accesslog.parse_line('198.19.0.2 - - [27/Nov/2026:05:30:00 +0000] "GET /a\\"b HTTP/1.1" 200 1 "-" "x\\"y"')
    assert e.path == '/a\\"b'
    tls = accesslog.parse_line(line("198.19.0.9", "\\x16\\x03\\x01\\x00", 400, method=None))
    assert tls.method is None and "not-http" in accesslog.probe_kinds(tls)


@pytest.mark.parametrize("path, kind", [
    ("/wp-login.php", "wordpress"), ("/xmlrpc.php", "wordpress"), ("/.env", "dotfile"),
    ("/.git/config", "dotfile"), ("/cgi-bin/luci", "cgi"), ("/phpmyadmin/", "admin-tools"),
    ("/index.html?id=1%27%20or%201=1", "sqli"), ("/?q=1 UNION SELECT pass", "sqli"),
    ("/../../etc/passwd", "traversal"), ("/%2e%2e/%2e%2e/x", "traversal"), ("/?q=<script>", "xss"),
])
def test_probe_kinds(path, kind):
    assert kind in accesslog.probe_kinds(accesslog.parse_line(line("192.0.2.1", path)))


def test_ordinary_paths_are_not_probes():
    for path in ("/", "/news/2024/article-001.html", "/css/site.css", "/images/logo.png", "/healthz"):
        assert accesslog.probe_kinds(accesslog.parse_line(line("192.0.2.1", path))) == []


def _stats(lines):
    stats, counts = {}, Counter()
    accesslog.collect(lines, "web1", NOW - timedelta(hours=1), stats, counts)
    return stats, counts


def test_rank_flags_flood_and_probes_not_quiet_nor_protected():
    lines = [line("198.19.0.2", f"/news/{i}.html", when=NOW - timedelta(seconds=i % 50)) for i in range(200)]
    lines += [line("198.19.0.3", p, 404) for p in ("/wp-login.php", "/.env", "/cgi-bin/x", "/.git/HEAD")]
    lines += [line("198.19.0.100", "/", when=NOW - timedelta(minutes=i)) for i in range(30)]
    lines += [line("198.18.0.1", "/healthz", when=NOW - timedelta(seconds=i % 30)) for i in range(500)]
    lines += [line("198.19.0.5", "/", when=NOW - timedelta(hours=3)) for _ in range(500)]  # too old
    lines += ["garbage", "more garbage"]
    stats, counts = _stats(lines)
    assert counts["malformed"] == 2 and counts["older"] == 500
    prot = [blocking.Protected(ipaddress.ip_network("198.18.0.0/24"), "control.protected")]
    ranked = accesslog.rank(stats, prot, accesslog.Thresholds(), top=10)
    cidrs = [p["cidr"] for p in ranked["proposals"]]
    assert set(cidrs) == {"198.19.0.2/32", "198.19.0.3/32"}
    probe = next(p for p in ranked["proposals"] if p["cidr"] == "198.19.0.3/32")
    assert probe["evidence"]["error_ratio"] == 1.0 and "/.env" in probe["evidence"]["sample_paths"]
    flood = next(p for p in ranked["proposals"] if p["cidr"] == "198.19.0.2/32")
    assert flood["evidence"]["peak_per_minute"] >= 120
    assert [s["addr"] for s in ranked["skipped_protected"]] == ["198.18.0.1"]


def test_several_addresses_of_one_24_are_proposed_as_the_network():
    lines = [line(f"203.0.113.{n}", "/wp-login.php", 404) for n in (5, 6, 7) for _ in range(3)]
    lines += [line("198.51.100.1", "/.env", 404) for _ in range(3)]
    ranked = accesslog.rank(_stats(lines)[0], [], accesslog.Thresholds(), top=10)
    cidrs = [p["cidr"] for p in ranked["proposals"]]
    assert "203.0.113.0/24" in cidrs and "198.51.100.1/32" in cidrs
    net = next(p for p in ranked["proposals"] if p["cidr"] == "203.0.113.0/24")
    assert [m["addr"] for m in net["members"]] and len(net["members"]) == 3


def test_a_protected_24_is_never_aggregated():
    lines = [line(f"198.18.0.{n}", "/wp-login.php", 404) for n in (100, 101, 102) for _ in range(3)]
    prot = [blocking.Protected(ipaddress.ip_network("198.18.0.1/32"), "ops")]
    cidrs = [p["cidr"] for p in accesslog.rank(_stats(lines)[0], prot, accesslog.Thresholds(), 10)["proposals"]]
    assert "198.18.0.0/24" not in cidrs and len(cidrs) == 3


def test_top_limits_proposals():
    lines = [line(f"192.0.2.{n}", "/.env", 404) for n in range(1, 6) for _ in range(3)]
    lines += [line(f"198.51.{n}.1", "/.env", 404) for n in range(1, 6) for _ in range(3)]
    ranked = accesslog.rank(_stats(lines)[0], [], accesslog.Thresholds(), top=2)
    assert len(ranked["proposals"]) == 2 and ranked["more"] == 4


@given(st.text(max_size=300))
def test_parse_line_never_raises(text):
    accesslog.parse_line(text)


# --- CLI refusals (no balancer contacted) -------------------------------------------------------

@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "resilience.yml"
    path.write_text(f"""
evidence: {{dir: {tmp_path / "evidence"}}}
control: {{ops_addresses: [198.18.0.1], protected: [198.18.0.0/24]}}
sites:
  portal:
    files: {{hosts: [localhost], path: /var/www/portal}}
    balancer: {{host: lb1, backend: portal}}
""")
    return path


@pytest.mark.parametrize("args, message", [
    (["198.18.0.1"], "the ops host"),
    (["198.18.0.128/25"], "overlaps 198.18.0.0/24, control.protected"),
    (["198.19.0.5/24"], "did you mean 198.19.0.0/24"),
    (["127.0.0.1"], "loopback"),
    (["1.0.0.0/4"], "wider than /8"),
    (["198.18.0.0/16"], "the ops host"),
])
def test_cli_refuses_with_exit_2_and_one_line(cli, cfg_file, args, message):
    r = cli("--config", cfg_file, "block", "add", *args, "--reason", "test")
    assert r.code == 2 and message in r.err
    assert r.err.count("\n") == 1 and "Traceback" not in r.err


def test_cli_requires_a_reason(cli, cfg_file):
    r = cli("--config", cfg_file, "block", "add", "192.0.2.1")
    assert r.code == 2 and "--reason" in r.err


def test_cli_json_error(cli, cfg_file):
    r = cli("--config", cfg_file, "block", "add", "198.18.0.1", "--reason", "x", "--json")
    assert r.code == 2 and json.loads(r.out)["exit_code"] == 2
