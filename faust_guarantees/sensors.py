"""Sensors told once per batch of records, and a batch acked under one lock.

Faust tells every sensor of an app four times per record: when a stream takes it
(``on_message_in``, ``on_stream_event_in``) and when it is acked
(``on_stream_event_out``, ``on_message_out``), each through the app's
``SensorDelegate``. With two sensors (Faust's monitor and one of the app's) that was
13 % of a batched stage's time, and ``Stream.ack``'s three ``ack_lock`` sections per
record another 3 % (py-spy, ``bench one faust_alo``, 80,000 records, session 15).

The kit's batches take and ack their records together (:meth:`Processing.batches`,
:meth:`Processing.processing_batch`) and tell each sensor through :func:`batch_in` and
:func:`batch_out`: a sensor with the hooks of :class:`BatchSensor` once per batch, any
other sensor per record, as Faust would. :func:`ack_all` is ``Stream.ack`` for a batch:
the same bookkeeping (``Message.ack``, then the consumer's) with the lock taken once.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from faust.types import EventT, Message, StreamT

try:  # faust-streaming 0.15.3's lock around every ack; older builds have none
    from faust.types.tuples import ack_lock as _ack_lock
except ImportError:  # pragma: no cover
    _ack_lock = nullcontext()


class BatchSensor:
    """The batch hooks a Faust sensor may add (mix in before ``Sensor``/``Monitor``).

    The defaults call the sensor's per-record hooks, in Faust's arguments; override them
    to count a batch at once.
    """

    def on_batch_in(self, stream: StreamT, messages: Sequence[Message], events: Sequence[EventT]) -> None:
        """``stream`` took ``events``; ``messages`` are those of them seen for the first time
        (Faust's ``on_message_in``: a record of an acking topic, once)."""
        for message in messages:
            self.on_message_in(message.tp, message.offset, message)  # type: ignore[attr-defined]
        for event in events:
            message = event.message
            self.on_stream_event_in(message.tp, message.offset, stream, event)  # type: ignore[attr-defined]

    def on_batch_out(self, stream: StreamT, events: Sequence[EventT], acked: Sequence[Message]) -> None:
        """``stream`` acked ``events``; ``acked`` are the records whose last ack that was
        (Faust's ``on_message_out``)."""
        for event in events:
            message = event.message
            self.on_stream_event_out(message.tp, message.offset, stream, event)  # type: ignore[attr-defined]
        for message in acked:
            self.on_message_out(message.tp, message.offset, message)  # type: ignore[attr-defined]


def batch_in(app: Any, stream: StreamT, messages: Sequence[Message], events: Sequence[EventT]) -> None:
    """Tell every sensor of ``app`` that ``stream`` took ``events`` (see :class:`BatchSensor`)."""
    if events:
        _tell(app, "on_batch_in", stream, messages, events)


def batch_out(app: Any, stream: StreamT, events: Sequence[EventT], acked: Sequence[Message]) -> None:
    """Tell every sensor of ``app`` that ``stream`` acked ``events`` (see :class:`BatchSensor`)."""
    if events:
        _tell(app, "on_batch_out", stream, events, acked)


def _tell(app: Any, hook: str, *args: Any) -> None:
    """Call ``hook`` of each sensor, or :class:`BatchSensor`'s per-record default where it has none."""
    default = getattr(BatchSensor, hook)
    for sensor in app.sensors:
        own = getattr(sensor, hook, None)
        if own is not None:
            own(*args)
        else:
            default(sensor, *args)


def ack_all(stream: StreamT, events: Sequence[EventT]) -> None:
    """``await stream.ack(event)`` for each of ``events``, the sensors told once."""
    consumer = stream.app.consumer
    acked: list[Message] = []
    with _ack_lock:  # re-entrant: Message.ack and the consumer's ack take it again
        for event in events:
            message = event.message
            if message.ack(consumer):
                acked.append(message)
    batch_out(stream.app, stream, events, acked)


__all__ = ["BatchSensor", "ack_all", "batch_in", "batch_out"]
