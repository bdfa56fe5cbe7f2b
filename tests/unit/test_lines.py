"""Line failover without the lab: the hysteresis state machine (examples and properties), the
probe loop's output parser (and the loop itself on loopback), the playbook recap parser,
the config section, hook substitution and the notification hook (a webhook on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import notify
from resilience.config import NotifyConfig, validate_config
from resilience.control import hysteresis as H
from resilience.control.lines import _hook_argv
from resilience.control.probe import (
    PROBE_SCRIPT,
    Gateway,
    LineSpec,
    RoundParser,
    probe_command,
)
from resilience.control.switch import parse_output
from resilience.errors import ConfigError

ORDER = ("primary", "standby")
POLICY = H.Policy(ORDER, down_after=3, up_after=5, failback_hold=10.0)


def feed(rounds, policy=POLICY, active="primary", t0=0.0, dt=1.0):
    """Run rounds (list of {line: good}) through the machine; return (state, [actions...])."""
    state = H.initial(policy, active, t0)
    out = []
    for i, res in enumerate(rounds):
        state, acts = H.step(state, policy, res, t0 + (i + 1) * dt)
        out.append(acts)
    return state, out


def kinds(actions_per_round):
    return [a.kind for acts in actions_per_round for a in acts]


# --- the state machine: examples ----------------------------------------------------------

def test_primary_goes_down_after_exactly_down_after_bad_rounds_and_fails_over():
    bad = {"primary": False, "standby": True}
    state, acts = feed([bad, bad])
    assert state.active == "primary" and state.lines["primary"].up and kinds(acts) == []
    state, acts = feed([bad, bad, bad])
    assert state.active == "standby"
    assert kinds(acts) == [H.LINE_DOWN, H.FAILOVER]
    assert acts[2][1].line == "standby" and "primary is down" in acts[2][1].reason


def test_every_other_round_lost_never_switches():
    flap = [{"primary": i % 2 == 0, "standby": True} for i in range(200)]
    state, acts = feed(flap)
    assert kinds(acts) == [] and state.active == "primary"


def test_failback_only_after_up_after_good_rounds_and_the_hold():
    down = [{"primary": False, "standby": True}] * 3
    good = [{"primary": True, "standby": True}] * 30
    state, acts = feed(down + good)  # one round per second, hold 10 s
    ks = kinds(acts)
    assert ks == [H.LINE_DOWN, H.FAILOVER, H.LINE_UP, H.FAILBACK]
    up_round = next(i for i, a in enumerate(acts) if any(x.kind == H.LINE_UP for x in a))
    back_round = next(i for i, a in enumerate(acts) if any(x.kind == H.FAILBACK for x in a))
    assert up_round == 3 + 5 - 1                  # the 5th good round
    assert back_round - up_round == 10            # the hold, in 1 s rounds
    assert state.active == "primary"


def test_a_bad_round_during_the_hold_restarts_it():
    down = [{"primary": False, "standby": True}] * 3
    good = [{"primary": True, "standby": True}]
    one_bad = [{"primary": False, "standby": True}]
    rounds = down + good * 5 + good * 6 + one_bad + good * 9
    state, acts = feed(rounds)
    assert H.FAILBACK not in kinds(acts) and state.active == "standby"
    state, acts = feed(rounds + good * 2)
    assert kinds(acts)[-1] == H.FAILBACK


def test_no_auto_failback_when_disabled():
    policy = H.Policy(ORDER, 3, 5, 10.0, auto_failback=False)
    rounds = [{"primary": False, "standby": True}] * 3 + [{"primary": True, "standby": True}] * 50
    state, acts = feed(rounds, policy)
    assert H.FAILBACK not in kinds(acts) and state.active == "standby"


def test_both_down_raises_one_alarm_then_clears_and_fails_over_to_what_came_back():
    rounds = ([{"primary": False, "standby": False}] * 10
              + [{"primary": False, "standby": True}] * 5)
    state, acts = feed(rounds)
    ks = kinds(acts)
    assert ks.count(H.ALARM) == 1 and ks.count(H.ALARM_CLEARED) == 1
    assert ks.index(H.ALARM) < ks.index(H.ALARM_CLEARED) < ks.index(H.FAILOVER)
    assert state.active == "standby" and not state.alarm


def test_no_data_changes_nothing():
    state, acts = feed([{"primary": False}, {}, {"primary": None, "standby": None},
                        {"primary": False}])
    assert state.lines["primary"].bad == 2 and kinds(acts) == []


def test_no_active_line_picks_the_first_up_one():
    state, acts = feed([{"primary": True, "standby": True}], active=None)
    assert state.active == "primary" and kinds(acts) == [H.FAILBACK]


def test_state_round_trips_through_json():
    state, _ = feed([{"primary": False, "standby": True}] * 4)
    again = H.from_json(json.loads(json.dumps(H.to_json(state))), POLICY, 0.0)
    assert again == state
    assert H.from_json({"lines": "junk"}, POLICY, 5.0) == H.initial(POLICY, None, 5.0)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        H.Policy(("a", "a"))
    with pytest.raises(ValueError):
        H.Policy(ORDER, down_after=0)


# --- the state machine: properties ----------------------------------------------------------

rounds_st = st.lists(st.fixed_dictionaries({"primary": st.sampled_from([True, False, None]),
                                            "standby": st.sampled_from([True, False, None])}),
                     max_size=120)
policies = st.builds(lambda d, u, h: H.Policy(ORDER, d, u, float(h)),
                     st.integers(1, 6), st.integers(1, 6), st.integers(0, 20))


@settings(max_examples=300, deadline=None)
@given(rounds_st, policies)
def test_properties_of_any_sequence(rounds, policy):
    state = H.initial(policy, "primary", 0.0)
    bad_run = {n: 0 for n in ORDER}
    good_run = {n: 0 for n in ORDER}
    for i, res in enumerate(rounds):
        before = state
        state, acts = H.step(state, policy, res, float(i + 1))
        for n in ORDER:
            if res[n] is True:
                good_run[n], bad_run[n] = good_run[n] + 1, 0
            elif res[n] is False:
                bad_run[n], good_run[n] = bad_run[n] + 1, 0
            # A line changes state only after enough consecutive rounds (hysteresis).
            if before.lines[n].up and not state.lines[n].up:
                assert bad_run[n] >= policy.down_after
            if not before.lines[n].up and state.lines[n].up:
                assert good_run[n] >= policy.up_after
        up = [n for n in ORDER if state.lines[n].up]
        # Traffic is always on a working line when there is one; the alarm is on iff none is.
        assert state.alarm == (not up)
        if up:
            assert state.active in up
        # At most one switch per round, and only to the line the state then names.
        switches = [a for a in acts if a.kind in (H.FAILOVER, H.FAILBACK)]
        assert len(switches) <= 1
        if switches:
            assert switches[0].line == state.active != before.active


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 400), policies)
def test_a_line_losing_every_other_round_never_causes_a_switch(n, policy):
    if policy.down_after < 2:
        return  # with down_after 1 one lost round is, by definition, enough
    rounds = [{"primary": i % 2 == 1, "standby": True} for i in range(n)]
    _, acts = feed(rounds, policy)
    assert kinds(acts) == []


# --- the probe loop -----------------------------------------------------------------------

def test_round_parser_groups_probes_by_round():
    p = RoundParser(ORDER)
    assert p.feed("p 1 primary 198.19.0.1 0.120", 1.0) is None
    p.feed("p 1 primary 198.19.0.2 -", 1.0)
    p.feed("p 1 standby 198.19.0.1 0.300", 1.0)
    p.feed("garbage line", 1.0)
    p.feed("p 1 nosuchline 198.19.0.1 0.1", 1.0)
    rnd = p.feed("r 1", 1.5)
    assert rnd.seq == 1 and rnd.at == 1.5
    assert rnd.lines["primary"].as_dict() == {"answered": 1, "sent": 2, "loss_pct": 50.0,
                                              "rtt_ms": 0.12, "targets_answered": ["198.19.0.1"]}
    assert rnd.results(1) == {"primary": True, "standby": True}
    assert rnd.results(2) == {"primary": False, "standby": True}  # standby: all (1) answered
    empty = p.feed("r 2", 2.0)
    assert empty.results(1) == {"primary": False, "standby": False}


def test_probe_loop_runs_with_sh_and_ping_on_loopback():
    if os.geteuid() != 0 and not Path("/bin/ping").exists():
        pytest.skip("needs ping")
    gw = Gateway("lo", {"a": LineSpec("a", "lo", "127.0.0.1", "127.0.0.1"),
                        "b": LineSpec("b", "lo", "127.0.0.2", "127.0.0.1")},
                 ("127.0.0.1", "127.0.0.3"))
    cmd = probe_command(gw, interval=0.05, timeout=0.5, rounds=2)
    assert cmd.startswith("sh -c ")
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    parser = RoundParser(("a", "b"))
    rounds = [r for ln in proc.stdout.splitlines() if (r := parser.feed(ln, 0.0))]
    assert [r.seq for r in rounds] == [1, 2]
    for r in rounds:
        assert {n: (lr.answered, lr.total) for n, lr in r.lines.items()} == {"a": (2, 2),
                                                                            "b": (2, 2)}
    assert "ping -n -q -c1" in PROBE_SCRIPT


# --- the playbook's recap ---------------------------------------------------------------

RECAP = """
TASK [Point the default route at standby] **************************************
fatal: [gw1]: FAILED! => {"changed": true, "msg": "non-zero return code", "rc": 2}

PLAY RECAP *********************************************************************
gw1                        : ok=2    changed=1    unreachable=0    failed=1    skipped=0    rescued=0    ignored=0
"""


def test_the_switch_task_named_in_the_code_is_in_the_playbook():
    from resilience.control.switch import SWITCH_TASK

    playbook = Path(__file__).resolve().parents[2] / "playbooks" / "line_switch.yml"
    assert f"- name: {SWITCH_TASK} {{{{ line }}}}" in playbook.read_text()


def test_parse_output_reads_recap_and_failures():
    hosts, failures = parse_output(RECAP)
    assert hosts == {"gw1": {"ok": 2, "changed": 1, "failed": 1, "unreachable": 0, "skipped": 0}}
    assert failures == [{"host": "gw1", "task": "Point the default route at standby",
                         "msg": "non-zero return code"}]


# --- config, hooks ------------------------------------------------------------------------

def _cfg(tmp_path, extra: dict):
    return validate_config({"inventory": "hosts.yml", **extra}, tmp_path / "resilience.yml")


def test_lines_config_defaults_and_durations(tmp_path):
    cfg = _cfg(tmp_path, {"lines": {"gateway": "gw1", "failback_hold": "2m", "interval": 0.5}})
    lc = cfg.lines
    assert (lc.down_after, lc.up_after, lc.reliability, lc.auto_failback) == (3, 5, 1, True)
    assert lc.failback_hold == 120.0 and lc.probe_timeout == 0.5 and lc.switch_with == "runner"


@pytest.mark.parametrize("lines, where", [
    ({"gateway": "gw1", "down_after": 0}, "lines.down_after"),
    ({"gateway": "gw1", "failback_hold": "soon"}, "lines.failback_hold"),
    ({"gateway": "gw1", "upstream_command": "resilience lab upstream"}, "lines.upstream_command"),
    ({"gateway": "gw1", "upstream_command": []}, "lines.upstream_command"),
    ({"gateway": "gw1", "switch_with": "telnet"}, "lines.switch_with"),
    ({"primary": "primary"}, "lines.gateway"),
    ({"gateway": "gw1", "bogus": 1}, "lines.bogus"),
])
def test_lines_config_errors_name_the_key(tmp_path, lines, where):
    with pytest.raises(ConfigError) as exc:
        _cfg(tmp_path, {"lines": lines})
    assert f": {where}:" in str(exc.value)


def test_notify_config_accepts_webhooks_and_commands(tmp_path):
    cfg = _cfg(tmp_path, {"notify": {"webhooks": [{"url": "http://127.0.0.1:9/x?key=t"}],
                                     "commands": [["/bin/true"]]}})
    assert cfg.notify.webhooks[0].format == "json"
    with pytest.raises(ConfigError):
        _cfg(tmp_path, {"notify": {"webhooks": [{"url": "ftp://127.0.0.1/"}]}})


def test_hook_argv_substitutes_and_finds_this_installation():
    argv = _hook_argv(["resilience", "lab", "upstream", "{line}", "{unknown}"], line="standby")
    assert argv[-3:] == ["upstream", "standby", "{unknown}"]
    assert argv[0] == str(Path(sys.executable).with_name("resilience")) or argv[:3] == [
        sys.executable, "-m", "resilience"]
    assert _hook_argv(["/usr/bin/env", "X={line}"], line="p") == ["/usr/bin/env", "X=p"]


# --- notifications --------------------------------------------------------------------------

class _Sink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Sink.received = []
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _Sink.received
    server.shutdown()
    server.server_close()


def test_webhook_and_command_get_the_event_without_secrets(webhook, tmp_path):
    url, received = webhook
    out = tmp_path / "cmd.json"
    cfg = NotifyConfig.model_validate({
        "webhooks": [{"url": f"{url}/hook?token=s3cr3t-token"}],
        "commands": [[sys.executable, "-c",
                      f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"]]})
    ev = notify.event("lines.all-down", "every line of gw1 is down", severity="critical",
                      details={"gateway": "gw1", "password": "hunter2"})
    results = notify.send(cfg, ev)
    assert [r["ok"] for r in results] == [True, True]
    assert results[0]["target"] == f"{url}/hook"  # the token in the query is never recorded
    path, ctype, body = received[0]
    assert path == "/hook?token=s3cr3t-token" and ctype.startswith("application/json")
    assert body["event"] == "lines.all-down" and body["severity"] == "critical"
    assert body["details"]["gateway"] == "gw1" and "hunter2" not in json.dumps(body)
    assert json.loads(out.read_text()) == body


def test_a_failing_channel_is_reported_not_raised(webhook):
    url, _ = webhook
    cfg = NotifyConfig.model_validate({"webhooks": [{"url": f"{url.rsplit(':', 1)[0]}:9/",
                                                     "timeout": 2}],
                                       "commands": [["/bin/false"]]})
    results = notify.send(cfg, notify.event("x", "y"))
    assert [r["ok"] for r in results] == [False, False]
    assert results[1]["rc"] == 1
    with pytest.raises(ValueError):
        notify.event("x", "y", severity="apocalyptic")


def test_line_commands_without_a_lines_section_exit_2(tmp_path):
    cfg = tmp_path / "resilience.yml"
    cfg.write_text("version: 1\nevidence: {dir: ev}\n")
    proc = subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), "line",
                           "status"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "lines: not configured" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "resilience", "--config", str(cfg), "line",
                           "watch", "--once", "--duration", "1"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
