"""A record its stream's schema cannot decode: the discipline's decode marks it
(faust_guarantees.processing.Undecodable) instead of raising, so that the discipline can
dead-letter it; stock Faust's conductor acks and drops it (see the broker test in
tests/integration/test_example_app.py)."""

from __future__ import annotations

import asyncio

import faust
import pytest
from faust.exceptions import ValueDecodeError
from faust.types import TP, Message

from faust_guarantees.processing import Undecodable, dead_letter_undecodable


class Order(faust.Record, serializer="json"):
    id: str
    amount: int


def _message(value: bytes | None, key: bytes = b"k") -> Message:
    return Message("orders", 0, 7, 0.0, 0, [], key, value, None, None, tp=TP("orders", 0))


def _iterating_channel(**types: object) -> faust.TopicT:
    app = faust.App("undecodable-unit", broker="kafka://localhost:1")
    topic = app.topic("orders", **types)
    return topic.__aiter__()  # the clone Faust's conductor delivers to


@pytest.mark.parametrize("value", [b"not json", b"{\"id\": \"o-1\"}", None, b"\xff\xfe"])
def test_a_record_the_schema_cannot_decode_becomes_an_undecodable_event(value):
    channel = _iterating_channel(value_type=Order)
    with pytest.raises(ValueDecodeError):  # stock: the conductor acks it, then drops it
        asyncio.run(channel.decode(_message(value), propagate=True))
    assert dead_letter_undecodable(channel)
    event = asyncio.run(channel.decode(_message(value), propagate=True))
    assert type(event.value) is Undecodable
    assert isinstance(event.value.error, ValueDecodeError)
    assert event.message.value == value and event.key == b"k"  # the original bytes, for the DLQ


def test_a_record_it_can_decode_is_decoded_as_before():
    channel = _iterating_channel(value_type=Order)
    assert dead_letter_undecodable(channel)
    event = asyncio.run(channel.decode(_message(b'{"id": "o-1", "amount": 5}'), propagate=True))
    assert event.value == Order(id="o-1", amount=5)


def test_installed_once_and_only_on_the_channel_faust_delivers_to():
    channel = _iterating_channel(value_type=Order)
    assert dead_letter_undecodable(channel)
    decode = channel.decode
    assert dead_letter_undecodable(channel) and channel.decode is decode
    app = faust.App("undecodable-unit-2", broker="kafka://localhost:1")
    not_iterating = app.topic("orders", value_type=Order)
    assert not dead_letter_undecodable(not_iterating)
