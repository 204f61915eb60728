"""streams_app/metrics.py: names declared once, true lag, the one-line calls."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from streams_app import metrics


def test_every_pipeline_metric_is_prefixed_and_exported():
    names = metrics.metric_names()
    # the pipeline's own are prefixed; prometheus_client's process_* keep their standard names
    assert all(name.startswith(("payments_", "process_")) for name in names)
    assert "process_resident_memory_bytes" in names and "process_cpu_seconds_total" in names
    for name in ("payments_dead_letters_total", "payments_stage_records_total", "payments_consumer_lag_records",
                 "payments_commit_duration_seconds_bucket", "payments_sink_duplicate_charges",
                 "payments_fix_interventions_total", "payments_dedup_keys", "payments_faust_messages_received_total"):
        assert name in names


def test_the_calls_show_up_in_the_exposition():
    metrics.dead_lettered("ingest", "unit_test_code")
    metrics.counted("unittest.outcome", 3)
    metrics.fix_intervened("unit-test-fix")
    families = {f.name: f for f in text_string_to_metric_families(metrics.generate_latest(metrics.REGISTRY).decode())}
    dead = {(s.labels["stage"], s.labels["code"]): s.value for s in families["payments_dead_letters"].samples
            if s.name.endswith("_total")}
    assert dead[("ingest", "unit_test_code")] >= 1
    stage = {(s.labels["stage"], s.labels["outcome"]): s.value for s in families["payments_stage_records"].samples
             if s.name.endswith("_total")}
    assert stage[("unittest", "outcome")] >= 3


def test_true_lag_at_least_once_is_highwater_minus_committed():
    assert metrics.true_lag(10, 15, exactly_once=False) == 5
    assert metrics.true_lag(None, 3, exactly_once=False) == 3
    assert metrics.true_lag(10, None, exactly_once=False) is None


def test_true_lag_exactly_once_does_not_count_trailing_markers():
    # last record 99 delivered and committed (100); three producers' markers at 100-102;
    # the client fetched past them: drained.
    assert metrics.true_lag(100, 103, exactly_once=True, position=103, read=99) == 0
    # 5 records delivered and not committed, 10 offsets not fetched yet
    assert metrics.true_lag(100, 115, exactly_once=True, position=105, read=104) == 15
    # no position known: one offset of slack (one marker)
    assert metrics.true_lag(100, 101, exactly_once=True) == 0


def test_sync_counter_adds_only_the_growth():
    seen: dict = {}
    before = metrics.SINK_RETRIES.labels("unit")._value.get()
    metrics.sync_counter(metrics.SINK_RETRIES, ("unit",), 4, seen)
    metrics.sync_counter(metrics.SINK_RETRIES, ("unit",), 4, seen)
    metrics.sync_counter(metrics.SINK_RETRIES, ("unit",), 6, seen)
    assert metrics.SINK_RETRIES.labels("unit")._value.get() - before == 6
