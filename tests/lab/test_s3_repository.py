"""The backup engine on the lab's real S3 (SeaweedFS), through a fault-injecting proxy."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from resilience.lab import layout as L
from resilience.lab import topology as T

from ..fsutil import describe
from .faultproxy import FaultProxy

pytestmark = pytest.mark.lab
PW = "s3-test-password"


def make_site(root: Path, seed: int = 5) -> None:
    rng = random.Random(seed)
    for i in range(40):
        d = root / f"news/{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"a{i}.html").write_text(f"<p>article {i}</p>" * rng.randint(10, 2000))
    (root / "uploads").mkdir()
    for i in range(6):
        (root / "uploads" / f"img{i}.jpg").write_bytes(rng.randbytes(rng.randint(300_000, 1_500_000)))
    os.symlink("news/0/a0.html", root / "latest.html")


def write_cfg(tmp: Path, site: Path, url: str, endpoint: str, secret_file: Path | None = None) -> Path:
    cfg = tmp / f"cfg-{uuid.uuid4().hex[:6]}.yml"
    cfg.write_text(f"""\
repository:
  url: {url}
  endpoint: {endpoint}
  access_key_id: {T.S3_ACCESS_KEY_ID}
  secret_access_key_file: {secret_file or L.secret_path('s3_secret_key')}
  pack_size_mib: 1
evidence: {{dir: {tmp / 'evidence'}}}
sites:
  portal:
    files: {{hosts: [localhost], path: {site}}}
""")
    return cfg


def run(cfg: Path, *args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, RESILIENCE_PASSWORD=PW, RESILIENCE_STATE_DIR=str(tmp / "state"),
             RESILIENCE_S3_TIMEOUT="1", RESILIENCE_S3_ATTEMPTS="12", RESILIENCE_S3_DEADLINE="90")
    e.update(env)
    return subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), *args], env=e,
                          capture_output=True, text=True, timeout=600, check=False)


def prefix() -> str:
    return f"s3://{T.S3_BUCKET}/tests-{uuid.uuid4().hex[:12]}"


def test_backup_verify_restore_through_a_faulty_network(lab, tmp_path):
    site = tmp_path / "site"
    make_site(site)
    with FaultProxy(T.S3_ADDR, T.S3_PORT, rate=0.25, seed=7) as proxy:
        cfg = write_cfg(tmp_path, site, prefix() + "/repo", proxy.endpoint)
        for step in (["init"], ["backup", "--site", "portal", "--json"], ["verify", "--read-data"],
                     ["restore", "--site", "portal", "--to", str(tmp_path / "out")]):
            r = run(cfg, *step, tmp=tmp_path)
            assert r.returncode == 0, (step, r.stdout, r.stderr)
        # A second backup after a change, still through faults: only the change is sent.
        (site / "news" / "0" / "a0.html").write_text("edited")
        r = run(cfg, "backup", "--site", "portal", "--json", tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)["results"][0]
        assert (res["files_changed"], res["files_unchanged"]) == (1, 45)
        assert run(cfg, "verify", "--read-data", tmp=tmp_path).returncode == 0
    assert sum(proxy.injected.values()) >= 10, proxy.injected
    assert len([k for k, v in proxy.injected.items() if v]) >= 3, proxy.injected
    before = describe(site)
    before[b"news/0/a0.html"] = describe(tmp_path / "out")[b"news/0/a0.html"]  # restored the first snapshot
    assert describe(tmp_path / "out") == before


def test_endpoint_down_is_exit_75_after_bounded_retries(lab, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with FaultProxy(T.S3_ADDR, T.S3_PORT, rate=1.0, faults=("503",)) as proxy:
        cfg = write_cfg(tmp_path, site, prefix() + "/repo", proxy.endpoint)
        t0 = time.monotonic()
        r = run(cfg, "init", tmp=tmp_path, RESILIENCE_S3_ATTEMPTS="4", RESILIENCE_S3_DEADLINE="10")
        elapsed = time.monotonic() - t0
    assert r.returncode == 75, r.stderr
    assert "failed after 4 attempt(s): HTTP 503" in r.stderr and "Traceback" not in r.stderr
    assert elapsed < 30
    assert proxy.requests == 4


def test_unreachable_endpoint_is_exit_75(lab, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    cfg = write_cfg(tmp_path, site, prefix() + "/repo", "http://127.0.0.1:9")  # discard port: closed
    r = run(cfg, "snapshots", tmp=tmp_path, RESILIENCE_S3_ATTEMPTS="3", RESILIENCE_S3_DEADLINE="10")
    assert r.returncode == 75 and "attempt(s)" in r.stderr and "Traceback" not in r.stderr


def test_wrong_credentials_are_exit_2(lab, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    bad = tmp_path / "bad-secret"
    bad.write_text("not-the-secret-key-000000000000000000000")
    cfg = write_cfg(tmp_path, site, prefix() + "/repo", T.S3_ENDPOINT, secret_file=bad)
    r = run(cfg, "init", tmp=tmp_path)
    assert r.returncode == 2
    assert "S3 refused the credentials" in r.stderr
    assert "not-the-secret" not in r.stderr + r.stdout


def test_copy_local_to_s3_and_s3_to_s3(lab, tmp_path):
    site = tmp_path / "site"
    make_site(site, seed=9)
    local = tmp_path / "cfg-local.yml"
    local.write_text(f"repository: {{url: {tmp_path / 'repo'}, pack_size_mib: 1}}\n"
                     f"evidence: {{dir: {tmp_path / 'evidence'}}}\n"
                     f"sites:\n  portal:\n    files: {{hosts: [localhost], path: {site}}}\n")
    assert run(local, "init", tmp=tmp_path).returncode == 0
    assert run(local, "backup", "--site", "portal", tmp=tmp_path).returncode == 0
    first, second = prefix(), prefix()
    creds = {"AWS_ACCESS_KEY_ID": T.S3_ACCESS_KEY_ID,
             "AWS_SECRET_ACCESS_KEY": L.secret_path("s3_secret_key").read_text().strip()}
    r = run(local, "copy", "--to", first, "--endpoint", T.S3_ENDPOINT, "--json", tmp=tmp_path, **creds)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["snapshots_copied"] == 1
    r = run(local, "copy", "--to", first, "--endpoint", T.S3_ENDPOINT, "--json", tmp=tmp_path, **creds)
    assert json.loads(r.stdout)["blobs_sent"] == 0
    s3cfg = write_cfg(tmp_path, site, first, T.S3_ENDPOINT)
    r = run(s3cfg, "copy", "--to", second, "--endpoint", T.S3_ENDPOINT, "--json", tmp=tmp_path, **creds)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["snapshots_copied"] == 1
    final = write_cfg(tmp_path, site, second, T.S3_ENDPOINT)
    r = run(final, "restore", "--site", "portal", "--to", str(tmp_path / "out"), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert describe(tmp_path / "out") == describe(site)


def test_kill_9_and_locks_on_s3(lab, tmp_path):
    import signal

    from resilience.repository.lock import RepoLock
    from resilience.repository.store.s3 import S3Store

    site = tmp_path / "site"
    make_site(site, seed=11)
    # Enough data that a backup to S3 takes a few seconds: the kills land mid-way.
    (site / "uploads" / "big.bin").write_bytes(random.Random(1).randbytes(40 << 20))
    url = prefix() + "/repo"
    cfg = write_cfg(tmp_path, site, url, T.S3_ENDPOINT)
    assert run(cfg, "init", tmp=tmp_path).returncode == 0
    env = dict(os.environ, RESILIENCE_PASSWORD=PW, RESILIENCE_STATE_DIR=str(tmp_path / "state"))
    rng = random.Random(3)
    killed = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "resilience", "--config", str(cfg), "backup", "--site",
                                 "portal"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        r = run(cfg, "verify", tmp=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    r = run(cfg, "unlock", "--json", tmp=tmp_path)
    assert r.returncode == 0
    # Each killed backup that got as far as locking left a stale lock; all of them go.
    removed = json.loads(r.stdout)["removed"]
    assert killed >= 1 and len(removed) <= killed and not json.loads(r.stdout)["kept"]
    assert json.loads(run(cfg, "unlock", "--json", tmp=tmp_path).stdout)["removed"] == []
    store = S3Store(url, endpoint=T.S3_ENDPOINT, access_key_id=T.S3_ACCESS_KEY_ID,
                    secret_access_key=L.secret_path("s3_secret_key").read_text().strip())
    with RepoLock(store, exclusive=True):
        r = run(cfg, "backup", "--site", "portal", tmp=tmp_path)
        assert r.returncode == 75 and "repository is locked" in r.stderr
    r = run(cfg, "backup", "--site", "portal", "--json", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert run(cfg, "verify", "--read-data", tmp=tmp_path).returncode == 0
    assert run(cfg, "restore", "--site", "portal", "--to", str(tmp_path / "out"), tmp=tmp_path).returncode == 0
    assert describe(tmp_path / "out") == describe(site)
