"""Run and period reports: built from a real signed ledger, rendered in both formats and
languages, parsed back, and checked against the figures in the ledger."""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

import resilience.evidence.ledger as ledger_mod
from resilience.evidence import Ledger
from resilience.evidence.query import run_records
from resilience.evidence.report import _fmt_duration, period_report, render, run_report
from resilience.evidence.report_i18n import LABELS

NS = {"h": "http://www.w3.org/1999/xhtml"}
SECRET = "hunter2-very-secret"


class Clock:
    """The ledger's clock, set by the test, so runs can fall in chosen periods."""

    def __init__(self, monkeypatch, start: datetime):
        self.t = start
        monkeypatch.setattr(ledger_mod, "now_iso", self)
        import resilience.evidence.run as run_mod

        monkeypatch.setattr(run_mod, "now_iso", self)

    def __call__(self) -> str:
        self.t += timedelta(seconds=1)
        return self.t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_drill(ledger: Ledger, *, rto: float | None = 42.5, fail: bool = False) -> str:
    run = ledger.start_run("drill", {"plan": "drills/quarterly-tamper.yml", "password": SECRET})
    try:
        with run:
            with run.step("inject fault <b>tamper</b>", host="web1") as st:
                st.artifact("before.txt", data=b"index.html sha256 before\n")
                st.details["note"] = "a | pipe"
            with run.step("recover member", host="web1") as st:
                st.artifact("after.log", data="恢复完成\n".encode())
                if fail:
                    raise RuntimeError("restore timed out")
            if rto is not None:
                run.details.update(rto_s=rto, rpo_s=300.0, targets={"rto_s": 60, "rpo_s": 200})
    except RuntimeError:
        pass
    return run.id


def xhtml(text: str) -> ET.Element:
    """Parse strictly (XHTML) and also through html.parser, as a browser-like reader."""
    HTMLParser().feed(text)
    return ET.fromstring(text)


def table(root: ET.Element, tid: str) -> list[list[str]]:
    tab = root.find(f".//h:table[@id='{tid}']", NS)
    assert tab is not None, tid
    return [["".join(c.itertext()).strip() for c in tr] for tr in tab.findall("h:tr", NS)]


def md_table(text: str, header_first_cell: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {header_first_cell} |"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]])
    return rows


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(tmp_path / "ev")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_run_report_html_carries_the_ledgers_figures(ledger, lang):
    rid = make_drill(ledger)
    recs = run_records(ledger, rid)
    steps = [r for r in recs if r["type"] == "step"]
    model = run_report(ledger, rid[:24])  # a unique prefix is enough
    root = xhtml(render(model, "html", lang))
    L = LABELS[lang]

    rows = table(root, "steps")[1:]
    assert [r[1] for r in rows] == ["inject fault <b>tamper</b>", "recover member"]
    assert [r[4] for r in rows] == [_fmt_duration(s["duration_s"]) for s in steps]
    assert [r[5] for r in rows] == (["ok", "ok"] if lang == "en" else ["成功", "成功"])
    # The chart: one bar per step, no script, no external reference.
    svg = root.find(".//{http://www.w3.org/2000/svg}svg")
    assert len(svg.findall("{http://www.w3.org/2000/svg}rect")) == 2
    assert root.find(".//h:script", NS) is None and "http://" not in "".join(
        e.get("href", "") + e.get("src", "") for e in root.iter())

    arts = table(root, "artifacts")[1:]
    assert [a[3] for a in arts] == [hashlib.sha256(b"index.html sha256 before\n").hexdigest(),
                                    hashlib.sha256("恢复完成\n".encode()).hexdigest()]
    assert all(a[4] == ("matches digest" if lang == "en" else "与摘要一致") for a in arts)

    objectives = table(root, "objectives")[1:]
    assert objectives[0][:2] == ["RTO", "42.50 s"] and objectives[0][3] == L["yes"]
    assert objectives[1][0] == "RPO" and objectives[1][3] == L["no"]  # 300 s over a 200 s target

    ver = root.find(".//h:div[@id='verification']", NS)
    assert ver.get("data-ok") == "true" and L["verify_ok"] in "".join(ver.itertext())
    assert table(root, "summary")[0][1] == rid
    html = ET.tostring(root, encoding="unicode")
    assert SECRET not in html and "***" in html


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_run_report_markdown_timeline_and_labels(ledger, lang):
    rid = make_drill(ledger, fail=True)
    steps = [r for r in run_records(ledger, rid) if r["type"] == "step"]
    text = render(run_report(ledger, rid), "md", lang)
    L = LABELS[lang]
    rows = md_table(text, "#")
    assert [r[1] for r in rows] == ["inject fault &lt;b&gt;tamper&lt;/b&gt;", "recover member"]
    assert [r[4] for r in rows] == [_fmt_duration(s["duration_s"]) for s in steps]
    failed = "failed" if lang == "en" else "失败"
    assert rows[1][5] == f"{failed}: restore timed out"
    assert all("█" in r[6] for r in rows)  # the text bar chart
    for key in ("summary", "timeline", "artifacts", "verification", "verify_ok"):
        assert L[key] in text
    arts = md_table(text, L["artifact"])
    digest = hashlib.sha256("恢复完成\n".encode()).hexdigest()
    assert arts[1][3] == f"`{digest}`"
    assert SECRET not in text


def test_every_label_is_translated():
    assert LABELS["en"].keys() == LABELS["zh"].keys()
    same = [k for k in LABELS["en"] if LABELS["en"][k] == LABELS["zh"][k]]
    assert same == [], same


def test_run_without_objectives_has_no_rto_section(ledger):
    rid = make_drill(ledger, rto=None)
    model = run_report(ledger, rid)
    assert model["objectives"] == []
    root = xhtml(render(model, "html", "en"))
    assert root.find(".//h:table[@id='objectives']", NS) is None
    assert "RTO" not in render(model, "md", "en")


def test_tampered_ledger_says_signatures_do_not_verify(ledger):
    rid = make_drill(ledger)
    make_drill(ledger)
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    # Edit the first step's outcome in place: still valid JSON, but the signature no longer fits.
    rec = json.loads(lines[1])
    rec["duration_s"] = 0.001
    lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    ledger.path.write_bytes(b"".join(lines))
    model = run_report(ledger, rid)
    assert model["verification"]["ok"] is False and model["verification"]["run_affected"] is True
    for lang in ("en", "zh"):
        root = xhtml(render(model, "html", lang))
        ver = root.find(".//h:div[@id='verification']", NS)
        assert ver.get("data-ok") == "false"
        assert LABELS[lang]["verify_bad"] in "".join(ver.itertext())
        md = render(model, "md", lang)
        assert LABELS[lang]["verify_bad"] in md and f"{LABELS[lang]['first_bad']}: 1;" in md
        assert "bad signature" in md
    assert "signatures do not verify" in render(model, "md", "en")


def test_changed_artifact_is_flagged(ledger):
    rid = make_drill(ledger)
    art = ledger.dir / run_report(ledger, rid)["artifacts"][0]["path"]
    art.chmod(0o600)
    art.write_bytes(b"replaced\n")
    states = [a["state"] for a in run_report(ledger, rid)["artifacts"]]
    assert states == ["changed", "intact"]


def _backup(ledger, sites, fail_site=None):
    run = ledger.start_run("backup", {"sites": sites})
    with run:
        for site in sites:
            try:
                with run.step(f"backup files of {site}", host="web1") as st:
                    st.details.update(bytes_added=100, bytes_stored=60, bytes_total=1000, snapshot="ab" * 32)
                    if site == fail_site:
                        raise OSError("web1 unreachable")
            except OSError:
                pass
    return run.id


def _incident(ledger, tmp_path, level="critical"):
    report = {"title": "Tamper on portal", "severity": level, "severity_reason": "served publicly",
              "fields": {"source": "watch", "scope": "portal", "nature": "tamper", "trend": "contained",
                         "measures": ["isolate web1 — done"]}}
    path = tmp_path / "inc.json"
    path.write_text(json.dumps(report))
    run = ledger.start_run("incident-tamper", {"site": "portal"})
    with run:
        with run.step("isolate member", host="web1"):
            pass
        with run.step("incident report") as st:
            st.artifact("incident-report.json", path=path)
            st.details.update(severity=level, report_upward=level in ("major", "critical"))
    return run.id


def test_period_report_includes_exactly_the_periods_runs(ledger, tmp_path, monkeypatch):
    clock = Clock(monkeypatch, datetime(2026, 9, 30, 23, 59, 50, tzinfo=UTC))
    before = _backup(ledger, ["portal"])                      # 2026-09-30: Q3
    clock.t = datetime(2026, 10, 1, 0, 0, 0, tzinfo=UTC)
    b1 = _backup(ledger, ["portal", "news"])                  # Q4, October
    clock.t = datetime(2026, 11, 5, tzinfo=UTC)
    b2 = _backup(ledger, ["portal", "news"], fail_site="news")  # November
    drill = make_drill(ledger)
    inc = _incident(ledger, tmp_path)
    v = ledger.start_run("verify", {"read_data": True})
    v.finish()
    r = ledger.start_run("restore", {"site": "portal", "snapshot": "abcd"})
    r.finish("ok")
    dry = ledger.start_run("backup", {"sites": ["portal"]}, dry_run=True)
    dry.finish()
    clock.t = datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC)
    b3 = _backup(ledger, ["portal"])                          # December
    clock.t = datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC)
    after = _backup(ledger, ["portal"])                       # Q1 2027

    q4 = period_report(ledger, "2026q4")
    assert set(q4["runs"]) == {b1, b2, drill, inc, v.id, r.id, b3}
    assert before not in q4["runs"] and after not in q4["runs"] and q4["dry_runs"] == 1
    sites = {s["site"]: s for s in q4["backups"]}
    assert (sites["portal"]["count"], sites["portal"]["failures"]) == (3, 0)
    assert (sites["news"]["count"], sites["news"]["failures"]) == (2, 1)
    assert sites["news"]["last_ok"].startswith("2026-10-01")
    assert sites["portal"]["last_ok"].startswith("2026-12-31")
    assert q4["totals"]["drills_failed"] == 1  # RPO over target
    assert q4["incidents"][0]["severity"] == "critical" and q4["incidents"][0]["report_upward"] is True
    assert set(period_report(ledger, "2026-11")["runs"]) == {b2, drill, inc, v.id, r.id}
    assert after not in period_report(ledger, "2026")["runs"]

    for lang in ("en", "zh"):
        root = xhtml(render(q4, "html", lang))
        rows = {r[0]: r for r in table(root, "backups")[1:]}
        assert rows["news"][1:4] == ["2", "1", "1"] and rows["portal"][1:4] == ["3", "3", "0"]
        assert [r[0] for r in table(root, "drills")[1:]] == [drill]
        inc_row = table(root, "incidents")[1]
        assert inc_row[0] == inc and inc_row[4] == ("critical" if lang == "en" else "重大")
        assert inc_row[5] == LABELS[lang]["upward_yes"]
        assert [r[0] for r in table(root, "restores")[1:]] == [r.id]
        md = render(q4, "md", lang)
        assert [r[0] for r in md_table(md, LABELS[lang]["site"])] == ["news", "portal"]
        assert LABELS[lang]["verify_ok"] in md


def test_incident_run_report_shows_the_incident_fields_in_chinese(ledger, tmp_path):
    rid = _incident(ledger, tmp_path, level="major")
    root = xhtml(render(run_report(ledger, rid), "html", "zh"))
    rows = dict((r[0], r[1]) for r in table(root, "incident"))
    assert rows["事件级别"] == "较大" and rows["是否上报"] == LABELS["zh"]["upward_yes"]
    assert rows["信息来源"] == "watch" and rows["采取的措施"] == "isolate web1 — done"


def test_report_cli(cli, ledger, tmp_path):
    rid = make_drill(ledger)
    out = tmp_path / "r.html"
    res = cli("report", rid[:20], "--dir", ledger.dir, "-o", out, "--lang", "zh")
    assert res.code == 0 and "wrote" in res.out
    assert xhtml(out.read_text()).get("lang") == "zh-CN"
    res = cli("report", rid, "--dir", ledger.dir)
    assert res.code == 0 and res.out.startswith("# Run report: drill")
    res = cli("report", "--period", "2026Q4", "--dir", ledger.dir, "--json")
    assert res.code == 0 and json.loads(res.out)["type"] == "period"
    for args in (["nope"], ["--period", "2026Q5"], [], [rid, "--period", "2026"]):
        res = cli("report", *args, "--dir", ledger.dir)
        assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err
    make_drill(ledger)
    res = cli("report", "2", "--dir", ledger.dir)
    assert res.code == 2 and "ambiguous" in res.err
