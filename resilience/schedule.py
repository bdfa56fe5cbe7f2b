"""The ops host's cron file: render it from the config, install, show, remove.

One managed file in ``/etc/cron.d`` (``schedule.cron_file``) holds every job: nightly backup
of all sites, weekly verify with a data subset, weekly forget + prune, and one line per
drill plan the config names. Each job runs under ``flock -n`` with its own lock per job
kind, so a long backup never blocks the weekly verify but two backups never overlap (the
repository's own locks arbitrate between kinds: prune takes an exclusive lock and a verify
that meets it exits 75). All drills share one lock: two drills at once would act on the same
members and lines. Output is appended to one log per kind.

The cron file is written atomically (a temporary file whose name has a dot, which cron
ignores, then a rename) and only ever replaces a file that carries the managed header.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ResilienceError, UsageError
from .fsutil import atomic_write

if TYPE_CHECKING:
    from .config import Config

HEADER = "# managed by resilience; edits are overwritten"
# Vixie/Debian cron's names for common schedules (cron(8), crontab(5)).
MACROS = frozenset({"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily",
                    "@midnight", "@hourly"})
# run-parts rules that Debian's cron applies to /etc/cron.d: other names are silently ignored.
_CRON_D_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# What Debian cron understands in a field: numbers, names, *, ranges, steps, lists. croniter
# also accepts Quartz-style L, W, # and ?, which cron would reject: refuse them here.
_FIELD = re.compile(r"^[A-Za-z0-9*,/-]+$")
_NAMES = {3: {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"},
          4: {"sun", "mon", "tue", "wed", "thu", "fri", "sat"}}
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week")
CRON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cron_problem(expr: Any) -> str | None:
    """Why ``expr`` is not a schedule Debian cron accepts (five fields or an @macro), or None
    when it is valid."""
    if not isinstance(expr, str) or not expr.strip():
        return "must be a cron expression such as '30 1 * * *' or '@daily'"
    text = expr.strip()
    if text.startswith("@"):
        if text in MACROS:
            return None
        return f"unknown cron macro {text!r} (use one of {', '.join(sorted(MACROS))})"
    fields = text.split()
    if len(fields) != 5:
        return (f"cron expression {text!r} has {len(fields)} field(s); it needs 5 "
                "(minute hour day-of-month month day-of-week)")
    for index, (name, field) in enumerate(zip(_FIELD_NAMES, fields, strict=True)):
        if not _FIELD.match(field):
            return f"cron expression {text!r}: {name} field {field!r} uses characters cron does not accept"
        for word in re.findall(r"[A-Za-z]+", field):
            if word.lower() not in _NAMES.get(index, set()):
                return f"cron expression {text!r}: {name} field {field!r}: cron does not know {word!r}"
    from croniter import croniter  # imported here: only schedule commands and configs need it

    if not croniter.is_valid(text):
        return f"cron expression {text!r} is out of range or malformed"
    return None


def validate_cron(expr: Any) -> str:
    """Return ``expr`` stripped when it is a valid cron schedule; raise ValueError otherwise
    (pydantic turns that into a config problem)."""
    problem = cron_problem(expr)
    if problem:
        raise ValueError(problem)
    return str(expr).strip()


@dataclass(frozen=True)
class Job:
    """One cron line: kind (backup, verify, prune, drill), schedule, lock, log, argv."""

    kind: str
    name: str
    when: str
    lock: Path
    log: Path
    argv: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "schedule": self.when, "lock": str(self.lock),
                "log": str(self.log), "argv": list(self.argv)}


def executable() -> list[str]:
    """The absolute command that runs this very installation of resilience (cron's PATH does
    not contain a venv): the ``resilience`` script beside the interpreter, else
    ``python -m resilience``. The venv's python is not resolved: that would leave the venv."""
    script = Path(sys.executable).with_name("resilience")
    if script.exists():
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "resilience"]


def cron_file(cfg: Config, override: str | os.PathLike | None = None) -> Path:
    """The cron file to manage: ``override`` (``--file``), else ``schedule.cron_file``.
    UsageError when cron would ignore a file of that name."""
    path = Path(override) if override is not None else Path(cfg.schedule.cron_file)
    path = path.absolute()
    if not _CRON_D_NAME.match(path.name):
        raise UsageError(f"cron file name {path.name!r}: cron ignores files in /etc/cron.d whose "
                         "name has characters other than A-Z a-z 0-9 _ - (no dots)")
    return path


def jobs(cfg: Config, path: Path) -> list[Job]:
    """The jobs the config asks for, in a fixed order. Lock and log names start with the cron
    file's name so that two configs installed side by side do not share locks."""
    sc = cfg.schedule
    if cfg.source is None:
        raise UsageError("the schedule needs a config file (its absolute path goes into cron)")
    config = str(Path(cfg.source).absolute())
    base = [*executable(), "--config", config, "--json"]
    prefix = path.name
    out: list[Job] = []

    def add(kind: str, name: str, when: str | None, args: list[str]) -> None:
        if when is None:
            return
        out.append(Job(kind, name, when, Path(sc.lock_dir) / f"{prefix}-{kind}.lock",
                       Path(sc.log_dir) / f"{kind}.log", (*base, *args)))

    add("backup", "backup", sc.backup, ["backup", "--all"])
    add("verify", "verify", sc.verify, ["verify", "--read-data-subset", sc.verify_subset])
    add("prune", "prune", sc.prune, ["forget", "--prune"])
    if getattr(cfg, "metrics", None) is not None and cfg.metrics.dir is not None:
        # The Prometheus textfile is only as fresh as its last write.
        add("metrics", "metrics", sc.metrics, ["metrics", "write"])
    for plan, when in sorted(sc.drills.items()):
        # normpath: "inventories/lab/../../drills/x.yml" reads badly in a cron file
        add("drill", f"drill {Path(plan).stem}", when, ["drill", "run", os.path.normpath(plan)])
    return out


def _cron_escape(command: str) -> str:
    # cron turns an unescaped % into a newline (the rest becomes stdin).
    return command.replace("%", "\\%")


def command_line(job: Job) -> str:
    """The shell command of one job: ``flock -n -E 75 LOCK CMD >>LOG 2>&1``, then a dated
    line in the log when it did not succeed (75: the previous run still holds the lock)."""
    for part in (*job.argv, str(job.lock), str(job.log)):
        if "\n" in part or "\r" in part:
            raise UsageError(f"a path in the schedule contains a line break: {part!r}")
    cmd = " ".join(shlex.quote(a) for a in job.argv)
    log = shlex.quote(str(job.log))
    tag = shlex.quote(f"resilience {job.name}:")
    text = (f"flock -n -E 75 {shlex.quote(str(job.lock))} {cmd} >>{log} 2>&1 || "
            f"echo {tag} \"exit $? at $(date -u +%Y-%m-%dT%H:%M:%SZ) (75 = skipped: the previous run still holds the lock)\" >>{log}")
    return _cron_escape(text)


def render(cfg: Config, path: Path) -> str:
    """The full text of the managed cron file."""
    sc = cfg.schedule
    user = sc.user
    bin_dir = str(Path(executable()[0]).parent)
    lines = [
        HEADER,
        f"# config: {Path(cfg.source).absolute() if cfg.source else '?'}",
        "# install: resilience schedule install · check: resilience schedule show · remove: resilience schedule remove",
        "# one flock per job kind: a long backup does not block a verify; two of a kind never overlap",
        "SHELL=/bin/sh",
        # the venv first: hooks and ansible-playbook are found beside resilience
        f"PATH={bin_dir}:{CRON_PATH}",
        "",
    ]
    for job in jobs(cfg, path):
        lines.append(f"# {job.name}")
        lines.append(f"{job.when} {user} {command_line(job)}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> list[dict[str, Any]]:
    """The job lines of a cron.d file: ``{schedule, user, command}`` each (comments and
    variable assignments skipped). Raises ValueError naming a line cron would reject."""
    entries = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue
        parts = line.split()
        if parts[0].startswith("@"):
            when, rest = parts[0], parts[1:]
        else:
            when, rest = " ".join(parts[:5]), parts[5:]
        problem = cron_problem(when)
        if problem:
            raise ValueError(f"line {n}: {problem}")
        if len(rest) < 2 or not _USER.match(rest[0]):
            raise ValueError(f"line {n}: needs a user field and a command")
        entries.append({"schedule": when, "user": rest[0], "command": " ".join(rest[1:])})
    return entries


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return "\ufffd"
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _ours(text: str) -> bool:
    return text.startswith(HEADER + "\n")


def _warnings(cfg: Config) -> list[str]:
    out = []
    for plan in sorted(cfg.schedule.drills):
        if not Path(plan).is_file():
            out.append(f"drill plan {os.path.normpath(plan)} does not exist (yet): its cron job will fail until it does")
    return out


def show(cfg: Config, override: str | os.PathLike | None = None) -> dict[str, Any]:
    """What is installed and whether it matches the config: ``{file, installed, managed,
    matches, jobs (installed entries), expected (the config's jobs), content}``."""
    path = cron_file(cfg, override)
    want = render(cfg, path)
    have = _read(path)
    res: dict[str, Any] = {"file": str(path), "installed": have is not None,
                           "managed": have is not None and _ours(have), "matches": have == want,
                           "expected": [j.as_dict() for j in jobs(cfg, path)], "jobs": [],
                           "content": have, "warnings": _warnings(cfg)}
    if have is not None:
        try:
            res["jobs"] = parse(have)
        except ValueError as exc:
            res["error"] = f"{path}: {exc}"
    return res


def install(cfg: Config, override: str | os.PathLike | None = None, *, dry_run: bool = False) -> dict[str, Any]:
    """Write the managed cron file (and create the log folder). Idempotent: ``changed`` is
    False when the file already holds exactly this. UsageError when the target exists and is
    not managed by resilience (never overwrite someone's hand-written file)."""
    path = cron_file(cfg, override)
    text = render(cfg, path)
    parse(text)  # what cron would reject must never be written
    have = _read(path)
    if have is not None and not _ours(have):
        raise UsageError(f"{path} exists and is not managed by resilience (no header); "
                         "move it away or choose another --file")
    changed = have != text
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent} does not exist (is cron installed?)")
    try:
        if changed and not dry_run:
            # A dot-named temporary: cron ignores it even if we die before the rename; 0644: cron
            # refuses files writable by group or others.
            atomic_write(path, text.encode("utf-8"), 0o644, sync_dir=True)
        if not dry_run:
            Path(cfg.schedule.log_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise ResilienceError(f"cannot write {exc.filename or path}: {exc.strerror} "
                              "(cron files are root's: run with sudo)") from None
    return {"file": str(path), "changed": changed, "dry_run": dry_run, "content": text,
            "jobs": [j.as_dict() for j in jobs(cfg, path)], "warnings": _warnings(cfg)}


def remove(cfg: Config, override: str | os.PathLike | None = None, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete the managed cron file. Idempotent (``changed`` False when there was none);
    UsageError when the file is not managed by resilience."""
    path = cron_file(cfg, override)
    have = _read(path)
    if have is None:
        return {"file": str(path), "changed": False, "dry_run": dry_run}
    if not _ours(have):
        raise UsageError(f"{path} is not managed by resilience (no header); not removing it")
    if not dry_run:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise ResilienceError(f"cannot remove {path}: {exc.strerror}") from None
    return {"file": str(path), "changed": True, "dry_run": dry_run}
