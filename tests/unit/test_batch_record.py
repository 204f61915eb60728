"""Batch.record, the scope of one record's work in a batch: what it sets aside for the DLQ
and what it lets through to the stage."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.streams import current_event

from faust_guarantees.processing import Batch, RejectedRecord, Unavailable


class _Event:
    def __init__(self, offset: int) -> None:
        self.message = SimpleNamespace(topic="t", partition=0, offset=offset)


def _batch(fenced: bool = False) -> tuple[Batch, list[_Event]]:
    events = [_Event(n) for n in range(3)]
    return Batch(SimpleNamespace(_fenced=lambda _exc: fenced), events, lambda _m: "stage"), events


def test_a_refused_or_failing_record_is_set_aside_and_the_batch_goes_on():
    batch, (a, b, c) = _batch()
    with batch.record(a):
        assert current_event() is a  # the record's work runs with its event current
        raise RejectedRecord("not_json", "value is not JSON")
    with batch.record(b):
        raise KeyError("boom")
    with batch.record(c):
        pass
    assert [(event, code) for event, code, _, _ in batch.failed] == [(a, "not_json"), (b, "processing_error")]
    assert not batch.ok(a) and not batch.ok(b) and batch.ok(c)
    assert "KeyError" in batch.failed[1][2]


@pytest.mark.parametrize("error", [Unavailable("db down"), asyncio.CancelledError(), KeyboardInterrupt()],
                         ids=["unavailable", "cancelled", "interrupt"])
def test_an_unavailable_dependency_or_a_cancellation_goes_up_with_nothing_set_aside(error):
    batch, (a, _, _) = _batch()
    with pytest.raises(type(error)), batch.record(a):
        raise error
    assert batch.failed == [] and batch.ok(a)


def test_a_fenced_worker_s_error_goes_up():
    batch, (a, _, _) = _batch(fenced=True)
    with pytest.raises(RuntimeError), batch.record(a):
        raise RuntimeError("ProducerFenced")
    assert batch.failed == []
