"""Textfile metrics: computed from a real ledger, parsed with Prometheus' own parser."""

from __future__ import annotations

import json
import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from resilience import metrics
from resilience.evidence import Ledger
from resilience.evidence.query import run_records
from resilience.evidence.report import parse_time


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def end_ts(ledger: Ledger, rid: str) -> float:
    end = [r for r in run_records(ledger, rid) if r["type"] == "run-end"][0]
    return parse_time(end["time"]).timestamp()


def backup(ledger, sites, fail=None, sizes=(100, 60, 1000)):
    run = ledger.start_run("backup", {"sites": sites})
    with run:
        for site in sites:
            try:
                with run.step(f"backup files of {site}", host="web1") as st:
                    st.details.update(bytes_added=sizes[0], bytes_stored=sizes[1], bytes_total=sizes[2])
                    if site == fail:
                        raise OSError("unreachable")
            except OSError:
                pass
    return run.id


@pytest.fixture
def ledger(tmp_path):
    return Ledger(tmp_path / "ev")


def test_metrics_carry_the_ledgers_values(ledger, tmp_path):
    b1 = backup(ledger, ["portal", "news"], sizes=(10, 5, 500))
    b2 = backup(ledger, ["portal", "news"], fail="news", sizes=(100, 60, 1000))
    dry = ledger.start_run("backup", {"sites": ["portal"]}, dry_run=True)
    dry.finish("failed")  # dry runs do not count
    drill = ledger.start_run("drill", {"plan": "drills/quarterly-tamper.yml", "site": "portal"})
    drill.details.update(rto_s=42.5, rpo_s=120.0, targets={"rto_s": 60, "rpo_s": 300}, passed=True)
    drill.finish()
    weird = ledger.start_run("restore", {"site": 'a"b\\c\nd'})
    weird.finish("failed")

    path = metrics.write(ledger, tmp_path / "prom")
    assert path.name == "resilience.prom" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["resilience.prom"]  # no temporary file left behind
    m = parse(path.read_text())

    def v(name, **labels):
        return m[(name, frozenset(labels.items()))]

    assert v("resilience_last_success_timestamp_seconds", action="backup", site="portal") == end_ts(ledger, b2)
    assert v("resilience_last_success_timestamp_seconds", action="backup", site="news") == end_ts(ledger, b1)
    assert v("resilience_last_run_success", action="backup", site="news") == 0
    assert v("resilience_last_run_success", action="backup", site="portal") == 1
    b2_end = [r for r in run_records(ledger, b2) if r["type"] == "run-end"][0]
    assert v("resilience_last_run_duration_seconds", action="backup", site="portal") == b2_end["duration_s"]
    assert v("resilience_backup_size_bytes", site="portal", kind="stored") == 60
    assert v("resilience_backup_size_bytes", site="portal", kind="total") == 1000
    assert v("resilience_backup_size_bytes", site="news", kind="added") == 10  # last good: b1
    assert v("resilience_drill_rto_seconds", plan="quarterly-tamper") == 42.5
    assert v("resilience_drill_rto_target_seconds", plan="quarterly-tamper") == 60
    assert v("resilience_drill_rpo_seconds", plan="quarterly-tamper") == 120
    assert v("resilience_drill_passed", plan="quarterly-tamper") == 1
    assert v("resilience_last_success_timestamp_seconds", action="drill", site="portal") == end_ts(ledger, drill.id)
    assert v("resilience_last_run_success", action="restore", site='a"b\\c\nd') == 0
    assert ("resilience_last_success_timestamp_seconds",
            frozenset({"action": "restore", "site": 'a"b\\c\nd'}.items())) not in m
    assert v("resilience_ledger_verified") == 1
    assert v("resilience_ledger_records") == sum(1 for _ in ledger.records())


def test_missed_target_and_tampered_ledger(ledger, tmp_path):
    drill = ledger.start_run("drill", {"plan": "db.yml"})
    drill.details.update(rto_s=90.0, targets={"rto_s": 60})
    drill.finish()
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["user"] = "someone-else"
    lines[0] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    ledger.path.write_bytes(b"".join(lines))
    m = parse(metrics.render(metrics.collect(ledger)))
    assert m[("resilience_drill_passed", frozenset({"plan": "db"}.items()))] == 0
    assert m[("resilience_ledger_verified", frozenset())] == 0


def test_metrics_cli(cli, ledger, tmp_path):
    backup(ledger, ["portal"])
    res = cli("metrics", "write", "--dir", tmp_path / "prom", "--evidence", ledger.dir)
    assert res.code == 0 and "resilience.prom" in res.out
    parse((tmp_path / "prom" / "resilience.prom").read_text())
    res = cli("metrics", "show", "--evidence", ledger.dir)
    assert res.code == 0 and 'resilience_last_run_success{action="backup",site="portal"} 1' in res.out
    cfg = tmp_path / "resilience.yml"
    cfg.write_text(f"version: 1\nevidence: {{dir: {ledger.dir}}}\nmetrics: {{dir: {tmp_path / 'cfgprom'}}}\n")
    res = cli("--config", cfg, "metrics", "write")
    assert res.code == 0, res.err
    assert (tmp_path / "cfgprom" / "resilience.prom").exists()
    cfg.write_text("version: 1\n")
    res = cli("--config", cfg, "metrics", "write", "--evidence", ledger.dir)
    assert res.code == 2 and "metrics.dir" in res.err and len(res.err.strip().splitlines()) == 1
