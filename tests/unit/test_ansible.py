"""The pure parts of the control plane: the playbook runner's environment, events → results
and evidence, HAProxy stat parsing, the last-member rule. No hosts needed."""

from __future__ import annotations

import pytest

from resilience.actions.isolate import _refuse_last_member
from resilience.config import validate_config
from resilience.control import ansible as A
from resilience.control.cluster import parse_show_stat, serving
from resilience.errors import UsageError
from resilience.evidence import Ledger


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "hosts.yml").write_text("all: {hosts: {web1: {}}}\n")
    return validate_config({"inventory": "hosts.yml", "evidence": {"dir": str(tmp_path / "ev")},
                            "sites": {"portal": {"files": {"hosts": ["web1"], "path": "/var/www/p"}}}},
                           tmp_path / "resilience.yml")


def test_host_keys_are_always_checked(cfg):
    env = A.runner_env(cfg)
    # ansible-runner would set False when the key is absent: it must be there, and True.
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"


def test_ssh_masters_are_per_inventory(cfg, tmp_path):
    other = cfg.model_copy(update={"inventory": tmp_path / "other.yml"})
    assert A.runner_env(cfg)["ANSIBLE_SSH_CONTROL_PATH_DIR"] != A.runner_env(other)["ANSIBLE_SSH_CONTROL_PATH_DIR"]


@pytest.mark.parametrize("name", ["../etc/passwd", "/tmp/x.yml", "sub/dir.yml", "nope", ""])
def test_bad_or_missing_playbook_is_a_usage_error(cfg, name):
    with pytest.raises(UsageError):
        A.playbook_path(cfg, name)


def test_shipped_playbooks_resolve(cfg):
    for name in ("isolate", "rejoin.yml", "collect_logs", "ping"):
        assert A.playbook_path(cfg, name).is_file()


def test_stats_become_per_host_counters():
    stats = {"ok": {"web1": 3, "lb1": 5}, "changed": {"web1": 2}, "failures": {"lb1": 1}, "dark": {"web2": 1},
             "skipped": {}, "processed": {"web1": 1, "lb1": 1, "web2": 1, "db1": 1}}
    hosts = A.hosts_from_stats(stats)
    assert hosts["web1"] == {"ok": 3, "changed": 2, "failed": 0, "unreachable": 0, "skipped": 0}
    assert hosts["lb1"]["failed"] == 1 and hosts["web2"]["unreachable"] == 1
    assert hosts["db1"] == dict.fromkeys(A.STAT_KEYS, 0)


def _event(kind, host, task, res, **extra):
    return {"event": kind, "event_data": {"host": host, "task": task, "task_action": "command", "res": res, **extra}}


def test_events_become_steps_facts_and_failures_without_secrets(tmp_path):
    ledger = Ledger(tmp_path / "ev")
    run = ledger.start_run("test", {})
    rec = A._Recorder("x.yml", False, run, None)
    rec.event(_event("runner_on_ok", "web1", "publish", {"changed": False, "ansible_facts": {
        "resilience_result": {"a": 1}}}))
    rec.event(_event("runner_on_ok", "web1", "publish more", {"changed": True, "stdout": "s3cr3t-output",
                                                               "ansible_facts": {"resilience_result": {"b": 2}}}))
    rec.event(_event("runner_on_failed", "lb1", "secret task", {"msg": "password=hunter2", "_ansible_no_log": True}))
    rec.event(_event("runner_on_failed", "lb1", "tolerated", {"msg": "meh"}, ignore_errors=True))
    rec.event(_event("runner_on_unreachable", "web2", "ping",
                     {"msg": "ssh: Host key verification failed."}))
    rec.event({"event": "playbook_on_stats", "event_data": {"ok": {"web1": 2}, "changed": {"web1": 1},
                                                            "failures": {"lb1": 1}, "dark": {"web2": 1},
                                                            "artifact_data": {"k": "v"}}})
    result = rec.result("failed", 2, rec.stats)
    run.finish()

    assert result.facts["web1"] == {"a": 1, "b": 2} and result.facts["_run"] == {"k": "v"}
    assert result.changed is True
    assert [f["host"] for f in result.failures] == ["lb1", "web2"]
    assert result.failures[0]["msg"] == A._NO_LOG_MSG
    assert "host key verification failed" in result.failures[1]["msg"]
    text = ledger.path.read_text()
    assert "hunter2" not in text and "s3cr3t-output" not in text
    steps = [r for r in ledger.records() if r["type"] == "step"]
    assert [(s["host"], s["outcome"], s["details"]["changed"]) for s in steps] == [
        ("web1", "ok", False), ("web1", "ok", True), ("lb1", "failed", False), ("lb1", "ok", False),
        ("web2", "failed", False)]
    message = A._failure_message(result)
    assert message.startswith("playbook x.yml: lb1 failed at task 'secret task'") and "\n" not in message


STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,addr,check_status
portal,FRONTEND,,,0,1,,,,,,,,,,,,OPEN,,,
portal,web1,0,0,3,5,,80,1,1,,0,,0,0,0,0,DRAIN,1,198.18.0.11:80,L7OK
portal,web2,0,0,0,1,,79,1,1,,0,,0,0,0,0,UP,1,198.18.0.12:80,L7OK
other,web1,0,0,0,1,,79,1,1,,0,,0,0,0,0,MAINT,1,198.18.0.11:80,L7OK
"""


def test_show_stat_parsing_keeps_only_the_backend_servers():
    servers = parse_show_stat(STAT, "portal")
    assert set(servers) == {"web1", "web2"}
    assert servers["web1"] == {"status": "DRAIN", "sessions": 3, "address": "198.18.0.11:80", "check": "L7OK"}
    assert parse_show_stat(STAT, "other")["web1"]["status"] == "MAINT"
    assert parse_show_stat("", "portal") == {}


@pytest.mark.parametrize("status,expected", [("UP", True), ("UP 1/2", True), ("DOWN", False), ("DRAIN", False),
                                             ("MAINT", False), ("MAINT (via portal/web2)", False), ("no check", False)])
def test_serving(status, expected):
    assert serving(status) is expected


def test_last_serving_member_is_refused_unless_forced():
    up = {"status": "UP"}
    _refuse_last_member("portal", "web1", {"web1": up, "web2": up}, force=False)
    with pytest.raises(UsageError, match="last serving member"):
        _refuse_last_member("portal", "web2", {"web1": {"status": "MAINT"}, "web2": up}, force=False)
    _refuse_last_member("portal", "web2", {"web1": {"status": "MAINT"}, "web2": up}, force=True)
    # Already out: isolating again takes nothing away.
    _refuse_last_member("portal", "web1", {"web1": {"status": "MAINT"}, "web2": {"status": "DOWN"}}, force=False)
    with pytest.raises(UsageError, match="not a server"):
        _refuse_last_member("portal", "web3", {"web1": up}, force=False)
