"""A lean install: ``pip install .`` without extras into a fresh venv gives a worker that
imports, starts on the real broker and serves /health/live and /metrics, with none of
the lab's or the benchmark's packages (quixstreams, matplotlib, py-spy, psutil) present.

The tracked files are copied first (``git ls-files``): pip's in-tree build would leave
build/ and *.egg-info in the checkout. pip uses its wheel cache; about 20 s when warm.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from lab.workers import free_port
from streams_app.admin import delete_topics_containing

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXTRAS_ONLY = ("quixstreams", "matplotlib", "py-spy", "psutil")


def test_the_base_install_starts_the_worker_without_the_lab_and_bench_packages(tmp_path, kafka_bootstrap):
    source = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", str(source)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]

    listed = subprocess.run([str(venv / "bin/pip"), "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    present = [name for name in EXTRAS_ONLY if f"{name}==" in listed.replace("_", "-")]
    assert not present, f"the base install pulled in {present}: move them back to an extra"

    run_id = f"t-lean-{uuid.uuid4().hex[:6]}"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(APP_ID=run_id, TOPIC_PREFIX=run_id, BROKER_URL=f"kafka://{kafka_bootstrap}", WEB_PORT=str(port),
               STORE_URL="memory://", APP_DATADIR=str(tmp_path / "data"), SINK_DB=f"sqlite:///{tmp_path}/sink.db")
    workdir = tmp_path / "run"  # not the checkout: the installed package must be the one imported
    workdir.mkdir()
    help_run = subprocess.run([str(venv / "bin/faust"), "-A", "streams_app", "--help"], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "worker" in help_run.stdout, help_run.stderr[-2000:]

    log = (tmp_path / "worker.log").open("w+")
    worker = subprocess.Popen([str(venv / "bin/faust"), "-A", "streams_app", "worker", "-l", "info"],
                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        answered = None
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    answered = response.read().decode()
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        log.seek(0)
        assert answered is not None, f"the worker did not serve /metrics:\n{log.read()[-3000:]}"
        assert "payments_records_consumed" in answered
        imported = subprocess.run(
            [str(venv / "bin/python"), "-c",
             "import sys, streams_app; print(','.join(m for m in ('quixstreams', 'matplotlib', 'psutil') "
             "if m in sys.modules))"], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
        assert imported.returncode == 0 and imported.stdout.strip() == "", imported.stdout + imported.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        asyncio.run(delete_topics_containing(kafka_bootstrap, run_id))
