"""Pure parts of the tamper watch: event parsing, path comparison, classification, web
digests, open publish runs."""

from __future__ import annotations

from resilience.actions.integrity import MemberIntegrity, classify
from resilience.actions.watch import (
    compare_paths,
    inotify_command,
    open_publish_runs,
    parse_events,
    relative,
    web_problems,
)
from resilience.evidence import Ledger

SHA_A, SHA_B = "a" * 64, "b" * 64


def node(kind="file", sha=SHA_A, size=10, mode=0o644, uid=0, gid=0, target=None):
    n = {"type": kind, "mode": mode, "uid": uid, "gid": gid, "size": size, "mtime_ns": 1}
    if kind == "file":
        n["sha256"] = sha
    if target is not None:
        n["target"] = target
    return n


def cur(kind="file", size=10, mode=0o644, uid=0, gid=0, mtime=1, target=None):
    return {"type": kind, "mode": mode, "uid": uid, "gid": gid, "size": size, "mtime_ns": mtime,
            "ctime_ns": 1, "inode": 1, "target": target}


def test_parse_events_keeps_incomplete_rest():
    recs, rest = parse_events(b"MODIFY\0/var/www/p/a b\0CREATE,ISDIR\0/var/www/p/d\0CLOSE_WRITE,CLOSE\0/var/w")
    assert recs == [("MODIFY", b"/var/www/p/a b"), ("CREATE,ISDIR", b"/var/www/p/d")]
    recs2, rest2 = parse_events(rest + b"ww/p/x\0")
    assert recs2 == [("CLOSE_WRITE,CLOSE", b"/var/www/p/x")] and rest2 == b""


def test_parse_events_path_with_newline():
    recs, rest = parse_events(b"CREATE\0/s/evil\nname.php\0")
    assert recs == [("CREATE", b"/s/evil\nname.php")] and rest == b""


def test_relative():
    assert relative(b"/var/www/portal", b"/var/www/portal/") == b""
    assert relative(b"/var/www/portal", b"/var/www/portal") == b""
    assert relative(b"/var/www/portal/", b"/var/www/portal/news/a.html") == b"news/a.html"
    assert relative(b"/var/www/portal", b"/var/www/portal2/x") is None


def test_inotify_command_quotes_and_cleans_up():
    cmd = inotify_command("/var/www/my site")
    assert "'/var/www/my site'" in cmd and "inotifywait -m -r" in cmd
    assert "cat >/dev/null; kill $w" in cmd   # killed when our stdin closes


def test_compare_paths_categories():
    want = {b"index.html": node(sha=SHA_A), b"a.html": node(sha=SHA_A), b"b.html": node(sha=SHA_A),
            b"c.html": node(sha=SHA_A), b"d.html": node(sha=SHA_A), b"img": node("dir"), b"link": node("symlink", target="index.html")}
    states = [
        {"rel": "index.html", "type": "file", "sha256": SHA_B, "mode": 0o644, "uid": 0, "gid": 0},   # rewritten
        {"rel": "a.html", "type": "file", "sha256": SHA_A, "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 9},
        {"rel": "d.html", "type": "file", "sha256": SHA_A, "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 1},
        {"rel": "b.html", "type": None},                                                             # deleted
        {"rel": "c.html", "type": "file", "sha256": SHA_A, "mode": 0o777, "uid": 0, "gid": 0},       # chmod
        {"rel": "uploads/shell.php", "type": "file", "sha256": SHA_B, "mode": 0o644, "uid": 0, "gid": 0},
        {"rel": "cache/x.html", "type": "file", "sha256": SHA_B, "mode": 0o644, "uid": 0, "gid": 0},  # excluded
        {"rel": "gone.tmp", "type": None},                                                           # never there
        {"rel": "evil", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0},
        {"rel": "link", "type": "symlink", "target": "/etc/passwd", "mode": 0o777, "uid": 0, "gid": 0},
    ]
    out = compare_paths(want, states, ["cache/**"])
    assert out == {"modified": ["index.html", "link"], "added": ["evil/", "uploads/shell.php"],
                   "removed": ["b.html"], "attributes": ["c.html"], "touched": ["a.html"]}


def test_classify_touch_is_not_a_difference():
    items = [(b"index.html", node(sha=SHA_A)), (b"a.html", node(sha=SHA_A)), (b"gone.html", node()),
             (b"news", node("dir")), (b"news/x.html", node(sha=SHA_A, size=10))]
    current = {b"": cur("dir"), b"index.html": cur(mtime=5), b"a.html": cur(size=11), b"news": cur("dir"),
               b"news/x.html": cur(mode=0o600), b"uploads": cur("dir"), b"uploads/shell.php": cur(),
               b"cache": cur("dir"), b"cache/p.html": cur(), b"empty": cur("dir")}
    send = [b"index.html", b"a.html", b"gone.html", b"news/x.html"]
    digests = {b"index.html": SHA_A, b"news/x.html": SHA_A}
    out = classify(items, current, send, ["cache/**"], digests)
    assert out == {"modified": [b"a.html"], "added": [b"empty/", b"uploads/shell.php"], "removed": [b"gone.html"],
                   "attributes": [b"news/x.html"], "touched": [b"index.html"]}


def test_member_integrity_clean_ignores_touched():
    m = MemberIntegrity("web1", "s", touched=["index.html"])
    assert m.clean and m.paths() == []
    m.added.append("uploads/shell.php")
    assert not m.clean and m.paths() == ["uploads/shell.php"]
    assert not MemberIntegrity("web1", "s", error="unreachable").clean


def test_web_problems_digest_and_failures():
    site = [{"path": "/", "ok": True, "sha256": SHA_A}, {"path": "/healthz", "ok": True, "sha256": SHA_B}]
    results = {
        "site": site,
        "web1": [{"path": "/", "ok": True, "sha256": SHA_B}, {"path": "/healthz", "ok": True, "sha256": SHA_B}],
        "web2": [{"path": "/", "ok": False, "error": "body digest differs from the expected one", "sha256": SHA_B},
                 {"path": "/healthz", "ok": False, "error": "TimeoutError: timed out"}],
        "web3": site,
    }
    out = web_problems(results)
    assert set(out) == {"web1", "web2"}
    assert "differs from the site's" in out["web1"][0]
    assert out["web2"] == ["/: body digest differs from the expected one", "/healthz: TimeoutError: timed out"]


def test_open_publish_runs(tmp_path):
    ledger = Ledger(tmp_path / "ev")
    assert open_publish_runs(ledger) == []
    done = ledger.start_run("publish", {"site": "portal"})
    done.finish()
    dry = ledger.start_run("publish", {"site": "portal"}, dry_run=True)
    other = ledger.start_run("backup", {"site": "portal"})
    live = ledger.start_run("publish", {"site": "portal"})
    assert open_publish_runs(ledger) == [live.id]
    live.finish()
    dry.finish()
    other.finish()
    assert open_publish_runs(ledger) == []
