"""Records nobody planned for, on every topic the workers read, on the real broker.

Each story sends valid traffic around a poison record, waits until the group has
committed past everything, and checks with an independent read_committed
consumer: the poison record is in the DLQ (with its original bytes, or as a
reference when it is too large to copy), its headers say where it came from and
why, every valid event was charged once, and the worker is still running: no
crash, no crash loop, no silent loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from lab.checker import check
from common.readback import read_topic
from faust_guarantees.dead_letters import DeadLetter
from streams_app.admin import send_records
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.integration

GUARANTEES = ["at_least_once", "exactly_once"]

#: Under the broker's default message.max.bytes (1,048,588) and over the producer's
#: default max_request_size (1,000,000 in Faust) once the DLQ headers are added.
HUGE = 1_040_000


def _traffic(pipeline, count, seed):
    return generate(count, duplicate_rate=0.2, seed=seed, id_prefix=f"{pipeline.config.run_id}-{seed}")


def _send(pipeline, topic: str, records) -> None:
    asyncio.run(send_records(pipeline.config.bootstrap, pipeline.config.topic(topic), records))


def _dead_letters(pipeline) -> list[DeadLetter]:
    records = asyncio.run(read_topic(pipeline.config.bootstrap, pipeline.config.topic("dlq")))
    return [DeadLetter.from_record(r) for r in records]


def _assert_ready(worker) -> None:
    """/health says ready (no agent crashed, no partition stuck) within a sample or two."""
    answers = []
    wait_for(lambda: answers.append(worker.get_json("/health")) or answers[-1][0] == 200, 15,
             lambda: f"expected /health 200, got {answers[-1]}")
    assert worker.get_json("/health/live") == (200, {"status": "live"})


def _assert_every_valid_event_charged_once(pipeline, *traffics) -> None:
    for traffic in traffics:
        counts = asyncio.run(check(pipeline.config, traffic))
        assert counts.charged_unique == counts.unique_events == len(traffic.unique_events) > 0
        assert counts.duplicate_charges == 0 and counts.lost == 0
        assert counts.output_duplicates == 0 and counts.output_missing == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_raw_record_too_large_to_dead_letter_is_dead_lettered_as_a_reference(pipeline_factory, guarantee):
    """A ~1 MB raw value: over MAX_RECORD_BYTES (so a dead letter), and too large to
    copy into the DLQ with its headers. Before: the DLQ send raised, the ingest agent
    crashed, and the pipeline stopped (exactly_once) or lost the record
    (at_least_once). Now: a reference dead letter (place, size, digest, first bytes),
    and the payments sent after it are all applied."""
    pipeline = pipeline_factory(guarantee)
    worker = pipeline.worker()
    before, after = _traffic(pipeline, 60, 1), _traffic(pipeline, 40, 2)
    huge = b'{"event_id": "' + b"x" * HUGE + b'"}'
    pipeline.send(before)
    _send(pipeline, "raw", [(b"huge-key", huge, [("trace-id", b"t-123")])])
    pipeline.send(after)
    pipeline.drain()

    _assert_every_valid_event_charged_once(pipeline, before, after)
    [letter] = [d for d in _dead_letters(pipeline) if d.reference]
    assert letter.code == "oversize" and letter.stage == "ingest"
    assert letter.original_topic == pipeline.config.topic("raw")
    assert letter.reference["size"] == len(huge)
    assert letter.reference["sha256"] == hashlib.sha256(huge).hexdigest()
    assert letter.reference["head"].startswith('{"event_id": "xxx')
    assert letter.headers.get("trace-id") == b"t-123", "the record's own headers are kept"
    assert worker.running, worker.log_tail(40)
    assert worker.stats()["dead_lettered"] == 1
    assert "Crashed" not in worker.log_path.read_text()
    _assert_ready(worker)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_tombstones_and_undecodable_records_on_every_topic_are_dead_lettered_with_their_bytes(
    pipeline_factory, guarantee,
):
    """A null value on raw, and on each internal topic a tombstone and bytes that are
    not a payment (what a record-format change during a rolling deploy sends). Stock
    Faust's conductor failed to decode them and dropped them (acked, no trace); a
    null reached the DLQ as the four bytes 'null'. Now each is in the DLQ with its
    original bytes (a null stays null) and headers naming its topic, partition,
    offset, consumer group and the error, and every valid payment is charged once."""
    pipeline = pipeline_factory(guarantee)
    worker = pipeline.worker()
    traffic = _traffic(pipeline, 80, 3)
    pipeline.send(traffic)
    poison = {"raw": [(b"k-raw", None, [])]}
    for topic in ("events", "unique", "applied"):
        poison[topic] = [
            (json.dumps(f"{topic}-tomb").encode(), None, []),
            (b"\x00\xffnot-json", b'{"format": 2, "payment": "\xff"}', [("v", b"2")]),
            (json.dumps(f"{topic}-obj").encode(), b'{"event_id": "e-1"}', []),
        ]
    for topic, records in poison.items():
        _send(pipeline, topic, records)
    pipeline.drain()

    _assert_every_valid_event_charged_once(pipeline, traffic)
    letters = _dead_letters(pipeline)
    for topic, records in poison.items():
        got = sorted(((d.key, d.value) for d in letters if d.original_topic == pipeline.config.topic(topic)),
                     key=repr)
        assert got == sorted(((k, v) for k, v, _ in records), key=repr), topic
    for letter in letters:
        assert letter.code and letter.reason and letter.stage
        assert letter.original_partition is not None and letter.original_offset is not None
        assert letter.original_timestamp is not None
        assert letter.consumer_group == pipeline.config.app_id
        assert letter.exception_class
    versioned = [d for d in letters if d.headers.get("v") == b"2"]
    assert len(versioned) == 3, "the record's own headers are kept"
    assert worker.running, worker.log_tail(40)
    stats = worker.stats()
    assert stats["dead_lettered"] == sum(len(r) for r in poison.values())
    _assert_ready(worker)


def test_a_payment_outside_its_account_s_partition_is_dead_lettered_not_a_second_balance(pipeline_factory):
    """A valid payment written to {prefix}.unique by something other than the dedup stage,
    keyed so that it lands outside its account's partition. Before: the apply stage applied
    it to a second balance of the account (read and written in that partition's table and
    changelog; its applied record and charge carried that balance). Now it is
    dead-lettered (code wrong_partition), and every balance is exact."""
    from streams_app.models import json_key
    from streams_app.topics import default_partition

    pipeline = pipeline_factory("exactly_once")
    worker = pipeline.worker()
    traffic = _traffic(pipeline, 60, 4)
    pipeline.send(traffic)
    account = next(iter(traffic.unique_events.values()))["account"]
    partitions = pipeline.config.partitions
    owner = default_partition(json_key(account), partitions)
    other = next(f"other-{n}".encode() for n in range(1000)
                 if default_partition(f"other-{n}".encode(), partitions) != owner)
    stray = json.dumps({"event_id": f"{pipeline.config.run_id}-stray", "account": account, "amount": 7,
                        "currency": "EUR", "created_at": "2026-12-01T10:00:00+00:00"}).encode()
    _send(pipeline, "unique", [(other, stray)])
    pipeline.drain()

    counts = asyncio.run(check(pipeline.config, traffic))
    assert counts.balance_mismatches == 0, counts.mismatch_examples
    assert counts.charged_unique == len(traffic.unique_events) and counts.duplicate_charges == 0
    [letter] = [d for d in _dead_letters(pipeline) if d.original_topic == pipeline.config.topic("unique")]
    assert (letter.value, letter.code, letter.stage) == (stray, "wrong_partition", "apply")
    assert f"belongs to partition {owner}" in letter.reason
    applied = asyncio.run(read_topic(pipeline.config.bootstrap, pipeline.config.topic("applied")))
    assert not [r for r in applied if b"-stray" in r.value]
    assert worker.running, worker.log_tail(40)


def test_a_dead_letter_replayed_twice_is_processed_once(pipeline_factory):
    """A valid payment an earlier version dead-lettered (a stage's bug, since fixed) is
    replayed with `faust -A streams_app dlq replay` into the topic it came from, and
    charged; the same replay run again sends nothing (its marker, written in the same
    transaction as the replayed record, says it is done)."""
    import subprocess
    import sys

    from lab.checker import charges_by_event
    from lab.workers import REPO
    from faust_guarantees.dead_letters import letter_for
    from streams_app.exceptions import RejectedRecord

    pipeline = pipeline_factory("exactly_once")
    worker = pipeline.worker()
    payment = {"event_id": f"{pipeline.config.run_id}-replayed", "account": "acct-r", "amount": 123,
               "currency": "EUR", "created_at": "2026-12-01T10:00:00+00:00"}
    value = json.dumps(payment).encode()

    class Original:  # the record as the earlier version read it
        topic, partition, offset, timestamp, timestamp_type = pipeline.config.topic("raw"), 0, 0, 1.0, 0
        key, headers = b"k-r", [("trace-id", b"t-9")]

    Original.value = value
    old = letter_for(Original, stage="ingest", code="processing_error", reason="KeyError: 'x' (a bug since fixed)",
                     error=RejectedRecord("processing_error", "bug"), group=pipeline.config.app_id)
    _send(pipeline, "dlq", [(old.key, old.value, old.headers)])

    def replay() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "faust", "-A", "streams_app", "dlq", "replay", "--code", "processing_error"],
            cwd=REPO, env=pipeline.config.env("cli", 1), capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert "replayed 1; already replayed before: 0" in replay()
    pipeline.drain()
    assert "replayed 0; already replayed before: 1" in replay()
    pipeline.drain()
    assert charges_by_event(pipeline.config.sink_db)[payment["event_id"]] == 1
    [letter] = _dead_letters(pipeline)
    raw = asyncio.run(read_topic(pipeline.config.bootstrap, pipeline.config.topic("raw")))
    assert [(r.key, r.value, dict(r.headers)) for r in raw] == [(b"k-r", value, {
        "trace-id": b"t-9", "x-dlq-replayed-from": f"{letter.topic}[{letter.partition}]@{letter.offset}".encode(),
    })]
    assert worker.running


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_charge_the_database_refuses_is_dead_lettered_alone(pipeline_factory, tmp_path, guarantee):
    """The sink charges a batch in one database transaction. When the database refuses
    one row (a trigger here; a constraint or a data error in life), the batch is charged
    one by one: only that record is dead-lettered, with the database's reason; every
    other event is charged once and the stage goes on."""
    import sqlite3

    from streams_app.ledger import Ledger

    db = tmp_path / "refusing.db"
    pipeline = pipeline_factory(guarantee, sink="idempotent", sink_db=f"sqlite:///{db}")
    traffic = _traffic(pipeline, 80, 4)
    refused = list(traffic.unique_events)[7]

    async def make_schema() -> None:
        ledger = Ledger(f"sqlite:///{db}")
        await ledger.stats()
        await ledger.close()

    asyncio.run(make_schema())
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON charges WHEN NEW.event_id = '{refused}' "
                     "BEGIN SELECT RAISE(ABORT, 'account frozen'); END")
    worker = pipeline.worker()
    pipeline.send(traffic)
    pipeline.drain()

    counts = asyncio.run(check(pipeline.config, traffic))
    assert counts.lost == 1 and counts.charged_unique == counts.unique_events - 1
    assert counts.duplicate_charges == 0
    [letter] = [d for d in _dead_letters(pipeline) if d.original_topic == pipeline.config.topic("applied")]
    assert letter.exception_class.endswith("ChargeRefused") and "account frozen" in letter.reason
    assert json.loads(letter.value)["event_id"] == refused
    assert worker.running, worker.log_tail(40)
    _assert_ready(worker)
