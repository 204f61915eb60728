"""/metrics on the real broker: a worker's Prometheus scrape after traffic, parsed with
prometheus_client's own parser, agrees with what the traffic is known to contain."""

from __future__ import annotations

import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams_app.traffic import CODE_OF_KIND, generate

pytestmark = pytest.mark.integration


def scrape(url: str) -> tuple[str, dict[str, list]]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return content_type, samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"no sample {name}{labels} in /metrics"
    return sum(found)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_metrics_match_the_traffic_after_a_drain(pipeline_factory, guarantee):
    pipeline = pipeline_factory(guarantee)
    worker = pipeline.worker()
    traffic = generate(300, duplicate_rate=0.2, bad_rate=0.08, seed=31, id_prefix=pipeline.config.run_id)
    pipeline.send(traffic)
    pipeline.drain()

    content_type, samples = scrape(worker.url)
    assert content_type.startswith("text/plain; version=0.0.4")
    unique = len(traffic.unique_events)
    raw = pipeline.config.topic("raw")

    expected_codes = Counter()
    for kind, n in traffic.bad.items():
        expected_codes[CODE_OF_KIND[kind]] += n
    got_codes = {s.labels["code"]: s.value for s in samples["payments_dead_letters_total"]
                 if s.labels["stage"] == "ingest"}
    assert got_codes == dict(expected_codes)
    assert value(samples, "payments_stage_records_total", stage="ingest", outcome="dead_lettered") == \
        sum(traffic.bad.values())
    assert value(samples, "payments_stage_records_total", stage="dedup", outcome="duplicates") == traffic.duplicates
    assert value(samples, "payments_stage_records_total", stage="dedup", outcome="unique") == unique
    assert value(samples, "payments_stage_records_total", stage="apply", outcome="applied") == unique
    assert value(samples, "payments_sink_charges", target="database") == unique
    assert value(samples, "payments_sink_charged_events", target="database") == unique
    assert value(samples, "payments_sink_duplicate_charges", target="database") == 0

    # Every record of the raw topic was consumed (at least once: a seek may deliver one again).
    assert value(samples, "payments_records_consumed_total", topic=raw) >= len(traffic.records)
    assert value(samples, "payments_records_acked_total", topic=raw) >= len(traffic.records)
    lags = samples["payments_consumer_lag_records"]
    assert lags and all(s.value == 0 for s in lags), [(s.labels, s.value) for s in lags if s.value]
    assert {s.labels["topic"] for s in lags} >= {raw}
    assert value(samples, "payments_commit_duration_seconds_count", guarantee=guarantee) > 0
    assert value(samples, "payments_rebalances_total") >= 1
    assert value(samples, "payments_sink_outage", target="database") == 0
    assert value(samples, "payments_dedup_keys") >= unique
    assert "payments_dedup_swept_keys_total" in samples
    assert "payments_faust_messages_received_total" in samples  # Faust's own sensor metrics
