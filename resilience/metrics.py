"""Prometheus textfile metrics computed from the evidence ledger (docs/monitoring.md).

:func:`collect` reads the ledger and returns metric families; :func:`render` turns them into
the Prometheus text exposition format; :func:`write` puts that into ``DIR/resilience.prom``
atomically (a temporary file in the same folder, fsynced, then renamed), so node_exporter's
textfile collector never reads a half-written file. Because every figure is derived from
the ledger, the metrics always agree with the evidence and with ``resilience report``.

Dry runs are ignored. A run's ``site`` label is its ``site`` parameter; a backup of several
sites counts once per site (a site failed when one of its steps failed); runs without a site
have ``site=""``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .evidence.ledger import Ledger
from .evidence.report import (
    backup_sites,
    drill_plan,
    group_runs,
    kind_of,
    parse_time,
    read_records,
    run_summary,
)
from .fsutil import atomic_write

FILENAME = "resilience.prom"

# name -> (type, help)
FAMILIES: dict[str, tuple[str, str]] = {
    "resilience_last_success_timestamp_seconds": ("gauge", "End time of the last successful run (Unix seconds)."),
    "resilience_last_run_timestamp_seconds": ("gauge", "End (or start, if unfinished) time of the last run."),
    "resilience_last_run_duration_seconds": ("gauge", "Duration of the last run in seconds."),
    "resilience_last_run_success": ("gauge", "1 if the last run succeeded, else 0."),
    "resilience_backup_size_bytes": ("gauge", "Sizes of the last good backup of a site: added, stored, total."),
    "resilience_drill_rto_seconds": ("gauge", "Measured RTO of the last drill of a plan."),
    "resilience_drill_rpo_seconds": ("gauge", "Measured RPO of the last drill of a plan."),
    "resilience_drill_rto_target_seconds": ("gauge", "RTO target of the last drill of a plan."),
    "resilience_drill_rpo_target_seconds": ("gauge", "RPO target of the last drill of a plan."),
    "resilience_drill_passed": ("gauge", "1 if the last drill of a plan passed (outcome ok, targets met)."),
    "resilience_ledger_verified": ("gauge", "1 if the evidence ledger's hash chain and signatures verify."),
    "resilience_ledger_records": ("gauge", "Number of records in the evidence ledger."),
}

Sample = tuple[dict[str, str], float]


def _ts(text: str | None) -> float | None:
    t = parse_time(text)
    return t.timestamp() if t else None


def collect(ledger: Ledger) -> dict[str, list[Sample]]:
    """Metric families (name → ``[(labels, value)]``) computed from ``ledger``; see FAMILIES."""
    records, _ = read_records(ledger)
    last: dict[tuple[str, str], dict[str, Any]] = {}
    good: dict[tuple[str, str], float] = {}
    sizes: dict[str, dict[str, Any]] = {}
    drills: dict[str, dict[str, Any]] = {}
    for run in group_runs(records).values():
        s = run_summary(run)
        if s["dry_run"]:
            continue
        when = _ts(s["end"]) or _ts(s["start"])
        if kind_of(s["action"]) == "backup":
            sites = backup_sites(run, s)
            per = {site: not d["failed"] for site, d in sites.items()}
            sizes.update((site, d) for site, d in sites.items() if not d["failed"])
        else:
            site = s["params"].get("site")
            per = {site if isinstance(site, str) else "": s["outcome"] == "ok"}
        for site, ok in per.items():
            key = (s["action"], site)
            last[key] = {"when": when, "duration": s["duration_s"], "ok": ok}
            if ok and when is not None:
                good[key] = when
        if kind_of(s["action"]) == "drill" and s["outcome"] != "incomplete":
            drills[drill_plan(s)] = s
    out: dict[str, list[Sample]] = {name: [] for name in FAMILIES}
    for (action, site), d in sorted(last.items()):
        labels = {"action": action, "site": site}
        if (action, site) in good:
            out["resilience_last_success_timestamp_seconds"].append((labels, good[(action, site)]))
        if d["when"] is not None:
            out["resilience_last_run_timestamp_seconds"].append((labels, d["when"]))
        if d["duration"] is not None:
            out["resilience_last_run_duration_seconds"].append((labels, d["duration"]))
        out["resilience_last_run_success"].append((labels, 1.0 if d["ok"] else 0.0))
    for site, d in sorted(sizes.items()):
        for kind in ("added", "stored", "total"):
            out["resilience_backup_size_bytes"].append(({"site": site, "kind": kind}, float(d[f"bytes_{kind}"])))
    for plan, s in sorted(drills.items()):
        labels = {"plan": plan}
        for o in s["objectives"]:
            name = o["name"].lower()
            if o["value_s"] is not None:
                out[f"resilience_drill_{name}_seconds"].append((labels, o["value_s"]))
            if o["target_s"] is not None:
                out[f"resilience_drill_{name}_target_seconds"].append((labels, o["target_s"]))
        passed = s["outcome"] == "ok" and s["details"].get("passed") is not False and not any(
            o["met"] is False for o in s["objectives"])
        out["resilience_drill_passed"].append((labels, 1.0 if passed else 0.0))
    ver = ledger.verify()
    out["resilience_ledger_verified"].append(({}, 1.0 if ver.ok else 0.0))
    out["resilience_ledger_records"].append(({}, float(ver.records)))
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) or abs(value) >= 1e15 else str(int(value))


def render(families: dict[str, list[Sample]]) -> str:
    """The Prometheus text exposition format (version 0.0.4) of ``families``."""
    lines = []
    for name, samples in families.items():
        kind, text = FAMILIES[name]
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{lab}}} {_number(value)}" if lab else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"


def write(ledger: Ledger, directory: str | os.PathLike) -> Path:
    """Compute the metrics and replace ``directory/resilience.prom`` atomically (mode 0644,
    readable by node_exporter). Returns the file's path; OSError if the folder is unusable."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    text = render(collect(ledger)).encode()
    path = folder / FILENAME
    # atomic_write's temporary name does not end in .prom: the collector reads every *.prom.
    atomic_write(path, text, 0o644)
    return path
