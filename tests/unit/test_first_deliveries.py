"""The kit's first_deliveries (faust_guarantees.processing): which records a stage processes.

Faust delivers some records twice (after a seek back to the committed offset, and
the last record read when it comes again); under exactly_once both copies would
commit. These tests give the generator the consumer state those deliveries meet.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from faust_guarantees.memory import ProcessedMemory
from faust_guarantees.processing import Processing
from faust_guarantees.state import Guarantees

P = TP("payments.unique", 3)


class _Stream:
    def __init__(self, offsets: list[int], committed: dict[TP, int]) -> None:
        self.offsets = offsets
        self.acked: list[int] = []
        self.app = SimpleNamespace(consumer=SimpleNamespace(_committed_offset=committed))
        self.channel = None  # no decode to make tolerant (faust_guarantees.processing.Undecodable)

    async def events(self):
        for offset in self.offsets:
            yield SimpleNamespace(value=b"", message=SimpleNamespace(tp=P, offset=offset, topic=P.topic,
                                                                     partition=P.partition))

    async def ack(self, event) -> None:
        self.acked.append(event.message.offset)


#: The discipline under test, with its app's memory (set by _memory).
processing: Processing


def _memory(monkeypatch, processed: dict | None = None) -> ProcessedMemory:
    """A discipline whose memory holds ``processed`` offsets per partition."""
    global processing
    processing = Processing(Guarantees(SimpleNamespace()), dead_letters=None)
    for tp, offsets in (processed or {}).items():
        processing.memory.remember_many(tp, offsets)
    return processing.memory


def _delivered(stream: _Stream) -> list[int]:
    async def collect() -> list[int]:
        return [event.message.offset async for event in processing.first_deliveries(stream)]

    return asyncio.run(collect())


def test_new_records_are_delivered(monkeypatch):
    _memory(monkeypatch)
    stream = _Stream([10, 11, 12], {P: 10})
    assert _delivered(stream) == [10, 11, 12]
    assert stream.acked == []


def test_a_record_processed_and_not_yet_committed_is_skipped_and_acked(monkeypatch):
    _memory(monkeypatch, {P: {11}})
    stream = _Stream([10, 11, 12], {P: 10})
    assert _delivered(stream) == [10, 12]
    assert stream.acked == [11]


def test_a_record_below_the_committed_offset_is_never_processed_again(monkeypatch):
    """Its memory is gone (forget_below dropped it once committed), the offset says it is done."""
    _memory(monkeypatch)
    stream = _Stream([145, 147], {P: 146})
    assert _delivered(stream) == [147]
    assert stream.acked == [145]


def test_without_a_committed_offset_only_the_memory_decides(monkeypatch):
    _memory(monkeypatch, {P: {0}})
    stream = _Stream([0, 1], {})
    assert _delivered(stream) == [1]


def test_a_committed_offset_that_goes_back_does_not_bring_records_back(monkeypatch):
    """forget_below pruned the memory at 146; then Faust's perform_seek re-read the
    committed offset from the broker while a commit was in flight and set it back to
    140. Records 140-145 were processed (their memory is gone): they stay skipped."""
    memory = _memory(monkeypatch, {P: {140, 141, 146}})
    memory.forget_below(P, 146)
    stream = _Stream([140, 145, 146, 147], {P: 140})
    assert _delivered(stream) == [147]
    assert stream.acked == [140, 145, 146]
