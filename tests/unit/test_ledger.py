"""The evidence ledger detects every edit, deletion, reordering, truncation and forgery."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from resilience.evidence import Ledger
from resilience.evidence.ledger import canonical
from resilience.evidence.query import list_runs


def fill(ledger: Ledger, runs: int = 3, steps: int = 3) -> None:
    for r in range(runs):
        run = ledger.start_run("backup", {"site": "portal", "n": r})
        with run:
            for s in range(steps):
                with run.step(f"step {s}", host="web1") as st:
                    st.details["files"] = s


def lines(ledger: Ledger) -> list[bytes]:
    return ledger.path.read_bytes().splitlines(keepends=True)


def write(ledger: Ledger, rows: list[bytes]) -> None:
    ledger.path.write_bytes(b"".join(rows))


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    led = Ledger(tmp_path / "ev")
    fill(led)
    return led


def test_intact_ledger_verifies(ledger):
    res = ledger.verify()
    assert res.ok, res.reason
    assert res.records == 3 * 5 and res.runs == 3


def test_key_is_private_and_exportable(ledger):
    assert stat.S_IMODE(ledger.key_path.stat().st_mode) == 0o600
    assert ledger.public_key_openssh().startswith("ssh-ed25519 ")


def test_edit_is_detected(ledger):
    rows = lines(ledger)
    rec = json.loads(rows[4])
    rec["details"]["files"] = 999
    rows[4] = canonical(rec) + b"\n"
    write(ledger, rows)
    res = ledger.verify()
    assert not res.ok and res.bad_seq == 4 and "signature" in res.reason


def test_byte_edit_that_keeps_json_valid_is_detected(ledger):
    data = ledger.path.read_bytes()
    write(ledger, [data.replace(b'"outcome":"ok"', b'"outcome":"no"', 1)])
    assert not ledger.verify().ok


def test_deletion_is_detected(ledger):
    rows = lines(ledger)
    del rows[6]
    write(ledger, rows)
    res = ledger.verify()
    assert not res.ok and res.bad_seq == 6 and "removed or reordered" in res.reason


def test_reordering_is_detected(ledger):
    rows = lines(ledger)
    rows[2], rows[3] = rows[3], rows[2]
    write(ledger, rows)
    res = ledger.verify()
    assert not res.ok and res.bad_seq == 2


def test_truncating_whole_records_is_detected(ledger):
    rows = lines(ledger)
    write(ledger, rows[:-2])
    res = ledger.verify()
    assert not res.ok and "truncated" in res.reason


def test_truncating_mid_record_is_detected(ledger):
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[:-30])
    res = ledger.verify()
    assert not res.ok and res.bad_seq == 14


def test_emptying_the_ledger_is_detected(ledger):
    ledger.path.write_bytes(b"")
    assert not ledger.verify().ok


def test_forged_signature_by_another_key_is_detected(ledger):
    rows = lines(ledger)
    rec = json.loads(rows[5])
    rec["details"] = {"files": 0, "forged": True}
    body = {k: v for k, v in rec.items() if k != "sig"}
    rec["sig"] = base64.b64encode(Ed25519PrivateKey.generate().sign(canonical(body))).decode()
    rows[5] = canonical(rec) + b"\n"
    write(ledger, rows)
    res = ledger.verify()
    assert not res.ok and res.bad_seq == 5


def test_whole_ledger_rewritten_with_new_key_fails_against_exported_key(ledger, tmp_path):
    exported = tmp_path / "evidence.pub"
    exported.write_text(ledger.public_key_openssh())
    # An attacker replaces key, ledger and head with a fresh, self-consistent forgery.
    for p in (ledger.path, ledger.head_path, ledger.key_path, ledger.pub_path):
        p.unlink()
    forged = Ledger(ledger.dir)
    fill(forged, runs=1)
    assert forged.verify().ok  # self-consistent…
    from resilience.evidence.ledger import load_public_key

    res = forged.verify(load_public_key(exported))  # …but not under the exported key
    assert not res.ok and res.bad_seq == 0


def _append_many(directory: str, worker: int, count: int) -> None:
    led = Ledger(directory)
    for i in range(count):
        run = led.start_run("cron", {"worker": worker, "i": i})
        run.record_step("tick", details={"worker": worker})
        run.finish()


def test_concurrent_appenders_do_not_corrupt(tmp_path):
    directory = tmp_path / "ev"
    Ledger(directory).public_key_openssh()  # create the key before the race
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(directory), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    led = Ledger(directory)
    res = led.verify()
    assert res.ok, res.reason
    assert res.records == 4 * 40 * 3
    assert len(list_runs(led)) == 160


def test_torn_uncommitted_tail_is_dropped_on_next_append(ledger):
    before = ledger.verify().records
    with open(ledger.path, "ab") as f:
        f.write(b'{"type":"step","half-written')
    assert not ledger.verify().ok
    ledger.start_run("after-crash").finish()
    res = ledger.verify()
    assert res.ok and res.records == before + 2


def test_step_failure_and_secrets_are_recorded_safely(tmp_path):
    led = Ledger(tmp_path / "ev")
    run = led.start_run("restore", {"site": "portal", "password": "hunter2",
                                    "dsn": "postgresql://admin:s3cret@db1/portal"})
    with pytest.raises(RuntimeError), run, run.step("restore db", host="db1") as st:
        st.details["db_password"] = "hunter2"
        raise RuntimeError("connect failed: password=s3cret host=db1")
    text = led.path.read_text()
    assert "hunter2" not in text and "s3cret" not in text
    recs = list(led.records())
    step = next(r for r in recs if r["type"] == "step")
    assert step["outcome"] == "failed" and "connect failed" in step["error"]
    assert recs[-1]["type"] == "run-end" and recs[-1]["outcome"] == "failed"
    assert led.verify().ok


def test_artifacts_have_digests(tmp_path):
    import hashlib

    led = Ledger(tmp_path / "ev")
    src = tmp_path / "auth.log"
    src.write_bytes(b"sshd[1]: Accepted publickey\n" * 1000)
    run = led.start_run("isolate", {"host": "web1"})
    with run, run.step("collect logs", host="web1") as st:
        a = st.artifact("auth.log", path=src)
        b = st.artifact("state.txt", data=b"web1 DRAIN")
    assert a["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (led.dir / b["path"]).read_bytes() == b"web1 DRAIN"
    step = [r for r in led.records() if r["type"] == "step"][0]
    assert [x["sha256"] for x in step["artifacts"]] == [a["sha256"], b["sha256"]]


def test_cli_verify_show_key(cli, ledger, tmp_path):
    r = cli("evidence", "verify", "--dir", ledger.dir)
    assert r.code == 0 and "intact: 15 record(s), 3 run(s)" in r.out
    r = cli("evidence", "show", "--dir", ledger.dir, "--json")
    runs = json.loads(r.out)["runs"]
    assert [x["outcome"] for x in runs] == ["ok"] * 3
    r = cli("evidence", "show", "--dir", ledger.dir, "--run", runs[1]["run"])
    assert r.code == 0 and "step 2 [web1]" in r.out
    r = cli("evidence", "key", "--dir", ledger.dir)
    assert r.out.startswith("ssh-ed25519 ")
    rows = lines(ledger)
    del rows[3]
    write(ledger, rows)
    r = cli("evidence", "verify", "--dir", ledger.dir, "--json")
    assert r.code == 4
    assert json.loads(r.out)["first_bad_record"] == 3
    assert "record 3" in r.err and "Traceback" not in r.err
    r = cli("evidence", "show", "--dir", ledger.dir, "--run", "nope")
    assert r.code == 2 and "no run 'nope'" in r.err


def test_missing_public_key_file_is_exit_2(cli, ledger, tmp_path):
    r = cli("evidence", "verify", "--dir", ledger.dir, "--key", tmp_path / "none.pub")
    assert r.code == 2 and "cannot read public key" in r.err
    (tmp_path / "junk.pub").write_text("not a key")
    r = cli("evidence", "verify", "--dir", ledger.dir, "--key", tmp_path / "junk.pub")
    assert r.code == 2 and "not an ed25519 public key" in r.err


def test_key_loss_refuses_to_continue(ledger):
    os.unlink(ledger.key_path)
    with pytest.raises(Exception, match="signing key missing"):
        Ledger(ledger.dir).start_run("x")
    assert isinstance(ledger.dir, Path)
