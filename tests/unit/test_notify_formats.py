"""Notifications reach real local servers: an HTTP server on 127.0.0.1 for the webhook formats
(JSON, WeCom, DingTalk with its signature) and an SMTP server (aiosmtpd) for e-mail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from email import message_from_bytes
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from resilience import notify
from resilience.config import NotifyConfig
from resilience.evidence import Ledger

SECRET = "SEC0123456789abcdef-dingtalk-secret"
PASSWORD = "smtp-pass-Zq9!"


class Hook:
    """A webhook receiver: keeps (path+query, JSON body) of every POST; answers ``reply``."""

    def __init__(self):
        self.got: list[tuple[str, dict]] = []
        self.reply = {"errcode": 0, "errmsg": "ok"}
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.got.append((self.path, json.loads(body)))
                data = json.dumps(hook.reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    def __init__(self):
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - the aiosmtpd API
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    box = Mailbox()
    logins: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == PASSWORD, handled=False)

    ctl = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    box.port, box.logins = ctl.port, logins
    yield box
    ctl.stop()


def ev():
    return notify.event("drill-result", "drill quarterly-tamper passed", severity="info",
                        details={"run": "R1", "rto_s": 42.5, "password": "leak-me"})


def test_json_wecom_and_dingtalk_bodies(hook, tmp_path):
    secret = tmp_path / "dingtalk.secret"
    secret.write_text(SECRET + "\n")
    cfg = NotifyConfig.model_validate({"webhooks": [
        {"url": hook.url + "/generic", "format": "json"},
        {"url": hook.url + "/cgi-bin/webhook/send?key=WECOMKEY", "format": "wecom"},
        {"url": hook.url + "/robot/send?access_token=TOKEN", "format": "dingtalk", "secret_file": str(secret)},
    ]})
    payload = ev()
    results = notify.send(cfg, payload)
    assert [r["ok"] for r in results] == [True, True, True]
    # Only scheme, host and path are shown: no key, token or signature.
    assert [r["target"] for r in results] == [hook.url + p for p in ("/generic", "/cgi-bin/webhook/send", "/robot/send")]
    assert SECRET not in json.dumps(results) and "TOKEN" not in json.dumps(results)

    (p1, generic), (p2, wecom), (p3, ding) = hook.got
    assert generic == payload and generic["details"]["password"] == "***"
    assert p2 == "/cgi-bin/webhook/send?key=WECOMKEY"
    assert wecom["msgtype"] == "markdown" and set(wecom["markdown"]) == {"content"}
    assert "drill quarterly-tamper passed" in wecom["markdown"]["content"]
    assert "rto_s: 42.5" in wecom["markdown"]["content"] and "leak-me" not in wecom["markdown"]["content"]
    assert ding["msgtype"] == "markdown" and set(ding["markdown"]) == {"title", "text"}
    assert ding["markdown"]["title"] == "[info] drill quarterly-tamper passed"
    q = parse_qs(urlsplit(p3).query)
    assert q["access_token"] == ["TOKEN"]
    ts = q["timestamp"][0]
    want = base64.b64encode(hmac.new(SECRET.encode(), f"{ts}\n{SECRET}".encode(), hashlib.sha256).digest()).decode()
    assert q["sign"][0] == want  # parse_qs has undone the URL encoding
    assert unquote_plus(notify.dingtalk_sign(SECRET, int(ts))) == want


def test_robot_refusal_and_unreadable_secret_are_reported(hook, tmp_path):
    hook.reply = {"errcode": 310000, "errmsg": "sign not match"}
    cfg = NotifyConfig.model_validate({"webhooks": [
        {"url": hook.url + "/robot/send?access_token=T", "format": "dingtalk"},
        {"url": hook.url + "/robot/send", "format": "dingtalk", "secret_file": str(tmp_path / "missing")},
        {"url": hook.url + "/generic", "format": "json"},
    ]})
    r = notify.send(cfg, ev())
    assert r[0]["ok"] is False and "310000" in r[0]["error"]
    assert r[1]["ok"] is False and "secret_file" in r[1]["error"]
    assert r[2]["ok"] is True  # the generic format does not read robot answers
    assert len(hook.got) == 2  # nothing was posted without the signature


def test_email_reaches_the_smtp_server(smtp, tmp_path):
    pw = tmp_path / "smtp.pw"
    pw.write_text(PASSWORD + "\n")
    cfg = NotifyConfig.model_validate({"email": [
        {"host": "127.0.0.1", "port": smtp.port, "starttls": False, "from": "resilience@ops.example.gov",
         "to": ["oncall@example.gov", "audit@example.gov"], "user": "ops", "password_file": str(pw)}]})
    results = notify.send(cfg, ev())
    assert results == [{"channel": "email", "target": f"127.0.0.1:{smtp.port}", "ok": True, "recipients": 2}]
    assert smtp.logins == [("ops", PASSWORD)]
    sender, rcpts, raw = smtp.messages[0]
    assert sender == "resilience@ops.example.gov" and rcpts == ["oncall@example.gov", "audit@example.gov"]
    msg = message_from_bytes(raw, policy=email_policy)
    assert msg["Subject"] == "[resilience] info: drill quarterly-tamper passed"
    assert msg["X-Resilience-Event"] == "drill-result"
    body = msg.get_content().replace("\r\n", "\n")  # the server keeps the wire line ends
    assert "rto_s: 42.5" in body and json.loads(body.split("-- \n", 1)[1])["event"] == "drill-result"
    assert PASSWORD not in body and "leak-me" not in body


def test_email_failure_is_a_result_not_an_exception(smtp, tmp_path):
    pw = tmp_path / "smtp.pw"
    pw.write_text("wrong-password")
    cfg = NotifyConfig.model_validate({"email": [
        {"host": "127.0.0.1", "port": smtp.port, "starttls": False, "from": "a@b.gov", "to": ["c@d.gov"],
         "user": "ops", "password_file": str(pw)},
        {"host": "127.0.0.1", "port": free_port(), "starttls": False, "from": "a@b.gov", "to": ["c@d.gov"]}]})
    r = notify.send(cfg, ev())
    assert [x["ok"] for x in r] == [False, False]
    assert "Authentication" in r[0]["error"] and "wrong-password" not in json.dumps(r)
    assert smtp.messages == []


def _runs(ledger: Ledger) -> dict[str, str]:
    ids = {}
    b = ledger.start_run("backup", {"site": "portal"})
    b.finish("failed", "repository locked")
    ids["backup_failed"] = b.id
    ok = ledger.start_run("backup", {"site": "portal"})
    ok.finish("ok")
    ids["backup_ok"] = ok.id
    d = ledger.start_run("drill", {"plan": "drills/quarterly-tamper.yml", "site": "portal"})
    d.details.update(rto_s=90.0, rpo_s=10.0, targets={"rto_s": 60, "rpo_s": 300}, passed=False)
    d.finish("failed")
    ids["drill"] = d.id
    i = ledger.start_run("incident-tamper", {"site": "portal"})
    with i, i.step("incident report") as st:
        st.details.update(severity="critical", report_upward=True)
    ids["incident"] = i.id
    return ids


def test_on_result_sends_failures_incidents_and_drills(hook, tmp_path):
    ledger = Ledger(tmp_path / "ev")
    ids = _runs(ledger)
    cfg = NotifyConfig.model_validate({"webhooks": [{"url": hook.url + "/h"}]})
    assert notify.on_result(cfg, "run", notify.result_of(ledger, ids["backup_ok"])) == []
    sent = [notify.on_result(cfg, kind, notify.result_of(ledger, ids[key]))
            for kind, key in (("run", "backup_failed"), ("drill", "drill"), ("incident", "incident"))]
    assert all(len(s) == 1 and s[0]["ok"] for s in sent)
    failed, drill, incident = (body for _, body in hook.got)
    assert (failed["event"], failed["severity"]) == ("run-failed", "warning")
    assert failed["summary"].startswith("backup of portal failed: repository locked")
    assert (drill["event"], drill["severity"]) == ("drill-result", "warning")
    assert "quarterly-tamper FAILED (RTO 90 s, RPO 10 s)" in drill["summary"]
    assert drill["details"]["targets"] == {"rto_s": 60, "rpo_s": 300}
    assert (incident["event"], incident["severity"]) == ("incident", "critical")
    assert "REPORT UPWARD" in incident["summary"] and incident["details"]["run"] == ids["incident"]

    only_failures = NotifyConfig.model_validate({"webhooks": [{"url": hook.url + "/h"}], "events": ["failure"]})
    passed = {"run": "R", "action": "drill", "outcome": "ok", "passed": True}
    assert notify.on_result(only_failures, "drill", passed) == []
    assert notify.on_result(only_failures, "incident", {"run": "R", "action": "incident-x", "outcome": "ok"}) == []
    assert len(notify.on_result(only_failures, "drill", passed | {"passed": False})) == 1
