"""Exit codes and the exception hierarchy every command maps onto them.

Each exception carries the exit code the CLI returns for it, and a message that is safe to
show a user: one line, no secrets, no traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    PARTIAL = 3
    DAMAGED = 4
    TEMPFAIL = 75


class ResilienceError(Exception):
    """An operation failed (exit 1). The message is shown to the user as one line."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return self.message


class UsageError(ResilienceError):
    """Bad usage, bad input or bad configuration (exit 2)."""

    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A configuration file is invalid; ``problems`` holds ``file: key: reason`` lines."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid configuration"
        more = f" (and {len(self.problems) - 1} more problem(s))" if len(self.problems) > 1 else ""
        super().__init__(first + more, details={"problems": self.problems})


class PartialFailure(ResilienceError):
    """Some hosts or sites failed while others succeeded (exit 3)."""

    exit_code = ExitCode.PARTIAL


class DamagedError(ResilienceError):
    """A repository or ledger failed verification (exit 4)."""

    exit_code = ExitCode.DAMAGED


class TemporaryError(ResilienceError):
    """A temporary condition: lock held, endpoint down after retries (exit 75)."""

    exit_code = ExitCode.TEMPFAIL


class PlaybookError(ResilienceError):
    """A playbook failed or a host was unreachable (exit 1); ``result`` is the
    :class:`resilience.control.ansible.PlaybookResult` with every host's stats and failures."""

    def __init__(self, message: str, *, result=None):
        details = {"playbook": result.as_dict()} if result is not None else None
        super().__init__(message, details=details)
        self.result = result
