"""The semantics lab's claims, asserted on the quick matrix against the real broker.

Each test runs one cell of ``lab.matrix.QUICK``: a worker subprocess, a seeded
fault (SIGKILL at a named crash point, random SIGKILLs, a rebalance, a proxy
that loses produce answers), a drain, and independent counts. Where the source
text predicts "> 0", the crash point makes it certain, not likely.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.runner import API_FAULTY_CHARGES, ExperimentResult, run_experiment
from lab.scenarios import FAULTS

pytestmark = pytest.mark.integration

EVENTS = 300
KILLS = 2


def experiment(kafka_bootstrap: str, tmp_path: Path, guarantee: str, sink: str, fault: str,
               **kwargs) -> ExperimentResult:
    result = run_experiment(guarantee, sink, fault, events=EVENTS, kills=KILLS, seed=7,
                            bootstrap=kafka_bootstrap, workdir=tmp_path, **kwargs)
    assert result.drained, f"{guarantee}/{sink}/{fault} did not drain: {result.notes}"
    if fault not in {"none", "producer-retry"} and not FAULTS[fault].api_only:
        assert result.injected.kills >= 1, "expected the fault to kill a worker"
    return result


def test_at_least_once_naive_sink_charges_twice_after_a_crash_after_the_effect(kafka_bootstrap, tmp_path):
    r = experiment(kafka_bootstrap, tmp_path, "at_least_once", "naive", "crash-after-effect")
    assert r.counts["duplicate_charges"] > 0
    assert r.counts["lost"] == 0


@pytest.mark.parametrize("fault", ["crash-after-effect", "random-kills"])
def test_at_least_once_idempotent_sink_absorbs_every_redelivery(kafka_bootstrap, tmp_path, fault):
    r = experiment(kafka_bootstrap, tmp_path, "at_least_once", "idempotent", fault)
    assert r.counts["duplicate_charges"] == 0
    assert r.counts["lost"] == 0
    assert r.counts["charged_unique"] == r.counts["unique_events"]


def test_committing_before_processing_loses_messages_and_never_repeats_them(kafka_bootstrap, tmp_path):
    r = experiment(kafka_bootstrap, tmp_path, "at_most_once", "naive", "crash-before-commit")
    assert r.counts["lost"] > 0
    assert r.counts["duplicate_charges"] == 0


@pytest.mark.parametrize("fault", ["random-kills", "crash-mid-transaction"])
def test_exactly_once_kafka_output_is_exact_after_sigkills(kafka_bootstrap, tmp_path, fault):
    r = experiment(kafka_bootstrap, tmp_path, "exactly_once", "idempotent", fault)
    assert r.counts["output_duplicates"] == 0
    assert r.counts["output_missing"] == 0
    assert r.counts["open_transactions"] == 0
    assert r.counts["balance_mismatches"] == 0, r.counts["mismatch_examples"]
    assert r.counts["duplicate_charges"] == 0 and r.counts["lost"] == 0


def test_exactly_once_cannot_cover_an_external_effect_without_a_key(kafka_bootstrap, tmp_path):
    r = experiment(kafka_bootstrap, tmp_path, "exactly_once", "naive", "crash-after-effect")
    assert r.counts["duplicate_charges"] > 0
    assert r.counts["output_duplicates"] == 0  # Kafka's own output stays exact


def test_offsets_stored_with_the_effect_make_the_kafka_commit_irrelevant(kafka_bootstrap, tmp_path):
    """The same crash that makes the naive sink charge twice: with the record's offset
    stored in the charge row, the redelivered record is refused by the database (and
    exactly_once upstream writes no second record of an event). Seed 7 is the run
    that lost 3 events when the database kept one position per partition and the
    restart sought there (a record Faust delivered late was jumped over)."""
    r = experiment(kafka_bootstrap, tmp_path, "exactly_once", "transactional", "crash-after-effect")
    assert r.counts["duplicate_charges"] == 0
    assert r.counts["lost"] == 0
    assert r.counts["charged_unique"] == r.counts["unique_events"]
    # The crash came after the database commit and before the Kafka commit: the
    # restarted sink got that record again, and the database, not Kafka, refused it.
    log = (tmp_path / r.run_id / "w1.log").read_text(errors="replace")
    refused = re.findall(r"sink: \S+\.applied\[\d+\]@\d+ was charged before; the database refused it again", log)
    assert refused, "expected a redelivered record the database had already charged"


def test_without_an_idempotency_key_every_lost_answer_is_a_second_charge(kafka_bootstrap, tmp_path):
    """The API commits a charge and drops the connection, for its first charges: the
    client cannot know, retries, and without a key each retry is a new charge."""
    r = experiment(kafka_bootstrap, tmp_path, "at_least_once", "api-naive", "api-drop-after-commit")
    assert r.counts["duplicate_charges"] == API_FAULTY_CHARGES  # one extra charge per lost answer
    assert r.counts["lost"] == 0 and r.injected.retries >= 1


def test_an_idempotency_key_makes_retries_after_lost_answers_harmless(kafka_bootstrap, tmp_path):
    r = experiment(kafka_bootstrap, tmp_path, "at_least_once", "api-idempotent", "api-drop-after-commit")
    assert r.injected.retries >= 1, "expected the client to retry after the dropped answers"
    assert r.counts["duplicate_charges"] == 0 and r.counts["lost"] == 0
    assert r.counts["charged_unique"] == r.counts["unique_events"]


@pytest.mark.parametrize("sink,duplicates_expected", [("api-naive", True), ("api-idempotent", False)])
def test_exactly_once_and_a_slow_api_charge_twice_unless_the_sink_sends_a_key(
    kafka_bootstrap, tmp_path, sink, duplicates_expected
):
    r = experiment(kafka_bootstrap, tmp_path, "exactly_once", sink, "api-timeout")
    assert r.injected.retries >= 1, "expected the client to time out and retry"
    assert (r.counts["duplicate_charges"] > 0) is duplicates_expected
    assert r.counts["lost"] == 0 and r.counts["output_duplicates"] == 0


def test_an_idempotency_key_absorbs_a_redelivery_to_the_api_after_a_crash(kafka_bootstrap, tmp_path):
    r = experiment(kafka_bootstrap, tmp_path, "exactly_once", "api-idempotent", "crash-after-effect")
    assert r.counts["duplicate_charges"] == 0 and r.counts["lost"] == 0
    assert r.counts["charged_unique"] == r.counts["unique_events"]


@pytest.mark.parametrize("idempotence,duplicates_expected", [(False, True), (True, False)])
def test_producer_retry_duplicates_the_log_unless_the_producer_is_idempotent(
    kafka_bootstrap, tmp_path, idempotence, duplicates_expected
):
    r = experiment(kafka_bootstrap, tmp_path, "at_least_once", "idempotent", "producer-retry",
                   producer_idempotence=idempotence)
    assert r.injected.retries > 0, "expected the proxy to drop produce answers"
    assert (r.counts["log_duplicates"] > 0) is duplicates_expected
    assert r.counts["duplicate_charges"] == 0 and r.counts["lost"] == 0


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_rebalance_with_the_idempotent_sink_neither_duplicates_nor_loses(kafka_bootstrap, tmp_path, guarantee):
    r = experiment(kafka_bootstrap, tmp_path, guarantee, "idempotent", "rebalance")
    assert r.injected.rebalances >= 1
    assert r.counts["duplicate_charges"] == 0
    assert r.counts["lost"] == 0


def test_exactly_once_is_exact_when_the_leading_broker_is_killed(cluster, tmp_path):
    """The lab's broker-kill on the 3-broker cluster: the broker leading a partition of
    every pipeline topic is SIGKILLed while traffic flows and restarted 20 s later. New
    leaders come from the in-sync replicas (replication 3, min.insync 2, acks=all)."""
    r = run_experiment("exactly_once", "idempotent", "broker-kill", events=EVENTS, seed=7,
                       bootstrap=cluster.bootstrap, workdir=tmp_path)
    assert r.drained, r.notes
    assert r.injected.kills == 1 and r.injected.restarts == 1
    assert r.as_predicted, r.as_json()
    assert r.counts["charged_unique"] == r.counts["unique_events"] > 0
