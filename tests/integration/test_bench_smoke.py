"""The benchmark end to end at toy scale: every system runs, every field is there,
every output is exactly right.

Nothing here asserts a speed: timings on a shared machine are not test results,
and the benchmark reports its targets instead of asserting them. What is
asserted is what makes its figures trustworthy: each system drained its input
and wrote exactly the unique events of it (the count the traffic generator
predicts, computed here independently), with no duplicate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run_benchmark
from bench.config import FaustVariant, preset
from streams_app.traffic import generate

pytestmark = pytest.mark.integration

RECORDS = 3_000
RESTORE_KEYS = 500
SYSTEMS = ("raw_alo", "raw_eos", "quix_alo", "quix_eos", "faust_alo", "faust_eos")
FIGURES = ("throughput_eps", "cpu_s_per_million", "peak_rss_mb", "p50_ms", "p99_ms", "events_in", "events_out")
RATIOS = ("faust_alo_over_raw_alo", "faust_eos_over_faust_alo", "faust_alo_over_quix_alo", "faust_eos_over_quix_eos")
VERSIONS = ("Apache Kafka (broker)", "Python", "aiokafka", "faust-streaming", "quixstreams")


@pytest.fixture(scope="module")
def report(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench-reports")
    config = preset("quick").replace(
        bootstrap=kafka_bootstrap, records=RECORDS, runs=1, partition_counts=(4,),
        faust_variants=(FaustVariant(),), latency_warmup_s=1.0, latency_duration_s=1.5,
        broker_records=5_000, transaction_durations_ms=(100,), restore_keys=RESTORE_KEYS,
        restart_events=500, profile_s=0, max_run_s=300.0,
        # Other tests share the broker: do not pin it to one core under their feet.
        pin_cpus=False, workdir=tmp_path_factory.mktemp("bench-work"),
    )
    return run_benchmark(config, out), out


def test_writes_the_three_reports(report: tuple[dict, Path]) -> None:
    doc, out = report
    assert json.loads((out / "bench.json").read_text()) == doc
    assert "## Side by side" in (out / "bench.md").read_text()
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_every_system_reports_every_figure(report: tuple[dict, Path]) -> None:
    doc, _ = report
    assert set(SYSTEMS) <= set(doc["systems"])
    for key in SYSTEMS:
        entry = doc["systems"][key]
        missing = [f for f in FIGURES if entry.get(f) is None]
        assert not missing, f"{key} lacks {missing}"
    for name in ("kafka_producer", "kafka_producer_tx100ms", "kafka_consumer"):
        assert doc["broker"][name]["throughput_eps"] > 0
    assert all(doc["ratios"][name] is not None for name in RATIOS)
    assert all(doc["versions"].get(name) for name in VERSIONS)
    assert doc["machine"]["cpu_model"]
    assert doc["runs"] == 1 and "ONE run" in doc["runs_note"]
    assert {t["target"] for t in doc["targets"]}  # reported, never asserted


def test_every_system_outputs_exactly_the_unique_events(report: tuple[dict, Path]) -> None:
    doc, _ = report
    unique = len(generate(RECORDS, duplicate_rate=0.2, seed=1).unique_events)
    assert {"faust_min_alo", "faust_min_eos"} <= set(doc["systems"])
    for key, entry in doc["systems"].items():
        assert entry["drained"], f"{key} did not drain its input"
        assert entry["events_in"] == RECORDS, key
        assert entry["events_out"] == entry["expected_out"] == unique, key
        for run in entry["run_details"]:
            assert run["distinct_out"] == run["events_out"], f"{key} wrote duplicates"
    assert doc["all_correct"]
    assert not doc["errors"], doc["errors"]


def test_state_experiments_ran(report: tuple[dict, Path]) -> None:
    state = report[0]["state"]
    assert state["restore"]["keys_restored"] == state["restore"]["keys_written"] == RESTORE_KEYS
    assert {r["guarantee"] for r in state["restarts"]} == {"at_least_once", "exactly_once"}
    assert all(r["changelog_records"] > 0 for r in state["restarts"])
    assert state["size_by_horizon"]
