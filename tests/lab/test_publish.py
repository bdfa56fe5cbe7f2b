"""publish in the lab: refused without enough reviewers; a reviewed publish deploys a new
article onto both members atomically, its snapshot records the reviewers and becomes the
baseline (members compare clean with it). The site and the lab repository's latest files
snapshot are pristine again afterwards."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from resilience.config import load_config
from resilience.control.ssh import SSH, target_for
from resilience.lab import faults, site
from resilience.lab import topology as T
from resilience.lab.hosts import run_in
from resilience.repository.repo import iter_tree
from resilience.targets.files import plan_member

pytestmark = pytest.mark.lab
CONFIG = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "resilience.yml"
LOCK = "/var/lib/resilience-lab/member-tests.lock"
ADDR = {"web1": "198.18.0.11", "web2": "198.18.0.12"}


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, RESILIENCE_CONFIG=str(CONFIG))
    return subprocess.run([sys.executable, "-m", "resilience", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def snapshot_ids() -> list[str]:
    r = cli("snapshots", "--site", "portal", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    snaps = data if isinstance(data, list) else data["snapshots"]
    return [s["id"] for s in snaps]


def member_inode(host: str) -> str:
    return run_in(host, ["stat", "-c", "%i", "/var/www/portal"]).stdout.strip()


@pytest.fixture
def members_locked(lab):
    """Hold the shared member-tests lock; start and end with pristine members and a fresh
    files snapshot of the pristine site as the latest one in the lab repository."""
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    with open(LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for web in T.WEB_HOSTS:
                faults.untamper(web)
            r = cli("snapshots")
            if r.returncode == 2 and "no repository" in r.stderr:
                assert cli("init").returncode == 0
            deadline = time.monotonic() + 60
            while not all(get(f"http://{a}/healthz")[0] == 200 for a in ADDR.values()):
                assert time.monotonic() < deadline, "a member does not answer (quarantined by another test?)"
                time.sleep(1)
            yield
        finally:
            for web in T.WEB_HOSTS:
                faults.untamper(web)
            r = cli("backup", "--site", "portal", "--files-only", "--json")
            assert r.returncode == 0, r.stderr
            fcntl.flock(lock, fcntl.LOCK_UN)


def new_tree(tmp_path: Path) -> tuple[Path, str, bytes]:
    root = tmp_path / "export"
    site.write_site(root)
    os.chmod(root, 0o755)
    name = f"news/publish-test-{os.getpid()}-{int(time.time())}.html"
    body = f"<html><body><h1>Flood season notice {time.time()}</h1></body></html>\n".encode()
    (root / name).write_bytes(body)
    os.chmod(root / name, 0o644)
    return root, name, body


def test_too_few_reviewers_is_refused_and_changes_nothing(members_locked, tmp_path):
    root, name, _ = new_tree(tmp_path)
    before = snapshot_ids()
    inodes = {h: member_inode(h) for h in ADDR}
    r = cli("publish", "--site", "portal", "--from", str(root), "--reviewer", "Li Wei", "--reviewer", "li wei",
            "--reviewer", "Zhang Min")
    assert r.returncode == 2
    assert r.stderr.startswith("resilience: error: publishing needs 3 distinct reviewers, got 2")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert snapshot_ids() == before
    for host, addr in ADDR.items():
        assert member_inode(host) == inodes[host]
        assert get(f"http://{addr}/{name}")[0] == 404
        assert site.is_pristine(Path(f"/var/lib/resilience-lab/hosts/{host}/www/portal"))


def test_reviewed_publish_deploys_atomically_and_moves_the_baseline(members_locked, tmp_path):
    root, name, body = new_tree(tmp_path)
    inodes = {h: member_inode(h) for h in ADDR}
    reviewers = ["Li Wei", "Zhang Min", "Wang Fang"]

    r = cli("publish", "--site", "portal", "--from", str(root), *[a for n in reviewers for a in ("--reviewer", n)],
            "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    for host in ADDR:
        assert dry["members"][host]["send"] == [name] and dry["members"][host]["remove"] == []
        assert get(f"http://{ADDR[host]}/{name}")[0] == 404  # the dry run changed nothing

    t0 = time.monotonic()
    r = cli("publish", "--site", "portal", "--from", str(root), *[a for n in reviewers for a in ("--reviewer", n)],
            "--message", "flood season notice", "--publisher", "cms-deploy", "--json")
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    print(f"publish took {took:.1f}s")
    for host, addr in ADDR.items():
        m = res["members"][host]
        assert m["applied"] and m["verified"] and m["added"] == 1 and m["removed"] == 0
        # Swapped in as a whole new tree (renameat2), never written in place.
        assert member_inode(host) != inodes[host]
        assert run_in(host, ["sh", "-c", "ls -a /var/www | grep -c resilience-stage || true"]).stdout.strip() == "0"
        assert get(f"http://{addr}/{name}") == (200, body)
    assert get(f"http://{T.VIP_ADDR}/{name}") == (200, body)
    assert all(c["ok"] for checks in res["checks"].values() for c in checks)
    assert any(c["url"].endswith(name) for c in res["checks"]["balancer"])

    # The snapshot is the newest files snapshot of the site and carries the review.
    cfg = load_config(str(CONFIG))
    from resilience.actions.repository import opened

    with opened(cfg) as repo, SSH() as ssh:
        repo.load_index()
        snap = repo.find_snapshot("latest", site="portal", kind="files")
        assert snap.id == res["snapshot"] and "publish" in snap.tags
        assert snap.meta["publish"]["reviewers"] == reviewers
        assert snap.meta["publish"]["message"] == "flood season notice"
        assert snap.meta["publish"]["publisher"] == "cms-deploy"
        items = list(iter_tree(repo, snap.tree))
        assert name.encode() in dict(items)
        for host in ADDR:
            plan, _ = plan_member(repo, snap, ssh, target_for(cfg, host), "/var/www/portal", cfg.site("portal").files.exclude,
                                  items=items)
            assert plan.in_sync, (host, plan.as_dict())

    # Recorded: one publish run with the review, the snapshot, a deploy step per member.
    from resilience.evidence import Ledger
    from resilience.state import evidence_dir

    recs = [x for x in Ledger(evidence_dir(cfg)).records() if x.get("run") == res["run"]]
    assert recs[0]["type"] == "run-start" and recs[0]["params"]["reviewers"] == reviewers
    steps = {(x["step"], x.get("host")) for x in recs if x["type"] == "step" and x["outcome"] == "ok"}
    assert {("check reviews", None), ("snapshot the new content", None), ("deploy files", "web1"),
            ("deploy files", "web2"), ("check site through the balancer", None)} <= steps
    assert recs[-1]["type"] == "run-end" and recs[-1]["outcome"] == "ok"
