"""The dashboard in a real browser: headless Chromium renders http://127.0.0.1:PORT/
after its JavaScript fetched /api/stats and /api/dead-letters, and the page shows the
live counts, rates, lag per partition, top balances and the dead letters sent."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import pytest

from streams_app.traffic import CODE_OF_KIND, generate

pytestmark = pytest.mark.integration

#: The reason codes ingest gives the traffic's malformed records (streams_app/models.py).
CODES = set(CODE_OF_KIND.values())

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

    status, body = worker.get_json("/api/dead-letters")
    assert status == 200 and body["dead_letters"], body
    assert {d["code"] for d in body["dead_letters"]} <= set(CODES), body
    dom = rendered_dom(worker.url + "/")
    assert card(dom, "processing_guarantee") == "exactly_once"
    assert int(card(dom, "consumed").replace(",", "")) == len(traffic.records)
    assert int(card(dom, "dead_lettered").replace(",", "")) == sum(traffic.bad.values())
    assert int(card(dom, "duplicates_dropped").replace(",", "")) == traffic.duplicates
    assert int(card(dom, "charges").replace(",", "")) == len(traffic.unique_events)
    assert card(dom, "duplicate_charges") == "0"

    # charges are labelled by what counts them; 0 duplicate charges is not an alarm
    assert card(dom, "charges_label") == "charges (database rows)"
    dup_card = re.search(r'<div class="card ([a-z ]*)" id="duplicate_charges_card">', dom)
    assert dup_card and "bad" not in dup_card.group(1).split(), dup_card
    # it updates: several refreshes within the page's virtual 5 s
    assert int(card(dom, "refreshes")) >= 2
    # rates: one polyline per stage, and the legend's current rates
    assert dom.count("<polyline") == 5 and 'id="rate_consumed"' in dom
    # lag per partition: every stream partition of the worker, drained
    lag_rows = re.findall(r'<tr(?: class="[^"]*")?><td>([^<]+\[\d+\])</td><td class="num">([^<]*)</td></tr>', dom)
    assert any(name.startswith(pipeline.config.topic("raw")) for name, _ in lag_rows), lag_rows
    assert all(lag == "0" for _, lag in lag_rows), lag_rows
    # top balances: the largest balance of the traffic is listed first
    largest = max(amount for by in traffic.expected_balances.values() for amount in by.values())
    balances = re.search(r'<tbody id="top_balances">(.*?)</tbody>', dom, re.S).group(1)
    first = re.search(r'<td class="num">([^<]+)</td>', balances)
    assert first and int(first.group(1).replace(",", "")) == largest, balances[:500]
    # the dead letters sent during this test, with their reasons and where they came from
    letters = re.findall(r'<tr class="dead-letter"><td>[^<]*</td><td>([^<]*)</td><td class="code">([^<]*)</td>'
                         r'<td>([^<]*)</td><td><code>([^<]*)</code></td></tr>', dom)
    assert letters, "no dead letter rendered"
    assert all(stage == "ingest" and reason and place.startswith(pipeline.config.topic("raw"))
               for stage, _, reason, place in letters), letters
    assert len(letters) == min(20, sum(traffic.bad.values()))
    assert "faust -A streams_app dlq replay" in dom
