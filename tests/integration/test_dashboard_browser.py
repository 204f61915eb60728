"""The dashboard in a real browser: headless Chromium renders http://127.0.0.1:PORT/
after its JavaScript fetched /api/stats, and the page shows the live counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from streams_app.traffic import generate

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rendered_dom(url: str) -> str:
    """The DOM after scripts ran, as Chromium serialises it (--dump-dom)."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=90,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def card(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]*)<', dom)
    assert match, f"no element #{element_id} in the rendered page"
    return match.group(1)


def test_dashboard_shows_the_guarantee_and_live_counts(pipeline_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pipeline = pipeline_factory("exactly_once")
    worker = pipeline.worker()
    traffic = generate(150, duplicate_rate=0.2, bad_rate=0.1, seed=21, id_prefix=pipeline.config.run_id)
    pipeline.send(traffic)
    pipeline.drain()

    dom = rendered_dom(worker.url + "/")
    assert card(dom, "processing_guarantee") == "exactly_once"
    assert int(card(dom, "consumed").replace(",", "")) == len(traffic.records)
    assert int(card(dom, "dead_lettered").replace(",", "")) == sum(traffic.bad.values())
    assert int(card(dom, "duplicates_dropped").replace(",", "")) == traffic.duplicates
    assert int(card(dom, "charges").replace(",", "")) == len(traffic.unique_events)
    assert card(dom, "duplicate_charges") == "0"
