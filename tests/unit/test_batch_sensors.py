"""faust_guarantees/sensors.py: a batch's sensor calls and acks, the same figures as Faust's
per-record ones."""

from __future__ import annotations

from types import SimpleNamespace

from faust.sensors import Sensor
from faust.sensors.prometheus import FaustMetrics
from faust.types import TP
from faust.types.tuples import ConsumerMessage, Message
from prometheus_client import CollectorRegistry

from faust_guarantees.sensors import ack_all, batch_in, batch_out
from streams_app.metrics import TALLY, LeanPrometheusMonitor


class _Agent:
    def __str__(self) -> str:
        return "<agent dedup>"


class _Stream:
    shortlabel = "Stream: payments.raw"
    task_owner = _Agent()

    def __str__(self) -> str:
        return "<stream payments.raw>"


def _records() -> list[SimpleNamespace]:
    tps = [TP("payments.raw", 0), TP("payments.raw", 1), TP("payments.events", 0)]
    messages = [Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)
                for offset in range(5) for tp in tps]
    return [SimpleNamespace(message=message) for message in messages]


def _monitor() -> tuple[LeanPrometheusMonitor, CollectorRegistry]:
    registry = CollectorRegistry()
    return LeanPrometheusMonitor(metrics=FaustMetrics.create(registry, "t")), registry


def _figures(monitor: LeanPrometheusMonitor, registry: CollectorRegistry) -> dict:
    TALLY.flush()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for metric in registry.collect() for s in metric.samples if not s.name.endswith("_created")}
    fields = {name: getattr(monitor, name) for name in (
        "messages_received_total", "messages_active", "messages_received_by_topic", "tp_read_offsets",
        "events_total", "events_active", "events_by_stream", "events_by_task")}
    return {"samples": samples, **{k: dict(v) if isinstance(v, dict) else v for k, v in fields.items()}}


def test_the_monitor_counts_a_batch_as_its_per_record_hooks_do():
    stream = _Stream()
    events = _records()
    per_record, registry_1 = _monitor()
    for event in events:  # what Faust's stream iterator and Stream.ack call
        m = event.message
        per_record.on_message_in(m.tp, m.offset, m)
        per_record.on_stream_event_in(m.tp, m.offset, stream, event)
    for event in events[:7]:
        m = event.message
        per_record.on_stream_event_out(m.tp, m.offset, stream, event)
        per_record.on_message_out(m.tp, m.offset, m)

    batched, registry_2 = _monitor()
    events_2 = _records()
    batched.on_batch_in(stream, [e.message for e in events_2], events_2)
    batched.on_batch_out(stream, events_2[:7], [e.message for e in events_2[:7]])

    assert _figures(per_record, registry_1) == _figures(batched, registry_2)
    assert batched.messages_received_total == 15 and batched.messages_active == 8
    assert batched.tp_read_offsets[TP("payments.raw", 1)] == 4


class _Recorder(Sensor):
    """A sensor without the batch hooks: told per record, as by Faust."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def on_message_in(self, tp, offset, message):
        self.calls.append(("message_in", offset))

    def on_stream_event_in(self, tp, offset, stream, event):
        self.calls.append(("event_in", offset))

    def on_stream_event_out(self, tp, offset, stream, event, state=None):
        self.calls.append(("event_out", offset))

    def on_message_out(self, tp, offset, message):
        self.calls.append(("message_out", offset))


class _Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message) -> bool:  # as Faust's Consumer.ack, for the bookkeeping tested here
        message.acked = True
        self.acked.append(message.offset)
        return True


def test_a_batch_is_acked_as_stream_ack_acks_each_record_and_plain_sensors_are_told_per_record():
    consumer, recorder = _Consumer(), _Recorder()
    stream = SimpleNamespace(app=SimpleNamespace(consumer=consumer, sensors=[recorder]))
    tp = TP("t", 0)
    messages = [ConsumerMessage("t", 0, offset, 0.0, 0, None, b"k", b"v", None, tp=tp) for offset in range(3)]
    for message in messages:
        message.incref(1)  # as the conductor does for the one stream reading it
    messages[1].incref(1)  # a second stream reads it too: not its last ack
    events = [SimpleNamespace(message=m) for m in messages]

    batch_in(stream.app, stream, messages[:2], events)
    ack_all(stream, events)

    assert consumer.acked == [0, 2], "the consumer is told of a record's last ack only"
    assert [m.acked for m in messages] == [True, False, True]
    assert recorder.calls == [("message_in", 0), ("message_in", 1),
                              ("event_in", 0), ("event_in", 1), ("event_in", 2),
                              ("event_out", 0), ("event_out", 1), ("event_out", 2),
                              ("message_out", 0), ("message_out", 2)]
    ack_all(stream, events[1:2])
    assert consumer.acked == [0, 2, 1] and messages[1].acked
    batch_out(stream.app, stream, [], [])  # nothing: no call
    assert len(recorder.calls) == 12
