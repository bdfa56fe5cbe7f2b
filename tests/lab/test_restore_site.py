"""restore --site onto members: delta, staged, swapped atomically, checked through the VIP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from resilience.lab import faults, site
from resilience.lab import layout as L
from resilience.lab import topology as T
from resilience.lab.hosts import run_in
from resilience.sources.remote import FIND_FORMAT, parse_listing

pytestmark = pytest.mark.lab
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_cfg(tmp: Path, path: str = "/var/www/portal", hosts: str = "[web1, web2]", checks: bool = True) -> Path:
    cfg = tmp / "resilience.yml"
    check = f"""
    url: http://{T.VIP_ADDR}
    checks:
      - {{path: /healthz, status: 200, contains: ok}}
      - {{path: /, status: 200, sha256: {site.index_sha256()}}}""" if checks else ""
    cfg.write_text(f"""\
repository: {{url: {tmp / 'repo'}}}
inventory: {REPO_ROOT / 'inventories/lab/hosts.yml'}
ssh: {{identity_file: {L.client_key()}, known_hosts: {L.known_hosts()}}}
evidence: {{dir: {tmp / 'evidence'}}}
sites:
  portal:
    files: {{hosts: {hosts}, path: {path}, exclude: ["cache/**"]}}{check}
""")
    return cfg


def run(cfg: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_PASSWORD="pw", RESILIENCE_STATE_DIR=str(tmp / "state"))
    return subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), *args], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def listing(host: str, path: str = "/var/www/portal") -> dict[bytes, dict]:
    out = run_in(host, ["find", path, "-printf", FIND_FORMAT]).stdout
    return dict(parse_listing(out if isinstance(out, bytes) else out.encode("utf-8", "surrogateescape")))


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


@pytest.fixture
def backed_up(lab, member_lock, tmp_path):
    for web in T.WEB_HOSTS:
        faults.untamper(web)
    cfg = write_cfg(tmp_path)
    assert run(cfg, "init", tmp=tmp_path).returncode == 0
    r = run(cfg, "backup", "--site", "portal", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    yield cfg, tmp_path
    for web in T.WEB_HOSTS:
        faults.untamper(web)


def test_tampered_member_is_restored_exactly_while_the_vip_keeps_serving(backed_up):
    cfg, tmp = backed_up
    before_web1 = {p: hashlib.sha256(b).hexdigest() for p, b in site.site_files().items()}
    web2_before = listing("web2")
    faults.tamper("web1")
    defaced = hashlib.sha256(get(f"http://{T.host('web1').address}/")[1]).hexdigest()
    assert get(f"http://{T.host('web1').address}/{faults.PLANTED_FILE}")[0] == 200
    # Poll the VIP and web1 directly during the restore: the VIP must answer every request,
    # and web1 must only ever serve the whole old or the whole new home page.
    seen: dict[str, list] = {"vip": [], "web1": []}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen["vip"].append(get(T.VIP_URL)[0])
            status, body = get(f"http://{T.host('web1').address}/")
            seen["web1"].append((status, hashlib.sha256(body).hexdigest()))
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        r = run(cfg, "restore", "--site", "portal", "--host", "web1", "--files-only", "--yes", "--json", tmp=tmp)
    finally:
        stop.set()
        poller.join()
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    m = res["members"]["web1"]
    assert (m["changed"], m["removed"], m["added"]) == (1 + faults.TAMPERED_ARTICLES, 1, 0)
    assert m["verified"] is True
    assert all(c["ok"] for rs in res["checks"].values() for c in rs)
    # web1 serves exactly the pristine site again; the planted file is gone.
    assert site.is_pristine(L.site_dir("web1"))
    for rel, digest in list(before_web1.items())[:20]:
        status, body = get(f"http://{T.host('web1').address}/{rel}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == digest, rel
    assert get(f"http://{T.host('web1').address}/{faults.PLANTED_FILE}")[0] == 404
    # web2 was not touched at all (same inodes, same ctimes).
    assert listing("web2") == web2_before
    assert seen["vip"] and set(seen["vip"]) == {200}
    pristine = site.index_sha256()
    assert {s for s, _ in seen["web1"]} == {200}
    assert {d for _, d in seen["web1"]} <= {pristine, defaced}  # never a mix, never an error


def test_dry_run_lists_exactly_and_changes_nothing(backed_up):
    cfg, tmp = backed_up
    faults.tamper("web2")
    before = listing("web2")
    r = run(cfg, "restore", "--site", "portal", "--host", "web2", "--files-only", "--dry-run", tmp=tmp)
    assert r.returncode == 0, r.stderr
    assert "send   index.html" in r.stdout and f"remove {faults.PLANTED_FILE}" in r.stdout
    assert listing("web2") == before


def test_live_restore_needs_yes_without_a_terminal(backed_up):
    cfg, tmp = backed_up
    faults.tamper("web1")
    r = run(cfg, "restore", "--site", "portal", "--host", "web1", "--files-only", tmp=tmp)
    assert r.returncode == 2 and "--yes" in r.stderr
    assert not site.is_pristine(L.site_dir("web1"))


def test_a_full_disk_during_restore_leaves_the_old_tree(lab, tmp_path):
    """web2 gets a tiny filesystem for a small site; filling it makes the restore fail."""
    mnt = "/var/www/small"
    run_in("web2", ["sh", "-c", f"mkdir -p {mnt} && mount -t tmpfs -o size=1m tmpfs {mnt} && mkdir {mnt}/site"])
    try:
        run_in("web2", ["sh", "-c", f"head -c 300000 /dev/urandom > {mnt}/site/big.bin && echo hi > {mnt}/site/a.txt"])
        cfg = write_cfg(tmp_path, path=f"{mnt}/site", hosts="[web2]", checks=False)
        assert run(cfg, "init", tmp=tmp_path).returncode == 0
        assert run(cfg, "backup", "--site", "portal", tmp=tmp_path).returncode == 0
        # Tamper, then fill the disk: the restore needs room for a new big.bin and has none.
        run_in("web2", ["sh", "-c", f"head -c 300000 /dev/urandom > {mnt}/site/big.bin; echo evil > {mnt}/site/x.php;"
                                    f" head -c 2000000 /dev/zero > {mnt}/filler 2>/dev/null; true"])
        def state() -> tuple:
            # ctime and link counts move while the staging copy links the files; nothing else may.
            entries = {p: {k: v for k, v in f.items() if k not in ("ctime_ns", "nlink")}
                       for p, f in listing("web2", f"{mnt}/site").items()}
            sums = run_in("web2", ["sh", "-c", f"cd {mnt}/site && sha256sum big.bin a.txt x.php"]).stdout
            return entries, sums

        before = state()
        r = run(cfg, "restore", "--site", "portal", "--host", "web2", "--files-only", "--yes", tmp=tmp_path)
        assert r.returncode in (1, 3), r.stdout + r.stderr
        assert "No space left on device" in r.stderr + r.stdout
        assert state() == before  # the old tree, untouched
        leftovers = run_in("web2", ["sh", "-c", f"ls -a {mnt}"]).stdout
        assert "resilience-stage" not in str(leftovers)
        # With room again, the same restore succeeds.
        run_in("web2", ["rm", "-f", f"{mnt}/filler"])
        r = run(cfg, "restore", "--site", "portal", "--host", "web2", "--files-only", "--yes", tmp=tmp_path)
        assert r.returncode == 0, r.stderr
    finally:
        run_in("web2", ["sh", "-c", f"umount {mnt}; rmdir {mnt}"], check=False)
