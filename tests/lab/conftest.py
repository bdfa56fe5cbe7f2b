"""Fixtures of the lab tests: one lab for the whole session, brought up through the Python API.

Without root (or when the lab cannot start) every lab test is skipped, unless
RESILIENCE_REQUIRE_LAB=1, in which case they fail with the reason. The lab is left up at the
end of the session, except that tests/lab/test_zz_down.py (which runs last) tears it down to
prove `lab down` leaves nothing.
"""

from __future__ import annotations

import os

import pytest

from .labtools import member_tests_lock

REQUIRE_ENV = "RESILIENCE_REQUIRE_LAB"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"lab required ({REQUIRE_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"lab unavailable: {reason}")


@pytest.fixture(scope="session")
def lab():
    """The lab's status dict once every host is healthy (the lab is brought up if needed)."""
    if os.geteuid() != 0:
        _unavailable("needs root")
    from resilience import lab as lab_api
    from resilience.errors import ResilienceError
    from resilience.lab import faults, site
    from resilience.lab import layout as L
    from resilience.lab import topology as T

    try:
        L.lab_dir().mkdir(parents=True, exist_ok=True)
        # Under the member lock: a concurrent session's test may have a member out or a line
        # down on purpose right now; the reset waits until it is done.
        with member_tests_lock():
            lab_api.up()
            # A known starting point, whatever an earlier (interrupted) run left behind.
            for line in T.LINES:
                faults.line_up(line)
            lab_api.set_active_line(T.DEFAULT_LINE)
            for web in T.WEB_HOSTS:
                if not site.is_pristine(L.site_dir(web)):
                    faults.untamper(web)
            return lab_api.status()
    except ResilienceError as exc:
        _unavailable(str(exc))


def pytest_collection_modifyitems(session, config, items):
    """Tear-down tests run after every other test of the session, wherever those live (other
    folders' lab tests need the lab up)."""
    last = [i for i in items if i.path.name == "test_zz_down.py"]
    if last:
        items[:] = [i for i in items if i.path.name != "test_zz_down.py"] + last


@pytest.fixture(scope="module")
def member_lock(lab):
    """Hold the lab's member lock for a module whose tests take a member out, tamper with a
    site or change its content: such tests (from any module, or any concurrent session) must
    not overlap."""
    with member_tests_lock():
        yield


@pytest.fixture
def member_lock_per_test(lab):
    """The same lock, for one test at a time (modules that hold it only while changing the
    lab)."""
    with member_tests_lock():
        yield
