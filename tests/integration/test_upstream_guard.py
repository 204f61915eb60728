"""A real ``faust worker`` on a faust-streaming the fixes were not verified on: it refuses
to start and names the fixes to re-verify, unless FAUST_FIXES_UNVERIFIED=warn.

The other version is faked in the worker's own process (``faust.__version__`` set
before the CLI runs); no broker is needed: the check runs when the app is built,
before it connects (BROKER_URL names a closed port, so a worker that passes just waits).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_worker_start_checks import (
    _stop,
    launch_worker,
    wait_for_line,
)

pytestmark = pytest.mark.integration

#: ``faust -A streams_app worker`` with faust-streaming claiming another version.
FAKED_VERSION = (
    "import sys, faust; faust.__version__ = '0.16.0'; "
    "from faust.cli.faust import cli; cli.main(args=sys.argv[1:], prog_name='faust')"
)


def start_worker(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    return launch_worker(tmp_path, [sys.executable, "-c", FAKED_VERSION, "-A", "streams_app", "worker", "-l", "info"],
                         APP_ID="upstream-guard", **env)


def test_the_worker_refuses_a_faust_version_the_fixes_were_not_verified_on(tmp_path: Path) -> None:
    worker, log_path = start_worker(tmp_path)
    try:
        returncode = worker.wait(timeout=90)
    finally:
        _stop(worker)
    log = log_path.read_text()
    assert returncode != 0, log
    assert "faust-streaming 0.16.0 is installed, the fixes were verified on 0.15.3" in log
    assert "exact-gaps" in log and "source-partition-transactions" in log, "names the fixes to re-verify"
    assert "FAUST_FIXES_UNVERIFIED=warn" in log, "says how to run anyway"


def test_unverified_warn_runs_the_worker_and_says_why(tmp_path: Path) -> None:
    """With warn the app is built and the worker starts (it then fails to reach the closed
    broker port: not this test's concern)."""
    worker, log_path = start_worker(tmp_path, FAUST_FIXES_UNVERIFIED="warn")
    try:
        wait_for_line(worker, log_path, "[^Worker]: Starting...")
    finally:
        _stop(worker)
    log = log_path.read_text()
    assert "the Faust fixes were not verified on the installed libraries" in log
    assert "faust-streaming 0.16.0 is installed, the fixes were verified on 0.15.3" in log
