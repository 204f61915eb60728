"""The files a user runs besides the code: CLI errors, docker-compose.yml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_bad_setting_stops_the_worker_with_a_message_that_says_what_to_change():
    env = {**os.environ, "PROCESSING_GUARANTEE": "exactly-once", "WEB_PORT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams_app", "worker"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "PROCESSING_GUARANTEE='exactly-once' is invalid" in result.stderr
    assert "at_least_once, exactly_once, at_most_once" in result.stderr
    assert "WEB_PORT='0'" in result.stderr


def test_docker_compose_file_is_valid():
    """No Docker engine here: the compose file is checked statically by docker-compose."""
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed; .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([tool, "-f", str(REPO / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PROCESSING_GUARANTEE": "exactly_once"})
    assert result.returncode == 0, result.stderr
    assert "PROCESSING_GUARANTEE: exactly_once" in result.stdout
    for service in ("kafka:", "postgres:", "worker:"):
        assert service in result.stdout
