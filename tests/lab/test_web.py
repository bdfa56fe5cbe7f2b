"""The portal: through the VIP (HAProxy, both web hosts), from the internet, and the
HAProxy runtime API."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from resilience.lab import layout as L
from resilience.lab import run_in, site
from resilience.lab import topology as T
from resilience.lab.services import haproxy_command, http_get

pytestmark = pytest.mark.lab


def test_vip_serves_the_portal_from_both_web_hosts(lab):
    served_by = set()
    for _ in range(6):
        status, headers, body = http_get(T.VIP_ADDR, "/")
        assert status == 200
        assert hashlib.sha256(body).hexdigest() == site.index_sha256()
        served_by.add(headers.get("x-served-by"))
    assert served_by == {"web1", "web2"}
    article = site.article_paths()[10]
    status, _h, body = http_get(T.VIP_ADDR, "/" + article)
    assert status == 200
    assert body == site.site_files()[article]
    assert "关于".encode() in body


def test_site_is_realistic(lab):
    files = site.site_files()
    index = files["index.html"].decode()
    assert len(site.article_paths()) >= 60
    assert all(f'href="{p}"' in index for p in site.article_paths())
    pngs = [p for p in files if p.endswith(".png")]
    pdfs = [p for p in files if p.endswith(".pdf")]
    assert pngs and all(files[p].startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert pdfs and all(files[p].startswith(b"%PDF-") and files[p].rstrip().endswith(b"%%EOF")
                        for p in pdfs)
    status, headers, body = http_get(T.WEB1_ADDR, "/" + pngs[0])
    assert status == 200 and headers["content-type"] == "image/png" and body == files[pngs[0]]


def test_web_hosts_answer_healthz_and_log_in_combined_format(lab):
    for host in T.WEB_HOSTS:
        status, _h, body = http_get(T.HOSTS[host].address, "/healthz")
        assert (status, body.strip()) == (200, b"ok")
    http_get(T.WEB1_ADDR, "/about.html", headers={"User-Agent": "lab-test-agent"})
    log = run_in("web1", ["cat", "/var/log/nginx/portal.access.log"]).stdout
    line = next(ln for ln in reversed(log.splitlines()) if "lab-test-agent" in ln)
    assert '"GET /about.html HTTP/1.1" 200' in line and line.startswith(T.OPS_ADDR)


def test_public_address_serves_the_portal_from_the_internet(lab):
    proc = run_in("internet", ["curl", "-s", "-f", "-m", "5", T.PUBLIC_URL], input=b"")
    assert hashlib.sha256(proc.stdout).hexdigest() == site.index_sha256()
    # The client really is the internet's address: gw1's DNAT keeps it, so HAProxy sees it...
    haproxy_log = (L.log_dir("lb1") / "haproxy.log").read_text()
    assert T.CLIENT_ADDR in haproxy_log
    # ...and passes it on in X-Forwarded-For, which nginx (trusting lb1 only) logs as the client.
    log = run_in("web1", ["cat", "/var/log/nginx/portal.access.log"]).stdout + \
        run_in("web2", ["cat", "/var/log/nginx/portal.access.log"]).stdout
    assert any(ln.startswith(T.CLIENT_ADDR + " ") for ln in log.splitlines())


def test_ops_host_routes_are_untouched(lab):
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True,
                            check=True).stdout
    lab_routes = [ln for ln in routes.splitlines() if "198.18." in ln or "198.19." in ln]
    assert lab_routes == [ln for ln in lab_routes if ln.startswith(T.LAN_NET) and T.BRIDGE in ln]
    assert len(lab_routes) == 1


def test_haproxy_runtime_api(lab):
    state = haproxy_command("show servers state portal")
    rows = [ln.split() for ln in state.splitlines() if ln and not ln.startswith("#")]
    servers = {r[3]: r for r in rows if len(r) > 4}
    assert set(servers) == {"web1", "web2"}
    assert servers["web1"][4] == T.WEB1_ADDR
    stat = haproxy_command("show stat")
    header = stat.splitlines()[0].lstrip("# ").split(",")
    rows = [dict(zip(header, ln.split(","), strict=False)) for ln in stat.splitlines()[1:] if ln]
    portal = {r["svname"]: r["status"] for r in rows if r.get("pxname") == "portal"}
    assert portal["web1"] == "UP" and portal["web2"] == "UP"


def test_haproxy_reload_keeps_the_server_state(lab):
    import socket
    import time

    run_dir = L.haproxy_run_dir()
    master_before = (run_dir / "haproxy.pid").read_text().strip()
    worker_before = haproxy_command("show info")
    try:
        haproxy_command("set server portal/web2 state maint")
        (run_dir / "server-state").write_text(haproxy_command("show servers state"))
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(run_dir / "master.sock"))
            s.sendall(b"reload\n")
        deadline = time.monotonic() + 10
        while True:
            try:
                info = haproxy_command("show info")
            except OSError:
                info = worker_before
            pid_line = next(ln for ln in info.splitlines() if ln.startswith("Pid:"))
            if pid_line not in worker_before:
                break  # a new worker answers
            assert time.monotonic() < deadline, "HAProxy did not reload"
            time.sleep(0.2)
        assert (run_dir / "haproxy.pid").read_text().strip() == master_before
        stat = haproxy_command("show stat")
        web2 = next(ln.split(",") for ln in stat.splitlines() if ln.startswith("portal,web2,"))
        assert web2[17] == "MAINT"
    finally:
        haproxy_command("set server portal/web2 state ready")
        (run_dir / "server-state").unlink(missing_ok=True)
