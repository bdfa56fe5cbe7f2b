"""Config loading and `resilience config check|init`: every bad input gets one line and exit 2."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from resilience.config import load_config, parse_duration
from resilience.errors import ConfigError

GOOD = """\
repository:
  url: ./repo
sites:
  portal:
    files: {hosts: [localhost], path: /var/www/portal, exclude: ["cache/**"]}
retention: {keep_daily: 7}
"""

# (file content, expected substring of the single problem line)
BAD_CONFIGS: list[tuple[str | bytes, str]] = [
    ("", "file is empty"),
    ("   \n\n# only a comment\n", "file is empty"),
    (b"\x00\x01\x02binary\xff\xfe", "not a text file"),
    (b"\xff\xfe\xfa garbage that is not utf-8", "not UTF-8 text"),
    ("sites: [1, 2", "malformed YAML"),
    ("repository:\n  url: ./r\n   bad_indent: 1\n", "malformed YAML"),
    ("- just\n- a list\n", "(top level): must be a mapping"),
    ("42\n", "(top level): must be a mapping"),
    ("repositry:\n  url: ./r\n", "repositry: unknown key"),
    ("repository:\n  url: ./r\n  pasword_file: x\n", "repository.pasword_file: unknown key"),
    ("repository:\n  url: ftp://host/x\n", "repository.url: unsupported URL scheme 'ftp'"),
    ("repository:\n  url: s3://\n", "repository.url: an s3 URL needs a bucket"),
    ("repository:\n  url: s3://Bad_Bucket/x\n", "repository.url: invalid S3 bucket name"),
    ("repository:\n  url: s3://backups/x\n  endpoint: localhost:8333\n", "repository.endpoint: must be an http:// or https:// URL"),
    ("repository:\n  url: s3://backups/x\n  endpoint: http://h:99999\n", "repository.endpoint: invalid port"),
    ("repository:\n  url: ''\n", "repository.url: must not be empty"),
    ("repository:\n  url: [a, b]\n", "repository.url: must be a string"),
    ("repository:\n  url: ./r\n  compression: high\n", "repository.compression: must be an integer"),
    ("sites:\n  portal:\n    files: {hosts: [localhost], path: var/www}\n", "sites.portal.files.path: must be an absolute path"),
    ("sites:\n  portal:\n    files: {hosts: [], path: /var/www}\n", "sites.portal.files.hosts"),
    ("sites:\n  portal:\n    files: {hosts: [localhost, localhost], path: /srv}\n", "lists a host twice"),
    ("sites:\n  portal: {}\n", "a site needs 'files', 'database' or both"),
    ("sites:\n  'bad name!':\n    files: {hosts: [localhost], path: /srv}\n", "invalid name"),
    ("sites:\n  portal:\n    files: {hosts: [web1], path: /srv}\n", "no 'inventory' is set"),
    ("sites:\n  portal:\n    database: {host: db1, name: portal, port: 70000}\n", "sites.portal.database.port"),
    ("retention: {keep_daily: -1}\n", "retention.keep_daily"),
    ("retention: {keep_within: forever}\n", "retention.keep_within: invalid duration"),
    ("retention: {keep_daily: seven}\n", "retention.keep_daily: must be an integer"),
    ("version: 2\n", "version: unsupported value"),
    ("ssh: {connect_timeout: 0}\n", "ssh.connect_timeout"),
    ("repository: {url: ./a}\nrepository: {url: ./b}\n", "duplicate key 'repository'"),
    ("sites:\n  portal:\n    files: {hosts: [localhost], path: /srv}\n    checks: [{path: index.html}]\n", "checks.0.path: must start with /"),
    ("? [a, b]\n: 1\n", "malformed YAML"),
    ("inventory: \"\\0evil\"\n", "inventory"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_bad_config_is_one_line_and_exit_2(cli, tmp_path: Path, content, expected):
    path = tmp_path / "resilience.yml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = cli("--config", path, "config", "check")
    assert r.code == 2, (r.out, r.err)
    lines = r.out.strip().splitlines()
    assert lines, r.err
    assert expected in lines[0], lines
    assert lines[0].startswith(f"{path}: "), lines[0]
    assert "Traceback" not in r.out + r.err


def test_missing_config_file(cli, tmp_path):
    r = cli("--config", tmp_path / "nope.yml", "config", "check")
    assert r.code == 2
    assert r.out.strip() == f"{tmp_path / 'nope.yml'}: file not found"


def test_config_is_a_directory(cli, tmp_path):
    r = cli("--config", tmp_path, "config", "check")
    assert r.code == 2 and "is a directory" in r.out


def test_bad_config_on_any_command_is_exit_2_one_line(cli, tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("sites: [")
    r = cli("--config", path, "evidence", "show")
    # evidence show falls back to the default folder without a config; a command that needs
    # the config must fail cleanly instead:
    assert "Traceback" not in r.err
    from resilience.cli.context import AppContext

    with pytest.raises(ConfigError):
        AppContext(config_path=str(path)).config()


def test_every_problem_is_listed(cli, tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("repository: {url: 'ftp://x'}\nretention: {keep_daily: -3}\nbogus: 1\n")
    r = cli("--config", path, "config", "check", "--json")
    assert r.code == 2
    problems = json.loads(r.out)["problems"]
    assert len(problems) == 3
    assert {p.split(": ")[1] for p in problems} == {"repository.url", "retention.keep_daily", "bogus"}


def test_good_config_resolves_relative_paths(tmp_path):
    path = tmp_path / "sub" / "resilience.yml"
    path.parent.mkdir()
    path.write_text(GOOD + "inventory: inv/hosts.yml\nrepository:\n  url: ./repo\n  password_file: secret/p\n"
                    .replace("repository:\n  url: ./repo\n  password_file", "evidence:\n  dir"), "utf-8")
    cfg = load_config(path)
    assert cfg.repository.url == str(path.parent.resolve() / "repo")
    assert cfg.inventory == path.parent.resolve() / "inv/hosts.yml"
    assert cfg.evidence.dir == path.parent.resolve() / "secret/p"
    assert cfg.sites["portal"].files.exclude == ["cache/**"]


def test_config_from_environment_and_default(cli, tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.yml"
    path.write_text(GOOD)
    r = cli("config", "check", env={"RESILIENCE_CONFIG": str(path)})
    assert r.code == 0, r.out + r.err
    assert str(path) in r.out
    monkeypatch.delenv("RESILIENCE_CONFIG")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resilience.yml").write_text(GOOD)
    r = cli("config", "check")
    assert r.code == 0 and str(tmp_path / "resilience.yml") in r.out


def test_init_writes_a_sample_that_passes_check(cli, tmp_path):
    out = tmp_path / "resilience.yml"
    assert cli("config", "init", "-o", out).code == 0
    assert cli("config", "init", "-o", out).code == 2  # refuses to overwrite
    r = cli("--config", out, "config", "check", "--json")
    assert r.code == 0, r.out
    assert json.loads(r.out)["sites"] == ["portal"]


def test_check_reports_missing_referenced_files(cli, tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(GOOD.replace("url: ./repo", "url: ./repo\n  password_file: nope.pass"))
    r = cli("--config", path, "config", "check")
    assert r.code == 2
    assert r.out.strip() == f"{path}: repository.password_file: file not found: {tmp_path / 'nope.pass'}"


def test_check_validates_inventory_hosts_with_ansible(cli, tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(textwrap.dedent("""\
        all:
          children:
            web:
              hosts:
                web1: {ansible_host: 198.18.0.11}
    """))
    path = tmp_path / "c.yml"
    path.write_text("inventory: hosts.yml\nsites:\n  portal:\n    files: {hosts: [web1, web9], path: /srv}\n")
    r = cli("--config", path, "config", "check")
    assert r.code == 2
    assert r.out.strip() == f"{path}: sites.portal.files.hosts: host 'web9' is not in the inventory"
    inv.write_text("all: [this is not, an inventory\n")
    r = cli("--config", path, "config", "check")
    assert r.code == 2 and "inventory" in r.out and "Traceback" not in r.out + r.err


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800),
                                                ("1y", 31536000), ("1d 12h", 129600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "1x", "-1d", "1.5h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_version_and_help(cli):
    r = cli("--version")
    assert r.code == 0 and "resilience" in r.out
    r = cli("--help")
    assert r.code == 0 and "Exit codes" in r.out
    r = cli("no-such-command")
    assert r.code == 2 and "No such command" in r.err
