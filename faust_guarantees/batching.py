"""A batch's records sent as one aiokafka record batch per producer, topic and partition.

Faust hands every record to aiokafka on its own: ``Producer.send`` takes the transaction's
lock, waits for the topic's metadata, appends the record to the accumulator and creates a
future for its ack; a table write adds Faust's ProducerBuffer on top. With one output and
one changelog record per event, that was a third of the dedup stage's time (py-spy,
session 13). :class:`RecordBatches` collects a batch's records and, at :meth:`flush`,
appends them to aiokafka ``BatchBuilder``s (one call into C each) handed over with
``send_batch``: one future per record batch, shared by its records.

Routing is :func:`faust_guarantees.processing.publish`'s: a record goes to the producer of
the event current when it was added (``as_current``), under exactly_once the transactional
producer of that event's SOURCE partition, so it is in the transaction that commits the
event's offset (the source-partition-transactions fix; without that fix, as in the lab's
stock Faust, every record goes through ``publish`` one by one and Faust's own routing runs).
A table row is written to the store when added; its changelog record's ack goes to the
table's own ``_on_changelog_sent`` with the offset of the batch's last record (the
persisted offset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from faust.exceptions import ProducerSendError
from faust.stores.base import SerializedStore
from faust.stores.rocksdb import Store as RocksStore
from faust.streams import _current_event
from faust.transport.drivers.aiokafka import Producer

from .processing import as_current, current_event_kept, publish
from .state import of
from .transactions import transactional_id


class _Acked(NamedTuple):
    """What ``_on_changelog_sent`` reads of an ack: the last record's place."""

    topic_partition: Any
    offset: int


class _Done:
    def __init__(self, result: _Acked) -> None:
        self._result = result

    def result(self) -> _Acked:
        return self._result


class _Group:
    """The records of one source partition (the transaction under exactly_once), topic and
    partition."""

    __slots__ = ("batch_of", "event", "futures", "lock", "on_sent", "partition", "producer", "records", "topic")

    def __init__(self, event: Any, topic: str, partition: int,
                 on_sent: Callable[[Any, int, int], None] | None) -> None:
        self.event, self.topic, self.partition, self.on_sent = event, topic, partition, on_sent
        self.producer: Any = None
        self.lock: Any = None
        self.records: list[tuple[bytes | None, bytes | None, list[Any]]] = []
        self.futures: list[Any] = []
        #: record index -> index in futures, once flushed
        self.batch_of: list[int] = []


class Queued:
    """A record added to :class:`RecordBatches`; its :attr:`future` (the ack of its record
    batch) exists once the batches are flushed."""

    __slots__ = ("_group", "_index")

    def __init__(self, group: _Group, index: int) -> None:
        self._group, self._index = group, index

    @property
    def future(self) -> Any:
        assert self._group.batch_of, "not flushed yet"
        return self._group.futures[self._group.batch_of[self._index]]


class RecordBatches:
    """Records of one batch of events, sent together by :meth:`flush`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._groups: dict[tuple[Any, str, int], _Group] = {}
        #: (table, source topic) -> the table's changelog topic and its ack callback, once
        #: verified in this batch
        self._verified: dict[tuple[Any, str], tuple[str, Callable[[Any, int, int], None]]] = {}
        guarantees = of(app)
        self._exactly_once = guarantees.exactly_once
        #: Without the routing fix every record goes through ``publish`` (Faust's routing).
        self._routed = not self._exactly_once or guarantees.enabled("source-partition-transactions")

    def publish(self, topic: Any, *, key: bytes | None, value: bytes | None, partition: int,
                headers: Any = None) -> Queued:
        """Queue an output of the current event, to ``partition`` of ``topic``."""
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        if headers is not None and not isinstance(headers, list):
            headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        return self._add(name, partition, key, value, headers or [], None)

    def set_row(self, table: Any, key: Any, value: Any) -> None:
        """``table[key] = value`` for the current event: the store row now (the store's own
        encoding, in the event's partition), the changelog record with the batch (the same
        bytes: Faust's changelog topic encodes with the same serializers). A store that does
        not encode (``memory://``) or a table partitioned by key takes Faust's path."""
        store = table.data
        event = _event()
        encoded = event is not None and isinstance(store, SerializedStore) and self.set_encoded_rows(
            table, [(event, store._encode_key(key), store._encode_value(value))])
        if not encoded:
            table[key] = value

    def set_encoded_rows(self, table: Any, rows: list[tuple[Any, bytes, bytes]]) -> bool:
        """:meth:`set_row` for rows already encoded as the table's store encodes them (a
        table with its own fast codec), each ``(event, key, value)`` written for its event
        (in its partition, under exactly_once in its transaction) as if that event were
        current; False, doing nothing, where :meth:`set_row` would take Faust's path (the
        caller then calls it)."""
        store = table.data
        if table.use_partitioner or not isinstance(store, SerializedStore):
            return False
        with current_event_kept():
            for event, key, value in rows:
                self._set_encoded(table, store, event, key, value)
        return True

    def _set_encoded(self, table: Any, store: Any, event: Any, key: bytes, value: bytes) -> None:
        message = event.message
        verified = (table, message.topic)
        changelog = self._verified.get(verified)
        if changelog is None:  # once per table and source topic in a batch
            table._verify_source_topic_partitions(message.topic)
            changelog = self._verified[verified] = (
                table.changelog_topic.get_topic_name(),
                lambda tp, base, count: _changelog_sent(table, tp, base, count))
        if type(store) is RocksStore:
            # Store._set without its key index (an LRU cache of key -> partition for lookups
            # without a current event, which then look in every partition: 2 % of the dedup
            # stage's time) and without looking up the current event: it is ``event``.
            store._db_for_partition(message.partition).put(key, value)
        else:
            as_current(event)
            store._set(key, value)
        self._add(changelog[0], message.partition, key, value, [], changelog[1], event)

    def _add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: list[Any],
             on_sent: Callable[[Any, int, int], None] | None, event: Any = None) -> Queued:
        if event is None:
            event = _event()
        # Under exactly_once the records of one source partition share a transaction.
        source = event.message.tp if self._exactly_once and event is not None else None
        group = self._groups.get((source, topic, partition))
        if group is None:
            group = self._groups[(source, topic, partition)] = _Group(event, topic, partition, on_sent)
        group.records.append((key, value, headers))
        return Queued(group, len(group.records) - 1)

    async def flush(self) -> None:
        """Hand every queued record to its producer (not awaiting the broker's acks)."""
        groups, self._groups = self._groups, {}
        if not groups:
            return
        producer = await self.app.maybe_start_producer()
        faust_producer = producer.producer if self._exactly_once else producer  # the transaction manager's
        batching = self._routed and isinstance(faust_producer, Producer)
        with current_event_kept():
            for group in groups.values():
                if batching:
                    _resolve(self.app, faust_producer, group, exactly_once=self._exactly_once)
                    await _send(group)
                else:
                    await _send_one_by_one(self.app, group)


def _event() -> Any:
    ref = _current_event.get(None)
    return ref() if ref is not None else None


def _resolve(app: Any, producer: Any, group: _Group, *, exactly_once: bool) -> None:
    """The aiokafka producer of ``group`` (and under exactly_once its transaction's lock)."""
    if not exactly_once:
        group.producer = producer._ensure_producer()
        return
    assert group.event is not None, "under exactly_once a record belongs to the current event's transaction"
    source = group.event.message.tp
    tid = transactional_id(app, source)
    group.producer = producer._transaction_producers.get(tid)
    if group.producer is None:  # as Faust's own send says it (faust_guarantees.fencing reads it)
        raise ProducerSendError(f"No transaction producer found for : {tid}")
    group.lock = producer._trn_locks[tid]


async def _send_one_by_one(app: Any, group: _Group) -> None:
    if group.event is not None:
        as_current(group.event)
    for key, value, headers in group.records:
        _track(group, await publish(app, group.topic, key=key, value=value, partition=group.partition,
                                    headers=headers or None), 1)


async def _send(group: _Group) -> None:
    producer = group.producer
    builder, members = producer.create_batch(), 0
    for key, value, headers in group.records:
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:  # full
            await _submit(group, builder, members)
            builder, members = producer.create_batch(), 0
            # An empty record batch takes any one record, larger than its size or not (Kafka's rule).
            builder.append(timestamp=None, key=key, value=value, headers=headers)
        members += 1
    if members:
        await _submit(group, builder, members)


async def _submit(group: _Group, builder: Any, count: int) -> None:
    builder.close()  # no record of another send joins it: its count is the persisted offset's
    _track(group, await _locked(group, group.producer.send_batch(builder, group.topic, partition=group.partition)),
           count)


def _track(group: _Group, future: Any, count: int) -> None:
    """``future`` acks the next ``count`` records of ``group``."""
    group.futures.append(future)
    group.batch_of.extend([len(group.futures) - 1] * count)
    if group.on_sent is not None:
        on_sent = group.on_sent
        future.add_done_callback(lambda fut: _acked(fut, on_sent, count))


async def _locked(group: _Group, send: Any) -> Any:
    if group.lock is None:
        return await send
    async with group.lock:
        return await send


def _acked(fut: Any, on_sent: Callable[[Any, int, int], None], count: int) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    metadata = fut.result()
    on_sent(metadata.topic_partition, metadata.offset, count)


def _changelog_sent(table: Any, tp: Any, base: int, count: int) -> None:
    table._on_changelog_sent(_Done(_Acked(tp, base + count - 1)))


__all__ = ["Queued", "RecordBatches"]
