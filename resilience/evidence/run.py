"""Runs and steps: how every action records what it did.

Usage::

    run = ledger.start_run("backup", {"site": "portal"})
    with run:                                    # records run-end with the outcome
        with run.step("snapshot files", host="web1") as step:
            step.details["files"] = 1234
            step.artifact("listing.txt", data=b"...")
        run.details["snapshot"] = "ab12…"

A step that raises is recorded with outcome ``failed`` (``cancelled`` on Ctrl-C) and the error
message, then the exception propagates. All details pass through :func:`redact`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .ledger import Ledger, now_iso
from .redact import redact, redact_text

OK, FAILED, CANCELLED, SKIPPED, PARTIAL = "ok", "failed", "cancelled", "skipped", "partial"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def new_run_id(action: str) -> str:
    """A sortable, readable run id: ``20261127T023000Z-backup-3fa2c1``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    slug = _SAFE_NAME.sub("-", action).strip("-")[:32] or "run"
    return f"{stamp}-{slug}-{secrets.token_hex(3)}"


def _outcome_of(exc: BaseException | None) -> str:
    if exc is None:
        return OK
    if isinstance(exc, KeyboardInterrupt):
        return CANCELLED
    return FAILED


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return redact_text(str(exc) or type(exc).__name__)


class Step:
    """One recorded step. Fill ``details`` and call :meth:`artifact`; the record is written
    when the ``with`` block ends (or by :meth:`finish`)."""

    def __init__(self, run: Run, name: str, host: str | None):
        self.run, self.name, self.host = run, name, host
        self.start = now_iso()
        self._t0 = time.monotonic()
        self.details: dict[str, Any] = {}
        self.artifacts: list[dict[str, Any]] = []
        self.outcome: str | None = None
        self.record: dict[str, Any] | None = None

    def artifact(self, name: str, *, data: bytes | None = None, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Keep ``data`` or a copy of the file at ``path`` under the run's artifact folder and
        list it (name, path, sha256, size) in this step's record."""
        entry = self.run.keep_artifact(name, data=data, path=path)
        self.artifacts.append(entry)
        return entry

    def finish(self, outcome: str = OK, error: str | None = None) -> dict[str, Any]:
        """Write the step record. Idempotent: a second call returns the first record."""
        if self.record is not None:
            return self.record
        self.outcome = outcome
        rec: dict[str, Any] = {
            "type": "step",
            "run": self.run.id,
            "step": self.name,
            "host": self.host,
            "start": self.start,
            "end": now_iso(),
            "duration_s": round(time.monotonic() - self._t0, 6),
            "outcome": outcome,
            "details": redact(self.details),
            "artifacts": self.artifacts,
        }
        if self.run.dry_run:
            rec["dry_run"] = True
        if error:
            rec["error"] = redact_text(error)
        self.record = self.run.ledger.append(rec)
        self.run.steps.append(self.record)
        return self.record

    def __enter__(self) -> Step:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        outcome = self.outcome or _outcome_of(exc)
        self.finish(outcome, _error_text(exc) if exc is not None else None)


class Run:
    """A recorded run of one action. Create with :meth:`Ledger.start_run`."""

    def __init__(self, ledger: Ledger, run_id: str, action: str, dry_run: bool):
        self.ledger, self.id, self.action, self.dry_run = ledger, run_id, action, dry_run
        self.details: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []
        self.outcome: str | None = None
        self.ended = False
        self._t0 = time.monotonic()

    @classmethod
    def start(cls, ledger: Ledger, action: str, params: dict[str, Any], *, dry_run: bool = False) -> Run:
        run = cls(ledger, new_run_id(action), action, dry_run)
        ledger.append(
            {
                "type": "run-start",
                "run": run.id,
                "action": action,
                "params": redact(params),
                "dry_run": dry_run,
                "user": _user(),
                "hostname": os.uname().nodename,
                "pid": os.getpid(),
            }
        )
        return run

    def step(self, name: str, host: str | None = None) -> Step:
        """Begin a step; use as a context manager."""
        return Step(self, name, host)

    def record_step(self, name: str, *, host: str | None = None, outcome: str = OK,
                    details: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
        """Record a step that already happened (e.g. reported by an Ansible event)."""
        step = Step(self, name, host)
        step.details.update(details or {})
        return step.finish(outcome, error)

    def keep_artifact(self, name: str, *, data: bytes | None = None, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Store an artifact under ``artifacts/RUN_ID/`` and return its description with sha256."""
        if (data is None) == (path is None):
            raise ValueError("give exactly one of data or path")
        folder = self.ledger.artifacts_dir / self.id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        safe = _SAFE_NAME.sub("_", name).strip("._") or "artifact"
        dest, out = _claim(folder, safe)
        digest = hashlib.sha256()
        with out:
            if data is not None:
                digest.update(data)
                out.write(data)
            else:
                with open(path, "rb") as src:
                    shutil.copyfileobj(_Hashing(src, digest), out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        size = dest.stat().st_size
        os.chmod(dest, 0o400)
        return {"name": name, "path": str(dest.relative_to(self.ledger.dir)), "sha256": digest.hexdigest(), "size": size}

    def finish(self, outcome: str | None = None, error: str | None = None) -> dict[str, Any] | None:
        """Record the run's end. Outcome defaults to ``failed`` if any step failed, else ``ok``."""
        if self.ended:
            return None
        self.ended = True
        if outcome is None:
            outcome = FAILED if any(s.get("outcome") == FAILED for s in self.steps) else OK
        self.outcome = outcome
        rec: dict[str, Any] = {
            "type": "run-end",
            "run": self.id,
            "action": self.action,
            "outcome": outcome,
            "duration_s": round(time.monotonic() - self._t0, 6),
            "steps": len(self.steps),
            "details": redact(self.details),
        }
        if error:
            rec["error"] = redact_text(error)
        return self.ledger.append(rec)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.finish(_outcome_of(exc), _error_text(exc))
        else:
            self.finish(self.outcome)


def _claim(folder: Path, safe: str) -> tuple[Path, Any]:
    """Create a new file named ``safe`` (or ``safe.N``) in ``folder``; exclusive creation, so
    steps running at the same time never write into one file."""
    n = 1
    while True:
        dest = folder / (safe if n == 1 else f"{safe}.{n}")
        try:
            return dest, open(dest, "xb")
        except FileExistsError:
            n += 1


class _Hashing:
    """A file wrapper that feeds everything read through a hash."""

    def __init__(self, f, digest):
        self.f, self.digest = f, digest

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        self.digest.update(chunk)
        return chunk


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())
