import os

import pytest

from helpers import SingleGaussian

# Set by tests/run.sh once the real hosts are set up: then a skipped test means a host test
# did not run, and the run fails instead of passing green without it.
NO_SKIPS = os.environ.get("LEARNED_SOLVERS_NO_SKIPS") == "1"
_skipped = []


@pytest.fixture
def gaussian():
    return SingleGaussian()


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_collectreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if NO_SKIPS and _skipped:
        terminalreporter.write_line(
            f"LEARNED_SOLVERS_NO_SKIPS=1 and {len(_skipped)} skipped (the hosts are set up, so every test must "
            f"run): " + ", ".join(_skipped), red=True)


def pytest_sessionfinish(session, exitstatus):
    if NO_SKIPS and _skipped and exitstatus == 0:
        session.exitstatus = 1
