"""The direct-delivery fix.

Every guarantee (speed): the fetcher hands each message to the conductor through
Service.wait_first(callback(message), suspend_flow.wait()) (Consumer._drain_messages):
four tasks, an asyncio.wait and three cancellations per message, so that a delivery
blocked on a full stream queue, suspended flow control, a full producer buffer or the
conductor's index lock is abandoned when a rebalance suspends the flow. A delivery that
cannot block needs none of it; measured, wait_first was 7 % of a batched pipeline
worker's time and halved a one-hop agent's throughput
(docs/decisions/0023-per-record-costs-cut-on-fast-path.md). Fix: when none of those can block (the flow is not
suspended, flow control is active, the producer buffer is below its limit, the index
lock is free and every stream queue of the partition has room), the message is delivered
with a plain await; otherwise exactly as stock. Copies Faust 0.15's _drain_messages:
installed on faust-streaming 0.15 only. Both per-message checks of the producer buffer
(this one and the conductor's ProducerBuffer.wait_until_ebb) count its queue directly:
ProducerBuffer.size looked up a setting on every call, 5 % of a stage's time.

Second: a partition whose stream queue is 80 % full is left out of the fetch
(Consumer.on_buffer_full takes it out of the set of active partitions) until the queue is
down to 40 % (on_buffer_drop puts it back). A fetch already waiting in the consumer thread
(aiokafka's Fetcher.fetched_records, for up to a second) does not see it come back: it
filtered the partition's prefetched records out and wakes only for new records of the
others. On a backlog one fetch brings up to a megabyte per partition, the queues pass 80 %
at once, and every such fetch then ran its full second while the agents emptied their
queues and waited: the dedup stage waited for records 20-35 % of the time, and every other
fetch call took 1.0 s and returned nothing while the backlog's next records sat in the
client (bench one faust_alo, 160,000 records, session 15). And when every partition is
out, Faust's Consumer._wait_next_records sleeps a second. Fix: on_buffer_drop wakes a
fetch waiting in the consumer thread, which then returns the resumed partition's
records; with every partition out, the delivery loop waits for a resume (at most the
same second) instead of that sleep.

Third: a partition whose one stream takes its records' bytes as they are (key and value
typed ``bytes`` with the ``raw`` serializers of Faust's own Schema: the kit's stages decode
their records themselves) gets its events put in the stream's queue here, as the
conductor's delivery callback (ConductorCompiler.build) puts them, without its four
coroutines per message (the conductor's index lock, flow control, the producer buffer's
ebb, the schema's decode through the serializer registry, whose answer for raw bytes is
the bytes): 13 % of the dedup stage's time went to that callback (py-spy, session 16).
The same conditions as the plain await above; any other partition takes the callback.

Tests: the raw delivery's event and pressure callbacks against the conductor's, and which
schemas take it (tests/unit/test_faust_fixes_unit.py); otherwise every broker test and lab
cell runs through it (a delivery that can block takes the stock path, exercised by the
sink-outage tests).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "direct-delivery"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:Consumer._drain_messages": "44a2500309e8",
    "faust.transport.producer:ProducerBuffer.wait_until_ebb": "758dd5744044",
    "faust.transport.producer:ProducerBuffer.size": "b543a978fdec",
    "faust.transport.consumer:Consumer._wait_next_records": "6218e1969a63",
    "faust.transport.consumer:Consumer.on_buffer_drop": "4b57e8a418d5",
    "faust.transport.consumer:Consumer._get_active_partitions": "b24897f3c7af",
    "aiokafka.consumer.fetcher:Fetcher.fetched_records": "be4348896b9b",
    "aiokafka.consumer.fetcher:Fetcher._create_fetch_waiter": "61d840568746",
    "faust.transport.conductor:ConductorCompiler.build": "837cf521368c",
    "faust.serializers.registry:Registry.loads_key": "75262a2361a3",
    "faust.serializers.registry:Registry.loads_value": "a9a8d9f63e03",
}


def buffered(buffer: Any) -> int:
    """ProducerBuffer.size without its settings lookup on every call (Faust's Settings
    resolve each attribute through a registry: 5 % of a stage's time, read twice per
    message, by the conductor's wait_until_ebb and by :func:`blocks`)."""
    threaded = buffer.__dict__.get("_threaded")
    if threaded is None:
        threaded = buffer.__dict__["_threaded"] = bool(buffer.app.conf.producer_threaded)
    queue = buffer.queue if threaded else buffer.pending
    return len(queue._queue) if queue else 0


def _resumed(consumer: Any) -> asyncio.Event:
    event = consumer.__dict__.get("_kit_resumed")
    if event is None:
        event = consumer.__dict__["_kit_resumed"] = asyncio.Event()
    return event


def _wake_fetch(consumer: Any) -> None:
    """Wake a fetch waiting in the consumer thread for new records (aiokafka's
    Fetcher.fetched_records): it looks at the active partitions again."""
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None)
    fetcher = getattr(client, "_fetcher", None)
    loop = getattr(thread, "thread_loop", None)
    if fetcher is not None and loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(_wake_waiters, fetcher)


def _wake_waiters(fetcher: Any) -> None:
    for waiter in list(fetcher._fetch_waiters):
        if not waiter.done():
            waiter.set_result(None)


def all_paused_by_full_queues(consumer: Any) -> bool:
    """No partition is active, and some are paused because their stream queue is full
    (where Faust's _wait_next_records would sleep a second)."""
    if consumer.app.client_only or not consumer._buffered_partitions:
        return False
    return not consumer._get_active_partitions()


async def wait_for_a_resume(consumer: Any, timeout: float = 1.0) -> None:
    """Wait until a partition paused by a full queue resumes (Consumer.on_buffer_drop, as
    fixed here), or ``timeout``."""
    event = _resumed(consumer)
    event.clear()
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass


def takes_raw_bytes(channel: Any) -> bool:
    """``channel``'s events are its records' key and value bytes as they are: Faust's own
    Schema and serializer Registry, both typed ``bytes``, both serializers ``raw``
    (Registry.loads_key and loads_value then return the bytes, None for None)."""
    from faust.serializers.registry import Registry
    from faust.serializers.schemas import Schema

    schema = getattr(channel, "schema", None)
    return (type(schema) is Schema and type(channel.app.serializers) is Registry
            and schema.key_type is bytes and schema.value_type is bytes
            and schema.key_serializer == "raw" and schema.value_serializer == "raw")


#: The attribute a channel keeps :func:`takes_raw_bytes`' answer in.
_TAKES_RAW = "_kit_takes_raw_bytes"


class RawDelivery:
    """Puts a message of a partition whose one stream takes raw bytes (:func:`takes_raw_bytes`)
    in that stream's queue, as the conductor's callback does when nothing blocks: one
    reference, the event, the queue's pressure callbacks (ConductorCompiler.build's)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.create_event = app.create_event
        #: tp -> (on_pressure_high, on_pressure_drop), as ConductorCompiler.build makes them
        self._pressure: dict[Any, tuple[Any, Any]] = {}

    def channel(self, channels: Any) -> Any:
        """The one channel of a partition when it takes raw bytes; else None."""
        if len(channels) != 1:
            return None
        for channel in channels:
            # Kept on the channel (its schema does not change once subscribed): per message, a
            # WeakKeyDictionary's lookup (a new weak reference each time) was 1.5 % of the
            # dedup stage at one partition (py-spy, session 17).
            raw = channel.__dict__.get(_TAKES_RAW)
            if raw is None:
                raw = channel.__dict__[_TAKES_RAW] = takes_raw_bytes(channel)
            return channel if raw else None
        return None

    def put(self, channel: Any, message: Any) -> None:
        tp = message.tp
        pressure = self._pressure.get(tp)
        if pressure is None:
            pressure = self._pressure[tp] = self._callbacks(tp)
        message.incref(1)
        channel.queue.put_nowait_enhanced(
            self.create_event(message.key, message.value, message.headers, message),
            on_pressure_high=pressure[0], on_pressure_drop=pressure[1])

    def _callbacks(self, tp: Any) -> tuple[Any, Any]:
        from faust.types import TP

        # Faust's TP, as the conductor's index keys them: a message's tp is aiokafka's
        # TopicPartition, which Consumer._get_active_partitions refuses.
        tp = TP(tp.topic, tp.partition)
        app = self.app
        on_topic_buffer_full = app.sensors.on_topic_buffer_full
        consumer = app.consumer

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            consumer.on_buffer_full(tp)

        def on_pressure_drop() -> None:
            consumer.on_buffer_drop(tp)

        return on_pressure_high, on_pressure_drop


def install(guarantees: Guarantees) -> None:
    import faust
    from faust.transport.consumer import CONSUMER_FETCHING, Consumer
    from faust.transport.producer import ProducerBuffer

    if not faust.__version__.startswith("0.15."):
        log.warning("direct-delivery: written for faust-streaming 0.15, found %s: not installed",
                    faust.__version__)
        return

    def unblocked(consumer: Any, message: Any) -> Any:
        """The channels ``message`` goes to, when delivering it cannot wait (see this
        module's docstring); None when it could."""
        app = consumer.app
        if consumer.suspend_flow.is_set() or not app.flow_control.is_active():
            return None
        buffer = app.producer.buffer
        if buffered(buffer) > buffer.max_messages:
            return None
        conductor = app.topics
        if conductor._tp_to_callback_lock.locked():
            return None
        channels = conductor._tp_index.get(message.tp)
        if channels is None:
            return None
        for chan in channels:  # a loop, not any(...): per message, a generator costs 3 %
            if chan.queue.full():
                return None
        return channels

    stock_wait_until_ebb = ProducerBuffer.wait_until_ebb
    stock_on_buffer_drop = Consumer.on_buffer_drop

    def on_buffer_drop(self: Consumer, tp: Any) -> None:
        stock_on_buffer_drop(self, tp)
        _resumed(self).set()
        _wake_fetch(self)

    async def wait_until_ebb(self: ProducerBuffer) -> None:
        if buffered(self) > self.max_messages:  # else stock does nothing
            await stock_wait_until_ebb(self)

    async def _drain_messages(self: Consumer, fetcher: Any) -> None:  # pragma: no cover
        # Faust 0.15.3's Consumer._drain_messages, but for the delivery (marked).
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        exact_gaps = getattr(self._new_offset, "_fixed", False)
        raw = RawDelivery(self.app)
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if self.flow_active and all_paused_by_full_queues(self):  # fixed: no 1 s sleep
                    await wait_for_a_resume(self)
                    continue
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # fixed: with exact-gaps the gaps come from what the client
                            # returned (getmany), not from the read offset, which a seek's
                            # bookkeeping can leave behind what was delivered.
                            if gap > 1 and r_offset and not exact_gaps:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            channels = unblocked(self, message)
                            if channels is None:  # stock
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            elif (channel := raw.channel(channels)) is not None:  # fixed: no callback
                                raw.put(channel, message)
                            else:  # fixed: nothing to abandon, no tasks
                                await callback(message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    guarantees.classes.replace(Consumer, "_drain_messages", _drain_messages)
    guarantees.classes.replace(ProducerBuffer, "wait_until_ebb", wait_until_ebb)
    guarantees.classes.replace(Consumer, "on_buffer_drop", on_buffer_drop)
