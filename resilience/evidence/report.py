"""Reports from the evidence ledger: one run (:func:`run_report`) or a period (:func:`period_report`),
rendered in HTML or Markdown, in Chinese or English, by the Jinja2 templates in ``resilience/data/``.

Everything shown is read from the ledger (records are already redacted when written); nothing
is added from elsewhere, so a report can be rebuilt from a copy of the evidence folder. Each
report carries the ledger's own verification result (:meth:`Ledger.verify`), so a reader sees
whether the records behind the figures are intact. The ledger is read leniently here: a line
that does not parse is skipped (verification reports it) so that a damaged ledger still yields
a report saying it is damaged, instead of no report.

Drill runs are expected to record ``details.rto_s``, ``details.rpo_s`` and ``details.targets``
(``{"rto_s": …, "rpo_s": …}``; ``rto``/``rpo`` are accepted too) in their run-end record;
runs without them simply have no RTO/RPO section.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .ledger import Ledger

FORMATS = ("html", "md")
LANGS = ("zh", "en")
TEMPLATES = Path(__file__).resolve().parents[1] / "data"
CHART_WIDTH = 480  # px of the SVG timeline's bar area
TEXT_BAR = 24  # characters of the Markdown timeline's bar
_SITE_STEP = re.compile(r"^(?:backup files|store database \S+) of (?P<site>\S+)$")


# -- reading the ledger ---------------------------------------------------------------------------

def read_records(ledger: Ledger) -> tuple[list[dict[str, Any]], int]:
    """(parsed records in order, number of lines that did not parse). Never raises for damage."""
    out: list[dict[str, Any]] = []
    bad = 0
    if not ledger.path.exists():
        return out, bad
    with open(ledger.path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                bad += 1
    return out, bad


def parse_time(text: str | None) -> datetime | None:
    """A ledger timestamp (ISO 8601, ``Z`` suffix) as an aware datetime; None if absent/bad."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def group_runs(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Runs by id, in ledger order: ``{"id", "start": rec, "steps": [rec], "end": rec|None}``.
    Records of a run whose start record is missing are ignored (verification reports why)."""
    runs: dict[str, dict[str, Any]] = {}
    for rec in records:
        rid = rec.get("run")
        if not isinstance(rid, str) or not rid:
            continue
        kind = rec.get("type")
        if kind == "run-start":
            runs[rid] = {"id": rid, "start": rec, "steps": [], "end": None}
        elif rid in runs and kind == "step":
            runs[rid]["steps"].append(rec)
        elif rid in runs and kind == "run-end":
            runs[rid]["end"] = rec
    return runs


def resolve_run(runs: dict[str, dict[str, Any]], run_id: str) -> dict[str, Any]:
    """The run whose id is ``run_id`` or starts with it; UsageError when none or several match."""
    if run_id in runs:
        return runs[run_id]
    matches = [r for rid, r in runs.items() if rid.startswith(run_id)]
    if not matches:
        raise UsageError(f"no run {run_id!r} in the ledger")
    if len(matches) > 1:
        raise UsageError(f"run id {run_id!r} is ambiguous ({len(matches)} runs match)")
    return matches[0]


def verification(ledger: Ledger) -> dict[str, Any]:
    """The ledger's own verification (:meth:`Ledger.verify`) as a dict for the templates."""
    res = ledger.verify()
    return {"ok": res.ok, "records": res.records, "runs": res.runs, "key": res.key,
            "first_bad_record": res.bad_seq, "reason": res.reason}


# -- figures --------------------------------------------------------------------------------------

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def objectives(details: dict[str, Any]) -> list[dict[str, Any]]:
    """RTO/RPO measured against targets from a run's details: ``[{"name", "value_s",
    "target_s", "met"}]`` (``met`` None when there is no target or no measurement)."""
    targets = details.get("targets") if isinstance(details.get("targets"), dict) else {}
    out = []
    for name in ("rto", "rpo"):
        value = _num(details.get(f"{name}_s"))
        target = _num(targets.get(f"{name}_s", targets.get(name)))
        if value is None and target is None:
            continue
        met = None if value is None or target is None else value <= target
        out.append({"name": name.upper(), "value_s": value, "target_s": target, "met": met})
    return out


def _artifact_state(ledger: Ledger, art: dict[str, Any]) -> str:
    """``intact`` when the kept file still has the recorded sha256, else ``changed`` or ``missing``."""
    rel = art.get("path")
    if not rel:
        return "missing"
    path = (ledger.dir / rel).resolve()
    if ledger.dir.resolve() not in path.parents:
        return "missing"  # a path pointing outside the evidence folder is not evidence
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return "missing"
    return "intact" if h.hexdigest() == art.get("sha256") else "changed"


def _duration(start: dict, end: dict | None, steps: list[dict]) -> float | None:
    if end and _num(end.get("duration_s")) is not None:
        return float(end["duration_s"])
    t0, t1 = parse_time(start.get("time")), parse_time((end or {}).get("time"))
    if t1 is None and steps:
        t1 = parse_time(steps[-1].get("end"))
    return (t1 - t0).total_seconds() if t0 and t1 else None


def run_summary(run: dict[str, Any]) -> dict[str, Any]:
    """The facts of one grouped run (see :func:`group_runs`) used by reports, metrics and
    notifications: id, action, start/end times, duration, outcome (``incomplete`` without an
    end record), dry_run, params, details, error, steps by outcome, RTO/RPO objectives."""
    start, end, steps = run["start"], run["end"], run["steps"]
    details = (end or {}).get("details") or {}
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.get("outcome") or "?"] = counts.get(s.get("outcome") or "?", 0) + 1
    return {
        "run": run["id"], "action": start.get("action") or "?", "start": start.get("time"),
        "end": (end or {}).get("time"), "duration_s": _duration(start, end, steps),
        "outcome": (end or {}).get("outcome") or "incomplete", "dry_run": bool(start.get("dry_run")),
        "user": start.get("user"), "hostname": start.get("hostname"),
        "params": start.get("params") or {}, "details": details, "error": (end or {}).get("error"),
        "steps": len(steps), "step_outcomes": counts, "objectives": objectives(details),
        "seq_first": start.get("seq"), "seq_last": (end or (steps[-1] if steps else start)).get("seq"),
    }


def kind_of(action: str) -> str:
    """The report section an action belongs to: backup, verify, restore, drill, incident, other."""
    if action == "backup":
        return "backup"
    if action == "verify":
        return "verify"
    if action in ("restore", "restore-site"):
        return "restore"
    if action.startswith("drill"):
        return "drill"
    if action.startswith("incident-"):
        return "incident"
    return "other"


def drill_plan(summary: dict[str, Any]) -> str:
    """The drill plan's name from a drill run's details or params (else the action)."""
    for src in (summary["details"], summary["params"]):
        value = src.get("plan")
        if isinstance(value, dict):  # the drill runner records a summary of the plan
            value = value.get("path") or value.get("title")
        if isinstance(value, str) and value:
            return Path(value).stem if value.endswith((".yml", ".yaml")) else value
    return summary["action"]


def drill_title(summary: dict[str, Any]) -> str | None:
    """The drill plan's title when the run recorded one (``details.plan.title`` or ``params.title``)."""
    plan = summary["details"].get("plan")
    title = plan.get("title") if isinstance(plan, dict) else summary["params"].get("title")
    return title if isinstance(title, str) and title else None


def incident_facts(ledger: Ledger, run: dict[str, Any]) -> dict[str, Any]:
    """Severity, report-upward flag and the incident fields of an incident run, from its
    ``incident report`` step and the JSON report kept as its artifact (used only when the file
    still has the digest the ledger recorded)."""
    out: dict[str, Any] = {}
    for s in run["steps"]:
        if s.get("step") != "incident report":
            continue
        d = s.get("details") or {}
        out.update(severity=d.get("severity"), report_upward=d.get("report_upward"))
        for a in s.get("artifacts") or []:
            if str(a.get("name", "")).endswith(".json") and _artifact_state(ledger, a) == "intact":
                try:
                    rep = json.loads((ledger.dir / a["path"]).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue
                if isinstance(rep, dict):
                    out.update(title=rep.get("title"), severity_reason=rep.get("severity_reason"),
                               fields=rep.get("fields") or {})
    return out


def timeline(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps with their offset from the run start and the geometry of their bars (SVG pixels
    and text-bar characters), scaled to the run's span."""
    t0 = parse_time(run["start"].get("time"))
    rows = []
    for n, s in enumerate(run["steps"], 1):
        st = parse_time(s.get("start"))
        offset = (st - t0).total_seconds() if st and t0 else 0.0
        dur = _num(s.get("duration_s")) or 0.0
        rows.append({"n": n, "step": s.get("step"), "host": s.get("host"), "start": s.get("start"),
                     "end": s.get("end"), "duration_s": dur, "offset_s": max(offset, 0.0),
                     "outcome": s.get("outcome") or "?", "error": s.get("error"),
                     "artifacts": s.get("artifacts") or []})
    span = max([r["offset_s"] + r["duration_s"] for r in rows] + [0.0]) or 1.0
    for r in rows:
        r["x"] = round(r["offset_s"] / span * CHART_WIDTH, 1)
        r["w"] = max(round(r["duration_s"] / span * CHART_WIDTH, 1), 1.0)
        r["bar"] = "█" * max(1, round(r["duration_s"] / span * TEXT_BAR)) if r["duration_s"] > 0 else "▏"
    return rows


# -- the two reports ------------------------------------------------------------------------------

def run_report(ledger: Ledger, run_id: str) -> dict[str, Any]:
    """The report model of one run (id or unique prefix): summary, timeline, objectives,
    artifacts with digests and their on-disk state, incident facts, ledger verification."""
    records, unreadable = read_records(ledger)
    run = resolve_run(group_runs(records), run_id)
    summary = run_summary(run)
    rows = timeline(run)
    artifacts = [{"step": r["step"], "name": a.get("name"), "path": a.get("path"), "sha256": a.get("sha256"),
                  "size": a.get("size"), "state": _artifact_state(ledger, a)}
                 for r in rows for a in r["artifacts"]]
    ver = verification(ledger)
    bad = ver["first_bad_record"]
    ver["run_affected"] = (not ver["ok"]) and (bad is None or summary["seq_last"] is None
                                              or bad <= summary["seq_last"])
    ver["unreadable_lines"] = unreadable
    model = {"type": "run", "kind": kind_of(summary["action"]), "summary": summary, "timeline": rows,
             "chart": {"width": CHART_WIDTH, "height": 24 * len(rows) + 8},
             "objectives": summary["objectives"], "artifacts": artifacts, "verification": ver,
             "generated": _now()}
    if model["kind"] == "incident":
        model["incident"] = incident_facts(ledger, run)
    if model["kind"] == "drill":
        model["plan"] = drill_plan(summary)
        model["plan_title"] = drill_title(summary)
    return model


def parse_period(text: str) -> tuple[datetime, datetime, str]:
    """``2026Q4``, ``2026-11`` or ``2026`` → (start, end) UTC, end exclusive, and the label.
    UsageError for anything else."""
    t = text.strip().upper()
    m = re.fullmatch(r"(\d{4})(?:Q([1-4])|-(\d{2}))?", t)
    if not m or (m.group(3) and not 1 <= int(m.group(3)) <= 12):
        raise UsageError(f"bad period {text!r}: use a year (2026), a quarter (2026Q4) or a month (2026-11)")
    year = int(m.group(1))
    if m.group(2):
        first = 3 * (int(m.group(2)) - 1) + 1
        months = 3
    elif m.group(3):
        first, months = int(m.group(3)), 1
    else:
        first, months = 1, 12
    start = datetime(year, first, 1, tzinfo=UTC)
    nxt = first + months
    end = datetime(year + (nxt - 1) // 12, (nxt - 1) % 12 + 1, 1, tzinfo=UTC)
    return start, end, t


def backup_sites(run: dict[str, Any], summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per site of one backup run: outcome (failed when one of its steps failed or, with no
    step, when the run failed) and the sizes its steps recorded."""
    per: dict[str, dict[str, Any]] = {}
    for s in run["steps"]:
        m = _SITE_STEP.match(str(s.get("step") or ""))
        if not m:
            continue
        d = per.setdefault(m.group("site"), {"failed": False, "bytes_added": 0, "bytes_stored": 0,
                                             "bytes_total": 0, "snapshots": []})
        if s.get("outcome") not in ("ok", "skipped"):
            d["failed"] = True
        det = s.get("details") or {}
        for k in ("bytes_added", "bytes_stored"):
            d[k] += int(_num(det.get(k)) or 0)
        # Files record the size of the whole tree; a database dump its bytes read.
        d["bytes_total"] += int(_num(det.get("bytes_total")) or _num(det.get("bytes_read")) or 0)
        if det.get("snapshot"):
            d["snapshots"].append(det["snapshot"])
    for site in summary["params"].get("sites") or []:
        if isinstance(site, str) and site not in per:
            per[site] = {"failed": summary["outcome"] != "ok", "bytes_added": 0, "bytes_stored": 0,
                         "bytes_total": 0, "snapshots": []}
    if summary["outcome"] in ("failed", "cancelled", "incomplete") and not any(d["failed"] for d in per.values()):
        for d in per.values():
            d["failed"] = True  # the run failed outside its site steps (e.g. repository unusable)
    return per


def period_report(ledger: Ledger, period: str) -> dict[str, Any]:
    """The report model of a period: backups per site (count, last good, failures), verifies,
    restores, drills with RTO/RPO against targets, incidents with severity and report-upward
    flag, other runs by action, and the ledger's verification. A run belongs to the period
    its start time falls in; dry runs are counted apart and listed nowhere else."""
    start, end, label = parse_period(period)
    records, unreadable = read_records(ledger)
    runs = group_runs(records)
    sections: dict[str, list[dict[str, Any]]] = {"verify": [], "restore": [], "drill": [], "incident": []}
    sites: dict[str, dict[str, Any]] = {}
    other: dict[str, int] = {}
    dry = 0
    included = []
    for run in runs.values():
        t = parse_time(run["start"].get("time"))
        if t is None or not start <= t < end:
            continue
        summary = run_summary(run)
        if summary["dry_run"]:
            dry += 1
            continue
        included.append(summary["run"])
        kind = kind_of(summary["action"])
        if kind == "backup":
            for site, d in backup_sites(run, summary).items():
                s = sites.setdefault(site, {"site": site, "count": 0, "ok": 0, "failures": 0, "last": None,
                                            "last_ok": None, "last_run": None, "bytes_added": 0,
                                            "bytes_stored": 0, "bytes_total": None})
                s["count"] += 1
                s["last"] = summary["start"]
                s["last_run"] = summary["run"]
                s["bytes_added"] += d["bytes_added"]
                s["bytes_stored"] += d["bytes_stored"]
                if d["failed"]:
                    s["failures"] += 1
                else:
                    s["ok"] += 1
                    s["last_ok"] = summary["start"]
                    s["bytes_total"] = d["bytes_total"] or s["bytes_total"]
        elif kind == "other":
            other[summary["action"]] = other.get(summary["action"], 0) + 1
        else:
            row = dict(summary)
            if kind == "drill":
                row["plan"] = drill_plan(summary)
                row["plan_title"] = drill_title(summary)
            elif kind == "incident":
                row.update(incident_kind=summary["action"].removeprefix("incident-"), **incident_facts(ledger, run))
            elif kind == "restore":
                row["site"] = summary["params"].get("site")
                row["snapshot"] = summary["params"].get("snapshot")
            sections[kind].append(row)
    ver = verification(ledger)
    ver["unreadable_lines"] = unreadable
    drills = sections["drill"]
    return {
        "type": "period", "period": label, "from": start.isoformat(), "to": end.isoformat(),
        "backups": sorted(sites.values(), key=lambda s: s["site"]),
        "verifies": sections["verify"], "restores": sections["restore"], "drills": drills,
        "incidents": sections["incident"], "other": dict(sorted(other.items())), "dry_runs": dry,
        "runs": included, "verification": ver, "generated": _now(),
        "totals": {
            "runs": len(included),
            "backup_failures": sum(s["failures"] for s in sites.values()),
            "drills_failed": sum(1 for d in drills if d["outcome"] != "ok" or d["details"].get("passed") is False
                                 or any(o["met"] is False for o in d["objectives"])),
            "incidents_upward": sum(1 for i in sections["incident"] if i.get("report_upward")),
        },
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- rendering ------------------------------------------------------------------------------------

def _md_cell(value: Any) -> str:
    """A value safe inside a Markdown table cell: no pipes or line breaks to break the table."""
    # < and > too: Markdown viewers render raw HTML, and a recorded value is not markup.
    return (str("" if value is None else value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _fmt_duration(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "–"
    if v < 60:
        return f"{v:.2f} s"
    minutes, secs = divmod(round(v), 60)
    hours, minutes = divmod(minutes, 60)
    longhand = f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"
    return f"{v:.0f} s ({longhand})"


def _fmt_bytes(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v}"


def _fmt_value(value: Any) -> str:
    """A recorded parameter as text: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def render(model: dict[str, Any], fmt: str = "html", lang: str = "en") -> str:
    """The text of a report model (from :func:`run_report` or :func:`period_report`) as ``html``
    (XHTML-style, autoescaped, inline SVG chart, no scripts or external assets) or ``md``."""
    import jinja2

    from .report_i18n import LABELS, translate

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (use {' or '.join(FORMATS)})")
    if lang not in LANGS:
        raise UsageError(f"unknown language {lang!r} (use {' or '.join(LANGS)})")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        # Escape every value in HTML; Markdown has no escaping but cells go through |cell.
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(cell=_md_cell, dur=_fmt_duration, size=_fmt_bytes, value=_fmt_value,
                       t=lambda v: translate(lang, v))
    name = f"report_{model['type']}.{fmt}.j2"
    return env.get_template(name).render(m=model, L=LABELS[lang], lang=lang)
