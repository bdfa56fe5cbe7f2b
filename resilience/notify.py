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

To add a channel (WeCom, DingTalk, e-mail): a ``format`` that renders :func:`event` as that
service's body, or a new list in :class:`~resilience.config.NotifyConfig` and a sender here.
A failing channel never raises: :func:`send` returns one result per channel.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime
from urllib.parse import urlsplit

from . import __version__
from .config import NotifyConfig
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


def _post_json(url: str, payload: dict, timeout: float) -> dict:
    body = json.dumps(payload, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"resilience/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only (config)
            return {"ok": 200 <= resp.status < 300, "status": resp.status}
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
        res = _post_json(hook.url, payload, hook.timeout)
        results.append({"channel": "webhook", "target": safe_url(hook.url), **res})
    for argv in cfg.commands:
        res = _run_command(argv, payload, command_timeout)
        results.append({"channel": "command", "target": os.path.basename(argv[0]), **res})
    return results
