"""``resilience schedule``: the managed cron file, written into a tmp folder and read back."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess

import pytest
import yaml

from resilience.schedule import HEADER, cron_problem, parse


def _config(tmp_path, metrics_dir: str | None = None, **schedule) -> str:
    sched = {
        "backup": "30 1 * * *",
        "verify": "0 4 * * 0",
        "prune": "30 5 * * 0",
        "drills": {"drills/quarterly-tamper.yml": "0 3 1 1,4,7,10 *"},
        "log_dir": str(tmp_path / "log"),
        "lock_dir": str(tmp_path / "lock"),
        "cron_file": str(tmp_path / "cron.d" / "resilience"),
    }
    sched.update(schedule)
    (tmp_path / "cron.d").mkdir(exist_ok=True)
    path = tmp_path / "resilience.yml"
    doc = {"version": 1, "repository": {"url": str(tmp_path / "repo")},
           "evidence": {"dir": str(tmp_path / "evidence")}, "schedule": sched}
    if metrics_dir:
        doc["metrics"] = {"dir": metrics_dir}
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_metrics_are_refreshed_only_when_a_textfile_folder_is_configured(cli, tmp_path):
    cron = tmp_path / "cron.d" / "resilience"
    assert cli("--config", _config(tmp_path), "schedule", "install").code == 0
    assert not any(" metrics write" in ln for ln in _job_lines(cron.read_text()))
    cfg = _config(tmp_path, metrics_dir=str(tmp_path / "textfile"), metrics="*/10 * * * *")
    assert cli("--config", cfg, "schedule", "install").code == 0
    (line,) = [ln for ln in _job_lines(cron.read_text()) if " metrics write" in ln]
    assert line.startswith("*/10 * * * * root flock -n -E 75 ") and "metrics.lock" in line


def _job_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]]


def test_install_show_remove_round_trip(cli, tmp_path):
    cfg = _config(tmp_path)
    cron = tmp_path / "cron.d" / "resilience"

    r = cli("--config", cfg, "schedule", "install", "--json")
    assert r.code == 0, r.err
    res = json.loads(r.out)
    assert res["changed"] is True and res["file"] == str(cron)
    text = cron.read_text()
    assert text.startswith(HEADER + "\n")
    mode = stat.S_IMODE(cron.stat().st_mode)
    assert mode & 0o022 == 0, "cron refuses files writable by group or others"
    assert (tmp_path / "log").is_dir()

    lines = _job_lines(text)
    assert len(lines) == 4
    entries = parse(text)
    kinds = {}
    for line, entry in zip(lines, entries, strict=True):
        fields = line.split()
        assert len(fields) >= 7, line
        assert entry["user"] == "root"
        assert cron_problem(entry["schedule"]) is None
        # The command as the shell would see it once cron has turned \% back into %.
        argv = shlex.split(entry["command"].replace("\\%", "%").split(" >>")[0])
        assert argv[:4] == ["flock", "-n", "-E", "75"]
        lock, exe = argv[4], argv[5]
        assert os.path.isabs(lock) and lock.startswith(str(tmp_path / "lock"))
        assert os.path.isabs(exe) and os.access(exe, os.X_OK)
        assert argv[argv.index("--config") + 1] == cfg
        log = entry["command"].split(">>")[1].split()[0]
        assert os.path.isabs(log) and log.startswith(str(tmp_path / "log"))
        kinds[entry["schedule"]] = (lock, argv)
    # one lock per kind: never two of a kind at once, but a backup does not block a verify
    locks = [lock for lock, _ in kinds.values()]
    assert len(set(locks)) == 4
    backup_argv = kinds["30 1 * * *"][1]
    assert backup_argv[-2:] == ["backup", "--all"]
    assert kinds["0 4 * * 0"][1][-3:] == ["verify", "--read-data-subset", "10%"]
    assert "\\%" in text and " 10%" not in text, "an unescaped % would cut the cron line"
    assert kinds["30 5 * * 0"][1][-2:] == ["forget", "--prune"]
    drill = kinds["0 3 1 1,4,7,10 *"][1]
    assert drill[-3:-1] == ["drill", "run"] and drill[-1] == str(tmp_path / "drills" / "quarterly-tamper.yml")
    # the missing drill plan is a warning, not an error: the drills may land after the schedule
    assert any("quarterly-tamper.yml" in w for w in res["warnings"])

    before = cron.stat()
    r = cli("--config", cfg, "schedule", "install", "--json")
    assert r.code == 0 and json.loads(r.out)["changed"] is False
    after = cron.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    r = cli("--config", cfg, "schedule", "show", "--json")
    assert r.code == 0
    shown = json.loads(r.out)
    assert shown["installed"] and shown["matches"] and len(shown["jobs"]) == 4

    r = cli("--config", cfg, "schedule", "remove")
    assert r.code == 0 and "removed" in r.out
    assert list((tmp_path / "cron.d").iterdir()) == []
    r = cli("--config", cfg, "schedule", "remove", "--json")
    assert r.code == 0 and json.loads(r.out)["changed"] is False
    r = cli("--config", cfg, "schedule", "show", "--json")
    assert r.code == 1 and json.loads(r.out)["installed"] is False


def test_the_rendered_lines_run_under_flock_and_log(cli, tmp_path):
    """The backup line, run by sh as cron would run it: a config-less repository makes the
    backup fail (exit 2, logged); with its lock held the job is skipped with exit 75."""
    cfg = _config(tmp_path)
    assert cli("--config", cfg, "schedule", "install").code == 0
    entry = parse((tmp_path / "cron.d" / "resilience").read_text())[0]
    command = entry["command"].replace("\\%", "%")
    (tmp_path / "lock").mkdir()
    env = {**os.environ, "RESILIENCE_STATE_DIR": str(tmp_path / "state")}
    subprocess.run(["sh", "-c", command], env=env, check=True, timeout=60)
    log = (tmp_path / "log" / "backup.log").read_text()
    assert "resilience backup: exit 2 at " in log
    lock = tmp_path / "lock" / "resilience-backup.lock"
    with open(lock, "w") as holder:
        import fcntl

        fcntl.flock(holder, fcntl.LOCK_EX)
        subprocess.run(["sh", "-c", command], env=env, check=True, timeout=60)
    assert (tmp_path / "log" / "backup.log").read_text().splitlines()[-1].startswith("resilience backup: exit 75 at ")


def test_show_notices_a_changed_config_and_install_fixes_it(cli, tmp_path):
    cfg = _config(tmp_path)
    assert cli("--config", cfg, "schedule", "install").code == 0
    cfg = _config(tmp_path, backup="@daily", prune=None)
    r = cli("--config", cfg, "schedule", "show")
    assert r.code == 1 and "DIFFERS" in r.out
    r = cli("--config", cfg, "schedule", "install", "--dry-run")
    assert r.code == 0 and "would write" in r.out
    assert "30 1 * * *" in (tmp_path / "cron.d" / "resilience").read_text()
    assert cli("--config", cfg, "schedule", "install").code == 0
    entries = parse((tmp_path / "cron.d" / "resilience").read_text())
    assert [e["schedule"] for e in entries] == ["@daily", "0 4 * * 0", "0 3 1 1,4,7,10 *"]
    assert cli("--config", cfg, "schedule", "show").code == 0


@pytest.mark.parametrize("expr", ["61 1 * * *", "* * * *", "0 0 * * * 2026", "0 0 L * *",
                                  "@sometimes", "0 25 * * *", ""])
def test_a_bad_cron_expression_is_one_line_and_exit_2(cli, tmp_path, expr):
    cfg = _config(tmp_path, backup=expr)
    r = cli("--config", cfg, "schedule", "install")
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "schedule.backup" in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "cron.d" / "resilience").exists()


def test_a_bad_drill_schedule_is_exit_2(cli, tmp_path):
    cfg = _config(tmp_path, drills={"drills/x.yml": "0 3 1 1,4,7,10"})
    r = cli("--config", cfg, "schedule", "show")
    assert r.code == 2 and "schedule.drills" in r.err


@pytest.mark.parametrize("expr", ["30 1 * * *", "*/15 * * * *", "0 3 1 1,4,7,10 *", "0 2 * * mon-fri",
                                  "@daily", "@weekly", "@reboot", "5 4 1-7 * sun"])
def test_valid_cron_expressions(expr):
    assert cron_problem(expr) is None


def test_cron_file_names_cron_would_ignore_are_refused(cli, tmp_path):
    cfg = _config(tmp_path)
    r = cli("--config", cfg, "schedule", "install", "--file", str(tmp_path / "cron.d" / "resilience.cron"))
    assert r.code == 2 and "ignores" in r.err
    assert list((tmp_path / "cron.d").iterdir()) == []


def test_a_hand_written_file_is_never_overwritten_or_removed(cli, tmp_path):
    cfg = _config(tmp_path)
    mine = tmp_path / "cron.d" / "resilience"
    mine.write_text("15 1 * * * root /usr/local/bin/my-backup\n")
    r = cli("--config", cfg, "schedule", "install")
    assert r.code == 2 and "not managed" in r.err
    r = cli("--config", cfg, "schedule", "remove")
    assert r.code == 2
    assert mine.read_text() == "15 1 * * * root /usr/local/bin/my-backup\n"


def test_parse_rejects_lines_cron_would_reject():
    with pytest.raises(ValueError, match="user"):
        parse(f"{HEADER}\n30 1 * * * /bin/true\n")
    with pytest.raises(ValueError, match="cron expression"):
        parse(f"{HEADER}\n30 1 * * root /bin/true\n")
