"""Dead letters: headers that say where from and why, references, and a send that never gives up."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)
from faust.exceptions import ProducerSendError

from faust_guarantees.dead_letters import (
    DeadLetter,
    Letter,
    letter_for,
    send_dead_letter,
    too_large,
)
from streams_app.exceptions import InvalidPayment


@dataclass
class Record:
    """A consumed record, as Faust's Message and aiokafka's ConsumerRecord both have it."""

    value: bytes | None = b"{oops"
    key: bytes | None = b"k"
    headers: list = field(default_factory=lambda: [("trace-id", b"t-1")])
    topic: str = "payments.raw"
    partition: int = 3
    offset: int = 1045
    timestamp: float = 1_764_000_000.123
    timestamp_type: int = 0


def letter(record: Record, code: str = "not_json") -> Letter:
    return letter_for(record, stage="ingest", code=code, reason="value is not UTF-8 JSON",
                      error=InvalidPayment(code, "value is not UTF-8 JSON"), group="payments-pipeline")


def read_back(sent: Letter, dlq_offset: int = 7) -> DeadLetter:
    return DeadLetter.from_record(Record(value=sent.value, key=sent.key, headers=sent.headers,
                                         topic="payments.dlq", partition=0, offset=dlq_offset))


class Broker:
    """Takes sends; fails the first ones with the given errors, or any over ``limit`` bytes."""

    def __init__(self, *errors: Exception, limit: int | None = None) -> None:
        self.errors = list(errors)
        self.limit = limit
        self.sent: list[Letter] = []

    async def __call__(self, key, value, headers) -> None:
        if self.errors:
            raise self.errors.pop(0)
        candidate = Letter(key, value, headers)
        if self.limit is not None and candidate.size() > self.limit:
            raise RecordTooLargeError()
        self.sent.append(candidate)


def send(record: Record, broker: Broker, max_bytes: int = 1_000_000) -> Letter:
    return asyncio.run(send_dead_letter(letter(record), record, broker, max_bytes=max_bytes))


def test_a_dead_letter_keeps_the_record_and_says_where_from_and_why():
    record = Record()
    got = read_back(send(record, broker := Broker()))
    assert len(broker.sent) == 1
    assert (got.key, got.value) == (b"k", b"{oops")
    assert got.headers == {"trace-id": b"t-1"}
    assert got.source == ("payments.raw", 3, 1045)
    assert got.original_timestamp == 1_764_000_000_123
    assert (got.stage, got.code, got.consumer_group) == ("ingest", "not_json", "payments-pipeline")
    assert got.exception_class == "streams_app.exceptions.InvalidPayment"
    assert got.reason == "value is not UTF-8 JSON" and got.reference is None


def test_a_null_value_stays_null():
    assert read_back(send(Record(value=None), Broker())).value is None


def test_a_record_too_large_to_copy_becomes_a_reference():
    huge = b"x" * 2_000_000
    got = read_back(send(Record(value=huge, key=b"K" * 5000), Broker()))
    assert got.reference == {
        "topic": "payments.raw", "partition": 3, "offset": 1045, "size": len(huge),
        "sha256": hashlib.sha256(huge).hexdigest(), "head": "x" * 256,
        "key_size": 5000, "key_sha256": hashlib.sha256(b"K" * 5000).hexdigest(),
    }
    assert got.key is None and got.code == "not_json" and got.headers == {"trace-id": b"t-1"}


def test_a_size_the_broker_refuses_is_sent_again_as_a_reference():
    """The DLQ topic's own max.message.bytes can be smaller than the producer's limit."""
    broker = Broker(limit=20_000)
    got = read_back(send(Record(value=b"y" * 50_000), broker))
    assert got.reference is not None and got.reference["size"] == 50_000
    assert len(broker.sent) == 1


@pytest.mark.parametrize("error", [MessageSizeTooLargeError(), RecordTooLargeError()])
def test_faust_wrapped_size_errors_are_recognised(error):
    try:
        try:
            raise error
        except Exception as exc:
            raise ProducerSendError(f"Error while sending: {exc!r}") from exc
    except ProducerSendError as wrapped:
        assert too_large(wrapped)
    assert not too_large(ProducerSendError("No transaction producer found"))


def test_a_failing_send_is_retried_until_it_goes_through(monkeypatch):
    """An unreachable broker is retried (bounded backoff), never raised to the stage."""
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    broker = Broker(*[KafkaConnectionError()] * 12)
    got = read_back(send(Record(), broker))
    assert got.code == "not_json" and len(broker.sent) == 1
    assert len(sleeps) == 12 and max(sleeps) <= 5.0 + 1.0  # capped, with up to 1 s of jitter
