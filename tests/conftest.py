"""Shared fixtures: run the real CLI in-process and capture its output and exit code."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from resilience.cli.main import main


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def _private_state(monkeypatch, tmp_path_factory):
    """Every test keeps its caches and default evidence folder to itself."""
    monkeypatch.setenv("RESILIENCE_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run ``resilience ARGS…`` in this process; returns a Result. State goes to tmp_path."""
    monkeypatch.setenv("RESILIENCE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RESILIENCE_CONFIG", raising=False)

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(int(exc.value.code or 0), captured.out, captured.err)

    return run


def is_root() -> bool:
    return os.geteuid() == 0
