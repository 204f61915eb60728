"""The README's first command, end to end: broker, payment API, worker, traffic, counts.

``make run`` is ``SINK_TARGET=api faust -A streams_app demo``; here it runs with
``--exit-when-done`` on the session's broker, with its own topics, tables, API
database and ports, and must report every unique payment charged once.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lab.workers import free_port
from streams_app.admin import delete_topics_containing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_charges_every_unique_payment_once_through_the_payment_api(kafka_bootstrap, tmp_path):
    run_id = f"t-demo-{uuid.uuid4().hex[:6]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAULT_")},
        "BROKER_URL": f"kafka://{kafka_bootstrap}", "APP_ID": run_id, "TOPIC_PREFIX": run_id,
        "APP_DATADIR": str(tmp_path / "tables"), "WEB_PORT": str(free_port()),
        "SINK_TARGET": "api", "PAYMENT_API_URL": f"http://127.0.0.1:{free_port()}",
        "PAYMENT_API_DB": f"sqlite:///{tmp_path / 'payment-api.db'}", "COLUMNS": "200",
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "faust", "-A", "streams_app", "demo", "--count", "400", "--seed", "3",
             "--exit-when-done"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        asyncio.run(delete_topics_containing(kafka_bootstrap, run_id))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:] + (tmp_path / "logs" / "worker.log").read_text()[-3000:]
    assert "payment API up at" in output
    sent = re.search(r"sending 400 records: (\d+) unique payments", output)
    assert sent, output
    done = re.search(r"all (\d+) payments charged: .*payments charged (\d+)/\1\s+duplicate charges 0", output)
    assert done and done.group(1) == sent.group(1), output
