"""HTTP checks: does a site (through the balancer) or a member (directly) serve what it should?

A site's ``checks`` (config) list paths with the expected status and, optionally, a string
the body must contain and the sha256 the body must have. With no checks configured the
default is ``GET /`` answering 200. Checks never follow redirects: a defaced site that
redirects elsewhere must fail, not be chased.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from .config import CheckConfig


@dataclass
class CheckResult:
    url: str
    ok: bool
    status: int | None = None
    sha256: str | None = None
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fetch(url: str, timeout: float = 5.0, host_header: str | None = None) -> tuple[int, bytes]:
    """GET ``url`` once (no redirects); returns (status, body)."""
    parts = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        headers = {"User-Agent": "resilience-check", "Connection": "close"}
        if host_header:
            headers["Host"] = host_header
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def run_checks(base_url: str, checks: list[CheckConfig], *, timeout: float = 5.0, retries: int = 0,
               delay: float = 0.5) -> list[CheckResult]:
    """Run every check against ``base_url`` (``http://host[:port]``). A failing check is retried
    ``retries`` times, ``delay`` seconds apart (a balancer needs a moment to notice a change)."""
    results = []
    for check in checks or [CheckConfig()]:
        url = base_url.rstrip("/") + check.path
        res = CheckResult(url, False)
        for attempt in range(retries + 1):
            res = _one(url, check, timeout)
            if res.ok:
                break
            if attempt < retries:
                time.sleep(delay)
        results.append(res)
    return results


def _one(url: str, check: CheckConfig, timeout: float) -> CheckResult:
    t0 = time.monotonic()
    res = CheckResult(url, False)
    try:
        status, body = fetch(url, timeout)
    except (OSError, http.client.HTTPException) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        res.seconds = round(time.monotonic() - t0, 3)
        return res
    res.status = status
    res.sha256 = hashlib.sha256(body).hexdigest()
    res.seconds = round(time.monotonic() - t0, 3)
    problems = []
    if status != check.status:
        problems.append(f"status {status}, expected {check.status}")
    if check.contains is not None and check.contains.encode() not in body:
        problems.append(f"body lacks {check.contains!r}")
    if check.sha256 is not None and res.sha256 != check.sha256:
        problems.append("body digest differs from the expected one")
    res.ok = not problems
    res.error = "; ".join(problems) or None
    return res
