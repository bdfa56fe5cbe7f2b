"""Notifications: tell people when something needs them (both lines down, a failover, …).

Configured in ``resilience.yml``::

    notify:
      webhooks:
        - {url: "https://hooks.example.gov/resilience", format: json, timeout: 5}
      commands:
        - [/usr/local/bin/page-oncall]          # gets the JSON event on stdin

Every channel gets the same event (:func:`event`): ``{"event", "severity", "summary",
"time", "host", "details"}``, with ``details`` passed through the project-wide redaction.
The payload never carries secrets; a webhook URL may (a token in its query), so only its
scheme, host and path are ever recorded or shown.

Webhook formats (``format:``): ``json`` (the event as is), ``wecom`` (企业微信 group robot:
``{"msgtype": "markdown", "markdown": {"content"}}``) and ``dingtalk`` (钉钉 robot:
``{"msgtype": "markdown", "markdown": {"title", "text"}}``, signed with ``timestamp`` and
``sign`` query parameters when ``secret_file`` is set). E-mail goes by SMTP (``notify.email``,
STARTTLS by default, password from ``password_file``). Secrets are read from their files when
sending and never appear in results, logs or the ledger.

:func:`on_result` decides whether a run's result is worth a message (``notify.events``:
``failure`` = any run that did not succeed, ``incident`` = every incident runbook,
``drill`` = every drill result) and sends it; :func:`result_of` builds its input from the ledger.

A failing channel never raises: :func:`send` returns one result per channel.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import smtplib
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit

from . import __version__
from .config import EmailConfig, NotifyConfig, WebhookConfig
from .evidence.redact import redact, redact_text

SEVERITIES = ("info", "warning", "critical")


def event(name: str, summary: str, *, severity: str = "warning", details: dict | None = None) -> dict:
    """The event every channel receives (JSON-able, redacted)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")
    return {
        "event": name,
        "severity": severity,
        "summary": redact_text(summary),
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "host": os.uname().nodename,
        "source": f"resilience {__version__}",
        "details": redact(details or {}),
    }


def safe_url(url: str) -> str:
    """``url`` without query, fragment or user info (which may hold tokens)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme}://{host}{p.path}"


def _post_json(url: str, payload: dict, timeout: float, robot: bool = False) -> dict:
    body = json.dumps(payload, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"resilience/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only (config)
            res: dict = {"ok": 200 <= resp.status < 300, "status": resp.status}
            if robot and res["ok"]:
                # WeCom and DingTalk answer 200 even when they refuse: {"errcode": N, "errmsg": …}.
                try:
                    answer = json.loads(resp.read(65536) or b"{}")
                except ValueError:
                    answer = {}
                if isinstance(answer, dict) and answer.get("errcode") not in (None, 0):
                    res.update(ok=False, error=redact_text(f"errcode {answer['errcode']}: {answer.get('errmsg', '')}")[:200])
            return res
    except urllib.error.HTTPError as exc:
        return {"ok": False, "status": exc.code, "error": f"HTTP {exc.code}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"ok": False, "error": redact_text(str(reason))[:200]}


def _run_command(argv: list[str], payload: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run(argv, input=json.dumps(payload, ensure_ascii=False).encode(),
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"ok": False, "error": redact_text(str(exc))[:200]}
    res: dict = {"ok": proc.returncode == 0, "rc": proc.returncode}
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        res["error"] = redact_text(tail[0])[:200]
    return res


def send(cfg: NotifyConfig, payload: dict, *, command_timeout: float = 30.0) -> list[dict]:
    """Send ``payload`` (from :func:`event`) to every configured channel, one after the
    other. Returns ``[{"channel", "target", "ok", ...}]``; never raises for a failing
    channel. An empty list means nothing is configured."""
    results = []
    for hook in cfg.webhooks:
        res = _send_webhook(hook, payload)
        results.append({"channel": "webhook", "format": hook.format, "target": safe_url(hook.url), **res})
    for argv in cfg.commands:
        res = _run_command(argv, payload, command_timeout)
        results.append({"channel": "command", "target": os.path.basename(argv[0]), **res})
    for mail in cfg.email:
        res = _send_email(mail, payload)
        results.append({"channel": "email", "target": f"{mail.host}:{mail.port}", **res})
    return results


# -- message bodies ----------------------------------------------------------------------------

_SEVERITY_ZH = {"info": "通知", "warning": "警告", "critical": "严重"}


def markdown_text(payload: dict, limit: int = 3800) -> str:
    """The event as short Markdown (for robots and e-mail): a bold headline, then when, where
    and the details, one per line; cut at ``limit`` characters (WeCom takes 4096 bytes)."""
    sev = payload.get("severity", "warning")
    lines = [f"**[{sev.upper()} {_SEVERITY_ZH.get(sev, '')}] {payload.get('summary', '')}**",
             f"> event: {payload.get('event')}", f"> time: {payload.get('time')}",
             f"> host: {payload.get('host')}"]
    for k, v in (payload.get("details") or {}).items():
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        lines.append(f"> {k}: {text}")
    out = "\n".join(lines)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _read_secret(path: Path) -> str:
    """The secret in ``path`` (whitespace stripped); OSError/ValueError if unreadable/empty."""
    secret = Path(path).read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError("empty")
    return secret


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature: base64(HMAC-SHA256(key=secret, "timestamp\\nsecret")),
    URL-encoded, as the ``sign`` query parameter next to ``timestamp`` (milliseconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def webhook_body(fmt: str, payload: dict) -> dict:
    """The POST body of ``payload`` for a webhook ``format``: json, wecom or dingtalk."""
    if fmt == "wecom":
        return {"msgtype": "markdown", "markdown": {"content": markdown_text(payload)}}
    if fmt == "dingtalk":
        title = f"[{payload.get('severity', '')}] {payload.get('summary', '')}"[:64]
        return {"msgtype": "markdown", "markdown": {"title": title, "text": markdown_text(payload)}}
    return payload


def _send_webhook(hook: WebhookConfig, payload: dict) -> dict:
    url = hook.url
    if hook.format == "dingtalk" and hook.secret_file is not None:
        try:
            secret = _read_secret(hook.secret_file)
        except (OSError, ValueError):
            return {"ok": False, "error": f"cannot read secret_file {hook.secret_file}"}
        ts = int(time.time() * 1000)
        url += ("&" if urlsplit(url).query else "?") + f"timestamp={ts}&sign={dingtalk_sign(secret, ts)}"
    return _post_json(url, webhook_body(hook.format, payload), hook.timeout, robot=hook.format != "json")


def _send_email(mail: EmailConfig, payload: dict) -> dict:
    msg = EmailMessage()
    msg["Subject"] = f"[resilience] {payload.get('severity', '')}: {payload.get('summary', '')}"[:200]
    msg["From"] = mail.sender
    msg["To"] = ", ".join(mail.to)
    msg["X-Resilience-Event"] = str(payload.get("event", ""))
    msg.set_content(markdown_text(payload, limit=100_000) + "\n\n-- \n"
                    + json.dumps(payload, ensure_ascii=False, indent=2, default=str) + "\n")
    try:
        password = _read_secret(mail.password_file) if mail.password_file else None
    except (OSError, ValueError):
        return {"ok": False, "error": f"cannot read password_file {mail.password_file}"}
    try:
        with smtplib.SMTP(mail.host, mail.port, timeout=mail.timeout) as smtp:
            if mail.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if mail.user:
                smtp.login(mail.user, password or "")
            refused = smtp.send_message(msg)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        # Server answers never hold our password, but mask anything password-like anyway.
        return {"ok": False, "error": redact_text(f"{type(exc).__name__}: {exc}")[:200]}
    if refused:
        return {"ok": False, "error": f"refused recipients: {', '.join(sorted(refused))}"}
    return {"ok": True, "recipients": len(mail.to)}


# -- run results -------------------------------------------------------------------------------

RESULT_KINDS = ("failure", "incident", "drill")


def result_of(ledger, run_id: str) -> dict[str, Any]:
    """The facts :func:`on_result` needs about one run, read from the ledger: run, action,
    outcome, duration_s, error, site, and for drills plan/rto_s/rpo_s/targets/passed, for
    incidents severity/report_upward. UsageError if the run is unknown or ambiguous."""
    from .evidence.report import (
        drill_plan,
        group_runs,
        incident_facts,
        kind_of,
        read_records,
        resolve_run,
        run_summary,
    )

    run = resolve_run(group_runs(read_records(ledger)[0]), run_id)
    s = run_summary(run)
    out: dict[str, Any] = {"run": s["run"], "action": s["action"], "outcome": s["outcome"],
                           "duration_s": s["duration_s"], "error": s["error"], "site": s["params"].get("site")}
    kind = kind_of(s["action"])
    if kind == "drill":
        d = s["details"]
        out.update(plan=drill_plan(s), rto_s=d.get("rto_s"), rpo_s=d.get("rpo_s"), targets=d.get("targets"),
                   passed=d.get("passed", s["outcome"] == "ok" and all(o["met"] is not False for o in s["objectives"])))
    elif kind == "incident":
        facts = incident_facts(ledger, run)
        out.update(severity=facts.get("severity"), report_upward=facts.get("report_upward"))
    return out


def on_result(cfg, kind: str, run_summary: dict[str, Any]) -> list[dict]:
    """Send a run's result when the config asks for it, and return :func:`send`'s results
    (an empty list when nothing was sent). ``cfg`` is the Config or its NotifyConfig;
    ``kind`` is ``drill``, ``incident`` or anything else (an ordinary run); ``run_summary``
    is a dict like :func:`result_of` returns (``run``, ``action``, ``outcome`` at least).

    Sent when ``kind`` is drill/incident and listed in ``notify.events``, or when the run did
    not succeed (outcome other than ok/skipped, or a drill that did not pass) and ``failure``
    is listed. Severity: critical for an incident to report upward; warning for a failure or
    another incident; info for a passed drill."""
    ncfg: NotifyConfig = getattr(cfg, "notify", cfg)
    outcome = run_summary.get("outcome")
    failed = outcome not in ("ok", "skipped") or (kind == "drill" and run_summary.get("passed") is False)
    if not ((kind in ("drill", "incident") and kind in ncfg.events) or (failed and "failure" in ncfg.events)):
        return []
    action, rid = run_summary.get("action") or kind, run_summary.get("run")
    if kind == "incident":
        upward = bool(run_summary.get("report_upward"))
        severity = "critical" if upward else "warning"
        name = "incident"
        text = (f"incident {action} ({run_summary.get('severity') or '?'}"
                f"{', REPORT UPWARD' if upward else ''}): {outcome}")
    elif kind == "drill":
        severity, name = ("warning" if failed else "info"), "drill-result"
        figures = ", ".join(f"{k.upper()[:3]} {run_summary[k]:g} s" for k in ("rto_s", "rpo_s")
                            if isinstance(run_summary.get(k), (int, float)))
        text = (f"drill {run_summary.get('plan') or action} {'FAILED' if failed else 'passed'}"
                f"{' (' + figures + ')' if figures else ''}")
    else:
        severity, name = "warning", "run-failed"
        text = f"{action}{' of ' + str(run_summary['site']) if run_summary.get('site') else ''} {outcome}"
        if run_summary.get("error"):
            text += f": {run_summary['error']}"
    if rid:
        text += f" — run {rid}"
    return send(ncfg, event(name, text, severity=severity, details=dict(run_summary)))
