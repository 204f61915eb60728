"""How every agent processes one event: acks, the commit gate, and dead letters.

Agents write::

    stream = stream.noack()                       # acks are ours, see below
    async for event in first_deliveries(stream):
        async with processing(stream, event, stage="dedup"):
            ...                                   # the stage's work

and get four guarantees that stock Faust does not give:

0. **A record is processed at most once per worker process.** After a
   rebalance or a restart Faust resumes the streams before it seeks them to
   the committed offsets, so records read in that window are delivered a
   second time after the seek (the race of faust-streaming#217, still open on
   the path with tables). Under exactly_once both copies' outputs would land in
   the same transaction: a duplicate that no crash caused. The worker
   remembers the offsets it processed (until they are committed) and acks a
   re-delivered record without processing it again. (A new process starts with
   an empty memory: what a crash left uncommitted is processed again, as it
   must be.)

1. **An event is acked only when its work is done.** Faust's own loop acks in
   a ``finally`` block, even when the body raised (the event is then lost
   without a trace), and it acks an event only when the *next* one is asked
   for. Here the ack is the last step of the body.

2. **No record disappears, no record stops the stage.** A record the stage
   refuses (:class:`~streams_app.exceptions.RejectedRecord`: not a payment, on
   any topic, since every topic is read as bytes and decoded in the body) and
   an unexpected exception in the body both send the record to
   ``{prefix}.dlq`` with its original bytes and headers saying where from and
   why (streams_app/dead_letters.py: too large to copy, it is sent as a
   reference; a failing send is retried, never raised), count it as
   ``{stage}.dead_lettered``, and then ack it. A dependency that is down is
   not the record's fault: :class:`~streams_app.exceptions.Unavailable` leaves
   ``processing()`` with the record neither dead-lettered nor acked, and the
   stage tries it again after a wait outside the commit gate (agents/sink.py).

3. **Under exactly_once, a commit never splits an event.** Faust commits from
   a timer task while agents keep processing. An event processed during the
   commit would have its outputs in transaction N but its offset in N+1; a
   crash between the two commits replays it and duplicates its outputs. The
   commit gate (:class:`faust_guarantees.gate.CommitGate`) pauses new events while a commit runs and makes the
   commit wait for events in progress (the kit's commit-gate fix installs
   the commit side).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from typing import Any, AsyncIterator

import faust
from faust.streams import _current_event
from faust.types import TP, ChannelT, EventT, Message, StreamT

from common.redact import mask_url
from faust_guarantees import fenced, is_fenced, on_fenced
from tables.counters import batched_counts, count, write_counts

from . import metrics
from .logs import record_fields
from .app import app, guarantees, settings
from .dead_letters import letter_for, send_dead_letter
from .exceptions import RejectedRecord, Unavailable
from .faults import crashpoint
from .topics import dead_letters, place

log = logging.getLogger(__name__)


#: The kit's commit gate (faust_guarantees/gate.py; its commit side is the commit-gate fix).
gate = guarantees.gate
GATED = guarantees.gated


#: at_most_once: every stage commits an event's offset BEFORE working on it.
COMMIT_FIRST = settings.processing_guarantee == "at_most_once"

#: What this process processed (faust_guarantees/memory.py: guarantee 0 above).
memory = guarantees.memory


def already_processed(consumer: Any, message: Message) -> bool:
    """Processed by this process, or below the committed offset (see first_deliveries)."""
    tp = message.tp
    return memory.already_processed(tp, message.offset, consumer._committed_offset.get(tp))


async def first_deliveries(stream: StreamT) -> AsyncIterator[EventT]:
    """The stream's events, minus records this process has already processed.

    Two kinds come again: records after a seek back to the committed offset (Faust
    seeks on every rebalance and after recovery), remembered in :data:`memory`; and
    the last record read from a partition, which Faust's fetcher lets through when
    it comes a second time (``Consumer._drain_messages`` passes ``offset >= last read
    offset``; seen at once on every partition of one worker, in an exactly_once
    rebalance lab run at 5,000 events, with no seek logged). That one may be
    committed already, its memory dropped by the stall heal's ``forget_below``, and under
    exactly_once both copies would commit (2 duplicates in ``applied``). So a record
    below the committed offset is never processed again.
    """
    consumer = stream.app.consumer
    async for event in stream.events():
        message = event.message
        if already_processed(consumer, message):
            # Per record, and routine after every seek: DEBUG (counted nowhere else; rare at INFO).
            log.debug("skipping %s: delivered again, already processed", place(message),
                      extra=record_fields(message))
            await stream.ack(event)
            continue
        yield event


@asynccontextmanager
async def processing(stream: StreamT, event: EventT, *, stage: str) -> AsyncIterator[None]:
    """Run one event's work; dead-letter it on an unexpected error; ack it after.

    Under at_most_once the ack and a synchronous offset commit come first
    instead: a crash during the work then loses the event and never repeats it
    (crash point ``{stage}.after_commit``).
    """
    message = event.message
    async with gate.processing() if GATED else nullcontext():
        if COMMIT_FIRST:
            await stream.ack(event)
            await _commit_through(message)
            crashpoint(f"{stage}.after_commit")
        try:
            try:
                yield
            except Unavailable:
                raise  # not the record's fault: neither dead-lettered nor acked; the stage retries it
            except RejectedRecord as exc:
                # Per record: DEBUG; payments_dead_letters_total and the DLQ itself say it.
                log.debug("%s: dead-lettering %s (%s)", stage, place(message), exc,
                          extra=record_fields(message, stage=stage))
                await dead_letter(message, stage=stage, code=exc.code, reason=exc.reason, error=exc)
            except Exception as exc:
                if _fenced(exc):
                    raise
                log.exception("%s: failed on %s; dead-lettering it", stage, place(message),
                              extra=record_fields(message, stage=stage))
                await dead_letter(message, stage=stage, code="processing_error",
                                  reason=f"{type(exc).__name__}: {exc}", error=exc)
        except Exception as exc:
            if not _fenced(exc):
                raise
            # Another worker owns the partition now (the kit's fenced-restart fix): the record's
            # outputs are in an aborted transaction and it comes again to its owner. It is
            # acked all the same: a revocation waits until every delivered record is acked
            # (Consumer.wait_empty) and would hang; nothing a fenced worker acks is committed
            # (its commits are refused, and it stops).
            log.warning("%s: %s left unprocessed: this worker was fenced", stage, place(message),
                        extra=record_fields(message, stage=stage))
            await _stop_fenced(exc)
            if not COMMIT_FIRST:
                await stream.ack(event)
            return
        memory.remember(message.tp, message.offset)
        if not COMMIT_FIRST:
            await stream.ack(event)


async def _commit_through(message: Message, timeout: float = 5.0) -> None:
    """Commit ``message``'s offset at the broker now (at_most_once only).

    Faust's ``Consumer.commit`` returns without committing when another commit
    is in flight, so the offset is committed with the consumer's own request.
    If the group is rebalancing the commit is refused or held back: after
    ``timeout`` the event is processed anyway (a duplicate is then possible)
    and its offset committed with the next regular commit.
    """
    try:
        done = await asyncio.wait_for(app.consumer._commit({message.tp: message.offset + 1}), timeout)
    except asyncio.TimeoutError:
        done = False
    if not done:
        log.warning("at_most_once: could not commit %s before processing it", place(message))


async def dead_letter(message: Message, *, stage: str, code: str, reason: str, error: BaseException) -> None:
    """Send ``message`` to the DLQ (streams_app/dead_letters.py) and count it. A send that
    fails is retried until it goes through (the record waits unacked); it raises only once
    this worker was fenced (the record is another worker's now: see processing())."""
    letter = letter_for(message, stage=stage, code=code, reason=reason, error=error, group=app.conf.id,
                        redact=_redact)
    sent = await send_dead_letter(letter, message, _send_to_dlq, max_bytes=app.conf.producer_max_request_size,
                                  give_up=_fenced)
    if sent.reference:
        log.warning("%s: %s is too large to copy into the DLQ (%d bytes); dead-lettered as a reference",
                    stage, place(message), len(message.value or b""), extra=record_fields(message, stage=stage))
        count("dlq.references")
    count(f"{stage}.dead_lettered")
    metrics.dead_lettered(stage, code)


async def _stop_fenced(error: BaseException) -> None:
    """Stop the worker before anything it acks now is committed (the kit's fenced-restart fix;
    its commit would also find the producers fenced, but a send may be the first to tell)."""
    if STOP_WHEN_FENCED:
        await on_fenced(app, error)


#: exactly_once with the fenced-restart fix: a fenced worker stops, its stop marked unclean.
STOP_WHEN_FENCED = settings.faust_guarantee == "exactly_once" and settings.fix_enabled("fenced-restart")


def _fenced(error: BaseException) -> bool:
    """The error says this worker was fenced, or it was and is stopping: once fenced, its
    producers fail in several ways (ProducerFenced, 'not in transaction'), all of them final."""
    return is_fenced(error) or fenced(app)


def _redact(text: str) -> str:
    """An error's text may quote the sink's DSN: never with its password."""
    return mask_url(text, settings.sink_db)


async def _send_to_dlq(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
    # Awaited: a refusal by the broker (e.g. the DLQ topic's own size limit) must come
    # back here, where it is retried or turned into a reference, not in Faust's flush.
    await (await dead_letters.send(key=key, value=value, headers=headers))


# -- batches ------------------------------------------------------------------------------


async def publish(topic: Any, *, key: bytes | None, value: bytes | None, partition: int | None = None,
                  headers: Any = None) -> Awaitable[Any]:
    """Hand one output to Faust's producer; return the future of the broker's ack.

    Under exactly_once the producer is Faust's transaction manager, which puts the
    record into the transaction of the current event's source partition (see
    :func:`as_current`). Topic.send would do the same through a FutureMessage, two
    sensor calls and a callback per record: 15 % of a batched stage's time (py-spy).
    """
    if headers is not None and not isinstance(headers, list | dict):
        headers = list(headers)  # a consumed record's headers are a tuple; aiokafka wants a list
    producer = await app.maybe_start_producer()
    return await producer.send(topic.get_topic_name(), key, value, partition, None, headers)


def as_current(event: EventT) -> None:
    """Make ``event`` this task's current event, as Faust's stream does for the event it
    yields: a table write takes its partition from it, and under exactly_once an output
    goes into the transaction of its source partition (the source-partition-transactions fix)."""
    _current_event.set(weakref.ref(event))


async def batches(stream: StreamT, max_records: int | None = None) -> AsyncIterator[list[EventT]]:
    """The stream's first deliveries (as :func:`first_deliveries`), in batches.

    A batch is the next event and whatever the stream's queue already holds behind
    it, up to ``max_records`` (BATCH_MAX): a batch is never waited for, so a lone event
    is a batch of one and latency does not grow with the batch size. The first event
    comes through Faust's stream iterator (which waits when there is nothing); the
    rest are taken from the queue directly (:func:`_queue_taker`): Faust's iterator
    spends an event-loop round (``await sleep(0)``) and three generator hops per event,
    13 % of a batched worker's time (py-spy).
    """
    limit = max_records or settings.batch_max
    consumer = stream.app.consumer
    queue, take = _queue_taker(stream)
    events = stream.events().__aiter__()
    batch: list[EventT] = []
    #: (partition, offset) of the batch: a seek back (a rebalance, the stall heal) can put a
    #: record in the queue again while its first copy is still there, in the same batch.
    #: Such a second copy is acked only once the batch is done: acked now, under
    #: at_least_once a commit could pass the offset before the first copy's work is done.
    taken: set[tuple[TP, int]] = set()
    echoes: list[EventT] = []

    async def keep(event: EventT) -> None:
        message = event.message
        place_ = (message.tp, message.offset)
        if place_ in taken:
            echoes.append(event)
        elif already_processed(consumer, message):
            log.debug("skipping %s: delivered again, already processed", place(message),
                      extra=record_fields(message))
            await stream.ack(event)
        else:
            taken.add(place_)
            batch.append(event)

    try:
        while True:
            await keep(await events.__anext__())
            while len(batch) < limit and queue is not None and queue.qsize() and not queue._errors:
                event = take()
                if event is not None:
                    await keep(event)
            if batch:
                yield batch
                batch = []
            for event in echoes:
                log.debug("skipping %s: delivered twice in one batch", place(event.message),
                          extra=record_fields(event.message))
                await stream.ack(event)
            echoes.clear()
            taken.clear()
    except StopAsyncIteration:
        if batch:
            yield batch


def _queue_taker(stream: StreamT) -> tuple[Any, Callable[[], EventT | None]]:
    """The stream's queue, and a function taking its next event as Faust's stream
    iterator would hand it over (faust/_cython/streams.pyx ``_prepare_event``, 0.15):
    an event from before a rebalance is dropped untracked; a new one is tracked as
    unacked and reported to the sensors. No queue on any other Faust version or
    channel: every event then comes through the iterator."""
    channel = stream.channel
    if not faust.__version__.startswith("0.15.") or not isinstance(channel, ChannelT):
        return None, lambda: None
    app = stream.app
    queue = channel.queue
    get = queue.get_nowait
    acking = app.topics._acking_topics
    add_unacked = app.consumer._unacked_messages.add
    on_message_in = stream._on_message_in
    on_event_in = stream._on_stream_event_in
    flow_active = app.flow_control.is_active

    def take() -> EventT | None:
        event = get()
        if not isinstance(event, EventT):
            return None  # a topic's channel holds events only
        message = event.message
        if not flow_active() or message.generation_id != app.consumer_generation_id:
            return None  # delivered before a rebalance: Faust drops it, never tracked
        if message.topic in acking and not message.tracked:
            message.tracked = True
            add_unacked(message)
            on_message_in(message.tp, message.offset, message)
        on_event_in(message.tp, message.offset, stream, event)
        return event

    return queue, take


Failure = tuple[EventT, str, str, BaseException]


class Batch:
    """The work of one batch: each record's body runs in :meth:`record`, which sets a
    refused or failed record aside for the DLQ while the batch goes on."""

    def __init__(self, events: list[EventT], stage: Callable[[Message], str]) -> None:
        self.events = events
        self.stage_of = stage
        self.failed: list[Failure] = []
        self._failed_ids: set[int] = set()

    @contextmanager
    def record(self, event: EventT) -> Iterator[None]:
        """One record's work, with ``event`` current (see :func:`as_current`)."""
        as_current(event)
        try:
            yield
        except Unavailable:
            raise  # not the record's fault: the batch is tried again (processing_batch)
        except RejectedRecord as exc:
            self.fail(event, exc.code, exc.reason, exc)
        except Exception as exc:
            if _fenced(exc):
                raise
            self.fail_unexpectedly(event, exc)

    def fail(self, event: EventT, code: str, reason: str, error: BaseException) -> None:
        if id(event) not in self._failed_ids:
            self._failed_ids.add(id(event))
            self.failed.append((event, code, reason, error))

    def fail_unexpectedly(self, event: EventT, exc: BaseException) -> None:
        message = event.message
        stage = self.stage_of(message)
        log.error("%s: failed on %s; dead-lettering it", stage, place(message), exc_info=exc,
                  extra=record_fields(message, stage=stage))
        self.fail(event, "processing_error", f"{type(exc).__name__}: {exc}", exc)

    def ok(self, event: EventT) -> bool:
        return id(event) not in self._failed_ids

    async def acknowledged(self, sends: list[tuple[EventT, Awaitable[Any]]]) -> list[EventT]:
        """Wait for the broker's acks of ``sends`` (event, the future of its output), all at
        once; an event whose output failed is set aside for the DLQ. Returns the others."""
        results = await asyncio.gather(*(fut for _, fut in sends), return_exceptions=True)
        done: list[EventT] = []
        for (event, _), result in zip(sends, results):
            if isinstance(result, BaseException):
                if _fenced(result):
                    raise result
                self.fail_unexpectedly(event, result)
            else:
                done.append(event)
        return done


@asynccontextmanager
async def processing_batch(stream: StreamT, events: list[EventT], *,
                           stage: str | Callable[[Message], str]) -> AsyncIterator[Batch]:
    """:func:`processing` for a batch: the same four guarantees, per record.

    The commit gate covers the whole batch (under exactly_once a commit never splits
    it); records set aside by :meth:`Batch.record` are dead-lettered when the body is
    done, the counts of the batch written once per key, and every record acked last.
    An unexpected error outside any record's work dead-letters every record of the
    batch not yet set aside: nothing is dropped, and the stage goes on.
    :class:`~streams_app.exceptions.Unavailable` (a dependency is down) leaves the
    batch neither dead-lettered nor acked, for the stage to try again after a wait.
    """
    stage_of = stage if callable(stage) else (lambda _message, _s=stage: _s)
    work = Batch(events, stage_of)
    async with gate.processing() if GATED else nullcontext():
        if COMMIT_FIRST:
            for event in events:
                await stream.ack(event)
            await _commit_batch_through(events)
            for event in events:
                crashpoint(f"{stage_of(event.message)}.after_commit")
        try:
            with batched_counts() as pending:
                try:
                    yield work
                except Unavailable:
                    raise  # neither dead-lettered nor acked: the stage tries the batch again
                except Exception as exc:
                    if _fenced(exc):
                        raise
                    for event in events:
                        if work.ok(event):
                            work.fail_unexpectedly(event, exc)
                for event, code, reason, error in work.failed:
                    as_current(event)
                    message = event.message
                    if code != "processing_error":
                        log.debug("%s: dead-lettering %s (%s)", stage_of(message), place(message), error,
                                  extra=record_fields(message, stage=stage_of(message)))
                    await dead_letter(message, stage=stage_of(message), code=code, reason=reason, error=error)
                write_counts(pending)
        except Exception as exc:
            if not _fenced(exc):
                raise
            log.warning("%s: a batch of %d records left unprocessed: this worker was fenced",
                        stage_of(events[0].message), len(events))
            await _stop_fenced(exc)
            if not COMMIT_FIRST:
                for event in events:
                    await stream.ack(event)
            return
        for event in events:
            message = event.message
            memory.remember(message.tp, message.offset)
        if not COMMIT_FIRST:
            for event in events:
                await stream.ack(event)


async def _commit_batch_through(events: list[EventT], timeout: float = 5.0) -> None:
    """:func:`_commit_through` for every partition of a batch, in one commit."""
    offsets: dict[TP, int] = {}
    for event in events:
        tp, offset = event.message.tp, event.message.offset
        offsets[tp] = max(offsets.get(tp, -1), offset + 1)
    try:
        done = await asyncio.wait_for(app.consumer._commit(offsets), timeout)
    except asyncio.TimeoutError:
        done = False
    if not done:
        log.warning("at_most_once: could not commit a batch of %d records before processing it", len(events))
