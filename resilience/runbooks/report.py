"""Incident reports: Markdown (Jinja2 template ``resilience/data/incident_report.md.j2``) and
JSON, built from the run's steps in the ledger and the runbook's own description.

Severity rule (docs/runbooks.md), three levels; ``major`` and ``critical`` are reported upward:

- ``illegal-content``: always **critical** (harmful content on a government site).
- ``tamper``: **critical** when the tampered content was served through the site's public
  address (the balancer check failed when the runbook began), else **major** (a government
  site's content was changed).
- ``db-failure``: **major** when the site did not answer or the live database was replaced,
  else minor.
- ``attack``: **major** when the site did not answer when the runbook began, else minor.
- ``network``: **major** when no line was healthy (the site was unreachable), else minor.
- any runbook that stopped on a failed step is at least **major** (not contained).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..evidence.redact import redact, redact_text
from ..state import evidence_dir

LEVELS = ("minor", "major", "critical")
UPWARD = ("major", "critical")
TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "incident_report.md.j2"


def severity(kind: str, facts: dict[str, Any], outcome: str) -> tuple[str, str]:
    """(level, reason) by the rule in the module doc."""
    if kind == "illegal-content":
        level, why = "critical", "illegal content was published on the site"
    elif kind == "tamper":
        if facts.get("public_affected"):
            level, why = "critical", "tampered content was served through the site's public address"
        else:
            level, why = "major", "the content of a member of a government site was changed"
    elif kind == "db-failure":
        if facts.get("site_down") or facts.get("live_restored"):
            level, why = "major", "the site's database failed (site down or data replaced from a dump)"
        else:
            level, why = "minor", "database problem without loss of service or data"
    elif kind == "attack":
        if facts.get("site_down"):
            level, why = "major", "the attack made the site unavailable"
        else:
            level, why = "minor", "attack blocked while the site kept answering"
    elif kind == "network":
        if facts.get("no_line"):
            level, why = "major", "no line was healthy: the site was unreachable from the internet"
        else:
            level, why = "minor", "one line failed; the other carried the site"
    else:
        level, why = "minor", "no rule for this kind"
    if outcome != "ok" and LEVELS.index(level) < LEVELS.index("major"):
        level, why = "major", why + "; the runbook did not complete (not contained)"
    return level, why


def _measures(timeline: list[dict[str, Any]]) -> list[str]:
    out = []
    for s in timeline:
        if s["outcome"] == "ok":
            out.append(f"{s['step']}" + (f" on {s['host']}" if s.get("host") else "") + " — done")
        elif s["outcome"] == "skipped":
            out.append(f"{s['step']} — skipped ({s.get('note') or 'nothing to do'})")
        else:
            out.append(f"{s['step']} — {s['outcome'].upper()}: {s.get('error') or ''}".rstrip(": "))
    return out


def _artifacts(ledger, run_ids: set[str]) -> list[dict[str, Any]]:
    out = []
    for rec in ledger.records():
        if rec.get("type") == "step" and rec.get("run") in run_ids:
            for a in rec.get("artifacts") or []:
                out.append({"run": rec["run"], "step": rec.get("step"), "name": a.get("name"),
                            "path": a.get("path"), "sha256": a.get("sha256"), "size": a.get("size")})
    return out


def build(ctx, book, outcome: str, failed_step: str | None, error: str | None,
          duration_s: float) -> dict[str, Any]:
    """The report as a JSON-able dict (redacted)."""
    run = ctx.run
    names = {s.name for s in book.steps(ctx.cfg, ctx.params)}
    timeline = []
    for s in run.steps:
        if s.get("step") not in names:
            continue
        d = s.get("details") or {}
        note = d.get("skipped") or (f"done in {d['done_in']}" if d.get("done_in") else None)
        timeline.append({"step": s["step"], "host": s.get("host"), "start": s.get("start"), "end": s.get("end"),
                         "duration_s": s.get("duration_s"), "outcome": s.get("outcome"),
                         "error": s.get("error"), "note": note})
    desc = book.describe(ctx, outcome)
    level, why = severity(ctx.kind, ctx.facts, outcome)
    if outcome == "ok":
        trend = desc.get("trend") or "contained: every step completed and the checks pass"
    else:
        trend = (f"NOT contained: the runbook stopped at step '{failed_step}' ({error}); resume with "
                 f"`resilience incident {ctx.kind} --resume {run.id}` once the cause is fixed")
    fields = {
        "source": desc.get("source") or _source(ctx),
        "scope": desc.get("scope", ""),
        "nature": desc.get("nature", ""),
        "trend": trend,
        "measures": _measures(timeline),
    }
    report = {
        "title": desc.get("title", ctx.kind), "run": run.id, "kind": ctx.kind, "dry_run": ctx.dry_run,
        "resumes": run.details.get("resumes"), "outcome": outcome, "failed_step": failed_step,
        "error": redact_text(error) if error else None,
        "started": timeline[0]["start"] if timeline else None,
        "ended": timeline[-1]["end"] if timeline else None, "duration_s": round(duration_s, 3),
        "severity": level, "severity_reason": why, "report_upward": level in UPWARD,
        "fields": fields,
        "fields_zh": {"信息来源": fields["source"], "影响范围": fields["scope"], "事件性质": fields["nature"],
                      "事件发展趋势": fields["trend"], "采取的措施": fields["measures"]},
        "findings": desc.get("findings") or {},
        "params": ctx.params, "timeline": timeline,
        "linked_runs": list(ctx.linked_runs),
        "artifacts": _artifacts(ctx.ledger, {run.id, *ctx.linked_runs}),
    }
    return redact(report)


def _source(ctx) -> str:
    src = ctx.params.get("source") or "operator"
    who = ctx.params.get("reported_by") or _user()
    if str(src).startswith("watch"):
        return f"automatic detection by `resilience watch` (tamper watch: {src}), which started this runbook"
    return f"reported by {src} ({who}), runbook started by hand with `resilience incident {ctx.kind}`"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown text of ``report`` (from :func:`build`)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(TEMPLATE.name).render(r=report)


def report_paths(ctx, report_path: str | None) -> dict[str, Path]:
    """Where the report goes: ``PATH`` (+ ``PATH`` with ``.json``) when given, else the
    config's ``runbooks.report_dir`` or the evidence folder's ``reports/``, named by the run."""
    if report_path:
        md = Path(report_path)
        if md.suffix.lower() == ".json":
            md = md.with_suffix(".md")
        return {"markdown": md, "json": md.with_suffix(".json")}
    folder = ctx.cfg.runbooks.report_dir or (evidence_dir(ctx.cfg) / "reports")
    return {"markdown": Path(folder) / f"{ctx.run.id}.md", "json": Path(folder) / f"{ctx.run.id}.json"}


def write_report(ctx, book, outcome: str, failed_step: str | None, error: str | None, duration_s: float,
                 report_path: str | None) -> dict[str, Any]:
    """Build, render and write the report; returns the report dict with ``paths``."""
    report = build(ctx, book, outcome, failed_step, error, duration_s)
    paths = report_paths(ctx, report_path)
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    paths["json"].write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    report["paths"] = {k: str(v) for k, v in paths.items()}
    return report
