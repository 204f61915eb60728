"""A real ``faust worker`` against a real payment API: it refuses to start when the API
keeps idempotency keys for less than DEDUP_HORIZON, and prints no password meanwhile.

No broker is needed: the check runs when the worker starts, before it connects to
Kafka (BROKER_URL names a closed port, so a worker that passes the check just waits).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.payment_api import free_port as _free_port
from tests.fixtures.payment_api import payment_api
from tests.fixtures.payment_api import stop_process as _stop

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-topsecret"


def launch_worker(tmp_path: Path, command: list[str], **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``command`` (a worker command line) with a broker URL on a closed port, a SQLite sink
    and free ports, logging to ``tmp_path/worker.log``; ``env`` adds or overrides settings."""
    log_path = tmp_path / "worker.log"
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "BROKER_URL": f"kafka://k:{SECRET}@127.0.0.1:{_free_port()}",
        "SINK_DB": f"sqlite:///{tmp_path / 'sink.db'}",
        "STORE_URL": "memory://",
        "APP_ID": "start-check",
        "APP_DATADIR": str(tmp_path / "data"),
        "WEB_PORT": str(_free_port()),
        **env,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, log_path


def wait_for_line(worker: subprocess.Popen[bytes], log_path: Path, text: str, timeout: float = 90) -> None:
    """Wait until the worker's log holds ``text``; fail (with the log) if it exits or the
    time is up first."""
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        assert worker.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


def start_worker(tmp_path: Path, api_url: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    return launch_worker(
        tmp_path, [sys.executable, "-m", "faust", "-A", "streams_app", "worker", "-l", "info"],
        SINK_TARGET="api", SINK_MODE="idempotent",
        # userinfo the API ignores: it must not be printed
        PAYMENT_API_URL=api_url.replace("http://", f"http://sink:{SECRET}@"), **env,
    )


def refused_start(tmp_path: Path, key_retention: str, **env: str) -> str:
    """Start a worker against an API keeping keys ``key_retention``; it must exit non-zero.
    Returns its log."""
    with payment_api(tmp_path, "--key-retention", key_retention) as api_url:
        worker, log_path = start_worker(tmp_path, api_url, **env)
        try:
            returncode = worker.wait(timeout=90)
        finally:
            _stop(worker)
    log = log_path.read_text()
    assert returncode != 0, log
    return log


def test_the_worker_refuses_an_api_that_forgets_keys_before_the_dedup_horizon(tmp_path: Path) -> None:
    log = refused_start(tmp_path, "24h", DEDUP_HORIZON="7d")
    assert "keeps idempotency keys for 1d, less than DEDUP_HORIZON=7d" in log
    assert "--key-retention 7d" in log and "IDEMPOTENCY_KEY_RETENTION=7d" in log
    assert SECRET not in log


def test_the_worker_starts_when_the_api_keeps_keys_long_enough(tmp_path: Path) -> None:
    with payment_api(tmp_path, "--key-retention", "7d") as api_url:
        worker, log_path = start_worker(tmp_path, api_url, DEDUP_HORIZON="7d")
        try:
            wait_for_line(worker, log_path, "payment API keeps idempotency keys 7d >= DEDUP_HORIZON 7d")
        finally:
            _stop(worker)
    assert SECRET not in log_path.read_text()


def test_the_worker_refuses_pipeline_topics_with_another_partition_count(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The dedup state of an event id lives in one partition of raw and events: a raw
    topic made elsewhere with another partition count would put ids in partitions
    the tables do not have. The worker says which topic and what to change."""
    import asyncio
    import uuid

    from streams_app.admin import create_topics

    prefix = f"parts-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(kafka_bootstrap, [f"{prefix}.raw"], 2))
    log = refused_start(tmp_path, "7d", DEDUP_HORIZON="7d", TOPIC_PREFIX=prefix, TOPIC_PARTITIONS="4",
                        BROKER_URL=f"kafka://{kafka_bootstrap}")
    assert f"topic {prefix}.raw has 2 partitions but TOPIC_PARTITIONS=4" in log, log
