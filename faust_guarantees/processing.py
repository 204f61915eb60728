"""How an agent processes events so that the guarantees hold: the processing discipline.

An agent writes::

    discipline = faust_guarantees.Processing(guarantees, dead_letters=app.topic("orders.dlq"))

    @app.agent(orders)
    async def count_orders(stream):
        stream = stream.noack()                           # acks are the discipline's
        async for events in discipline.batches(stream):
            async with discipline.processing_batch(stream, events, stage="count") as batch:
                for event in events:
                    with batch.record(event):
                        ...                               # one record's work

and gets four guarantees that stock Faust does not give:

0. **A record is processed at most once per worker process.** Records delivered again
   (after a seek back to the committed offset, or the fetcher's repeat of a partition's
   last record) are acked without being processed (:mod:`faust_guarantees.memory`).
1. **An event is acked only when its work is done.** Faust's own loop acks in a
   ``finally`` block, even when the body raised (the event is then lost without a
   trace), and it acks an event only when the *next* one is asked for.
2. **No record disappears, no record stops the stage.** A record the stream's schema
   cannot decode (a topic typed with a model or a codec) is dead-lettered with its
   original bytes in its batch, instead of Faust's conductor acking and dropping it
   (:class:`Undecodable`). A record the stage refuses
   (:class:`RejectedRecord`) and an unexpected exception in its work both send the record
   to the dead-letter topic with its original bytes and headers saying where from and why
   (:mod:`faust_guarantees.dead_letters`; too large to copy, it is sent as a reference; a
   failing send is retried, never raised), and then ack it. A dependency that is down is
   not the record's fault: :class:`Unavailable` leaves the batch neither dead-lettered nor
   acked, for the stage to try it again after a wait outside the commit gate. An error
   that says a dependency failed in the middle of the work (the broker, the disk under a
   table's store: :mod:`faust_guarantees.dependencies`) dead-letters nothing either: what
   the batch sent may already be in Kafka, so the worker stops uncommitted and starts
   again after a wait (:func:`faust_guarantees.fencing.stop_for_dependency`), and the batch
   comes again.
3. **Under exactly_once, a commit never splits an event.** Faust commits from a timer
   while agents keep processing; the commit gate (:mod:`faust_guarantees.gate`, installed
   on the commit side by the commit-gate fix) holds new batches during a commit and makes
   the commit wait for the batches in progress.

A stage that commits each record's offset BEFORE its work (``guarantee="at_most_once"``
at install) gets the ack and a synchronous commit first instead: a crash during the work
loses the record and never repeats it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from types import TracebackType
from typing import Any

import faust
from faust.exceptions import KeyDecodeError, ValueDecodeError
from faust.streams import _current_event
from faust.types import TP, ChannelT, EventT, Message, StreamT

from .dead_letters import letter_for, send_dead_letter
from .dependencies import is_dependency_failure
from .fencing import fenced, is_fenced, on_fenced, stop_for_dependency
from .sensors import ack_all, batch_in
from .state import Guarantees

log = logging.getLogger(__name__)


class RejectedRecord(Exception):
    """A record the stage refuses as it is: it is dead-lettered, no traceback logged.

    ``code`` is a stable machine-readable tag (``not_json``, ``missing_field``...) that
    tests and dashboards group by; ``reason`` is the human sentence. Both go into the dead
    letter's headers.
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class Undecodable:
    """The value of an event whose record its stream's schema could not decode.

    Faust's conductor decodes each record with the schema of the topic (``value_type`` a
    model, a codec: Faust's JSON unless the serializers are ``raw``) and, when that fails,
    acks the record and throws the error into the stream: the record is gone (no output,
    no dead letter, no log line by default), and an agent that catches the error has no
    record to dead-letter. A stream read through :meth:`Processing.batches` or
    :meth:`Processing.first_deliveries` decodes with a decode that never raises: a record
    it cannot decode becomes an event with this value (the message keeps the original
    bytes), which the discipline dead-letters (code ``undecodable``) and acks in its turn,
    in the batch's transaction under exactly_once. The stage never sees one."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Undecodable({self.error!r})"


#: The dead letters' ``stage`` for records the stream could not decode.
DECODE_STAGE = "decode"


def dead_letter_undecodable(channel: Any) -> bool:
    """Give ``channel`` (the one Faust's conductor delivers to: a stream's own, iterating
    channel) a decode that returns an event valued :class:`Undecodable` instead of raising
    (see there). False, changing nothing, for a channel that does not decode records (not
    a topic's, or not yet iterated: Faust compiles the iterating clone's decode anew)."""
    decode = getattr(channel, "decode", None)
    if decode is None or getattr(decode, "dead_letters_undecodable", False):
        return decode is not None
    if not isinstance(channel, faust.TopicT) or not channel.is_iterator:
        return False
    create_event = channel.app.create_event

    async def decode_or_mark(message: Message, *, propagate: bool = False) -> EventT:
        try:
            return await decode(message, propagate=True)
        except (KeyDecodeError, ValueDecodeError) as exc:
            return create_event(message.key, Undecodable(exc), message.headers, message)

    decode_or_mark.dead_letters_undecodable = True  # type: ignore[attr-defined]
    channel.decode = decode_or_mark
    return True


def undecodable(event: EventT) -> bool:
    return type(event.value) is Undecodable


class Unavailable(Exception):
    """A system the stage depends on is down: the record is not the problem. The batch is
    neither dead-lettered nor acked; the stage waits (outside the commit gate, so other
    stages keep committing) and tries it again."""


def place(message: Any) -> str:
    """A record's place, in the one format every log line uses: ``orders[2]@1045``."""
    return f"{message.topic}[{message.partition}]@{message.offset}"


def record_fields(message: Any = None, *, stage: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about one record and/or stage (structured logs)."""
    fields: dict[str, Any] = {"stage": stage}
    if message is not None:
        fields.update(topic=message.topic, partition=message.partition, offset=message.offset)
    return {k: v for k, v in fields.items() if v is not None}


def as_current(event: EventT) -> None:
    """Make ``event`` this task's current event, as Faust's stream does for the event it
    yields: a table write takes its partition from it, and under exactly_once an output
    goes into the transaction of its source partition (the source-partition-transactions fix)."""
    _current_event.set(weakref.ref(event))


@contextmanager
def current_event_kept() -> Iterator[None]:
    """Give this task its current event back on leaving: for code that makes each event of
    a batch current in turn (:func:`as_current`) on behalf of the one being processed."""
    current = _current_event.get(None)
    try:
        yield
    finally:
        if current is not None:
            _current_event.set(current)


async def publish(app: Any, topic: Any, *, key: bytes | None, value: bytes | None,
                  partition: int | None = None, headers: Any = None) -> Awaitable[Any]:
    """Hand one output to Faust's producer; return the future of the broker's ack.

    Under exactly_once the producer is Faust's transaction manager, which puts the record
    into the transaction of the current event's source partition (see :func:`as_current`).
    Topic.send would do the same through a FutureMessage, two sensor calls and a callback
    per record: 15 % of a batched stage's time (py-spy).
    """
    if headers is not None and not isinstance(headers, list | dict):
        headers = list(headers)  # a consumed record's headers are a tuple; aiokafka wants a list
    producer = await app.maybe_start_producer()
    name = topic if isinstance(topic, str) else topic.get_topic_name()
    return await producer.send(name, key, value, partition, None, headers)


#: Told of every dead letter sent: (message, stage, code, sent as a reference).
DeadLetterListener = Callable[[Message, str, str, bool], None]

Failure = tuple[EventT, str, str, BaseException]


class Processing:
    """The processing discipline of one app's agents (see the module's docstring).

    ``dead_letters``: the Faust topic refused records go to. ``batch_max``: the most
    records in a batch. ``after_commit(stage)``: called once a record's offset is committed
    before its work (at_most_once; e.g. a crash point). ``redact``: applied to an error's
    text before it goes into a dead letter's headers. ``on_dead_letter``: told of each one.
    """

    def __init__(self, guarantees: Guarantees, *, dead_letters: Any, batch_max: int = 1000,
                 after_commit: Callable[[str], None] | None = None,
                 redact: Callable[[str], str] = str,
                 on_dead_letter: DeadLetterListener | None = None) -> None:
        self.guarantees = guarantees
        self.app = guarantees.app
        self.dead_letters = dead_letters
        self.batch_max = batch_max
        self.after_commit = after_commit
        self.redact = redact
        self.on_dead_letter = on_dead_letter
        self.gate = guarantees.gate
        self.memory = guarantees.memory
        self.gated = guarantees.gated
        #: The stage commits each record's offset before its work (at_most_once).
        self.commit_first = guarantees.at_most_once
        #: A fenced worker stops, its stop marked unclean (exactly_once with fenced-restart).
        self.stop_when_fenced = guarantees.exactly_once and guarantees.enabled("fenced-restart")
        #: Records a stage holds, unacked, for a dependency (holding.py): ``holdings.hold(events)``.
        self.holdings = guarantees.holdings

    def sends_only_dead_letters(self, topic: Any) -> None:
        """Declare that the stage reading ``topic`` sends nothing to Kafka but dead letters
        (its effects are outside Kafka, and idempotent): under exactly_once a hole in it (a
        record held for a dependency while later ones are done) does not hold its partition's
        transaction open (whole-transactions); a redelivery repeats at most a dead letter."""
        self.guarantees.dead_letters_only.add(getattr(topic, "get_topic_name", lambda: topic)())

    # -- which records a stage processes -------------------------------------------------

    def already_processed(self, consumer: Any, message: Message) -> bool:
        """Processed by this process, or below the committed offset (guarantee 0)."""
        tp = message.tp
        return self.memory.already_processed(tp, message.offset, consumer._committed_offset.get(tp))

    async def first_deliveries(self, stream: StreamT) -> AsyncIterator[EventT]:
        """The stream's events, minus records this process has already processed (acked
        without being processed)."""
        consumer = stream.app.consumer
        self._dead_letter_undecodable(stream)
        async for event in stream.events():
            message = event.message
            if self.already_processed(consumer, message):
                # Per record, and routine after every seek: DEBUG.
                log.debug("skipping %s: delivered again, already processed", place(message),
                          extra=record_fields(message))
                await stream.ack(event)
                continue
            if undecodable(event):
                await self._undecodable(stream, [event])
                continue
            yield event

    async def batches(self, stream: StreamT, max_records: int | None = None) -> AsyncIterator[list[EventT]]:
        """The stream's first deliveries (as :meth:`first_deliveries`), in batches.

        A batch is the next event and whatever the stream's queue already holds behind
        it, up to ``max_records`` (``batch_max``): a batch is never waited for, so a lone
        event is a batch of one and latency does not grow with the batch size. The first
        event comes through Faust's stream iterator (which waits when there is nothing);
        the rest are taken from the queue directly (:func:`_queue_taker`): Faust's iterator
        spends an event-loop round (``await sleep(0)``) and three generator hops per event,
        13 % of a batched worker's time (py-spy).
        """
        limit = max_records or self.batch_max
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
        #: records the stream could not decode: dead-lettered before the batch is yielded
        refused: list[EventT] = []
        self._dead_letter_undecodable(stream)

        async def keep(event: EventT) -> None:
            message = event.message
            place_ = (message.tp, message.offset)
            if place_ in taken:
                echoes.append(event)
            elif self.already_processed(consumer, message):
                log.debug("skipping %s: delivered again, already processed", place(message),
                          extra=record_fields(message))
                await stream.ack(event)
            else:
                taken.add(place_)
                if type(event.value) is Undecodable:
                    refused.append(event)
                else:
                    batch.append(event)

        app = stream.app
        try:
            while True:
                await keep(await events.__anext__())
                if queue is not None and queue.qsize():
                    # Taken together, the sensors told once (faust_guarantees/sensors.py).
                    more: list[EventT] = []
                    tracked: list[Message] = []
                    room = limit - len(batch)
                    while len(more) < room and queue.qsize() and not queue._errors:
                        event = take(tracked)
                        if event is not None:
                            more.append(event)
                    batch_in(app, stream, tracked, more)
                    for event in more:
                        await keep(event)
                if refused:
                    await self._undecodable(stream, refused[:])
                    refused.clear()
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
            if refused:
                await self._undecodable(stream, refused)
            if batch:
                yield batch

    def _dead_letter_undecodable(self, stream: StreamT) -> None:
        if not dead_letter_undecodable(stream.channel):
            log.warning("%s: records its schema cannot decode are dropped by Faust, not dead-lettered "
                        "(the stream's channel is not a topic's iterating channel)", stream.channel)

    async def _undecodable(self, stream: StreamT, events: list[EventT]) -> None:
        """Dead-letter and ack records the stream could not decode (:class:`Undecodable`),
        as a batch of their own (under exactly_once in their partitions' transactions)."""
        first = events[0]
        log.warning("%d records %s cannot decode, dead-lettered (first: %s, %s)", len(events),
                    stream.channel, place(first.message), first.value, extra=record_fields(first.message))
        async with self.processing_batch(stream, events, stage=DECODE_STAGE) as work:
            for event in events:
                error = event.value.error
                work.fail(event, "undecodable", f"{type(error).__name__}: {error}", error)

    # -- the work ------------------------------------------------------------------------

    @asynccontextmanager
    async def processing(self, stream: StreamT, event: EventT, *, stage: str) -> AsyncIterator[None]:
        """Run one event's work; dead-letter it when refused or on an unexpected error; ack
        it after. (:meth:`processing_batch` is the same for a batch.)"""
        message = event.message
        async with self.gate.processing() if self.gated else nullcontext():
            if self.commit_first:
                await stream.ack(event)
                await self._commit_first({message.tp: message.offset + 1}, place(message))
                if self.after_commit is not None:
                    self.after_commit(stage)
            try:
                try:
                    yield
                except Unavailable:
                    raise  # not the record's fault: neither dead-lettered nor acked; the stage retries it
                except RejectedRecord as exc:
                    # Per record: DEBUG; the dead-letter count and the DLQ itself say it.
                    log.debug("%s: dead-lettering %s (%s)", stage, place(message), exc,
                              extra=record_fields(message, stage=stage))
                    await self.dead_letter(message, stage=stage, code=exc.code, reason=exc.reason, error=exc)
                except Exception as exc:
                    if self._fenced(exc):
                        raise
                    if self._abandons(exc):
                        await self._abandon(stream, [event], lambda _message: stage, exc)
                        return
                    log.exception("%s: failed on %s; dead-lettering it", stage, place(message),
                                  extra=record_fields(message, stage=stage))
                    await self.dead_letter(message, stage=stage, code="processing_error",
                                           reason=f"{type(exc).__name__}: {exc}", error=exc)
            except Exception as exc:
                if not self._fenced(exc):
                    raise
                # Another worker owns the partition now (the fenced-restart fix): the record's
                # outputs are in an aborted transaction and it comes again to its owner. It is
                # acked all the same: a revocation waits until every delivered record is acked
                # (Consumer.wait_empty) and would hang; nothing a fenced worker acks is committed
                # (its commits are refused, and it stops).
                log.warning("%s: %s left unprocessed: this worker was fenced", stage, place(message),
                            extra=record_fields(message, stage=stage))
                await self._stop_fenced(exc)
                if not self.commit_first:
                    await stream.ack(event)
                return
            self.memory.remember(message.tp, message.offset)
            if not self.commit_first:
                await stream.ack(event)

    @asynccontextmanager
    async def processing_batch(self, stream: StreamT, events: list[EventT], *,
                               stage: str | Callable[[Message], str],
                               before_ack: Callable[[], None] | None = None) -> AsyncIterator[Batch]:
        """:meth:`processing` for a batch: the same four guarantees, per record.

        The commit gate covers the whole batch (under exactly_once a commit never splits
        it); records set aside by :meth:`Batch.record` are dead-lettered when the body is
        done, then ``before_ack()`` runs (still inside the gate: e.g. counts written once
        per batch), and every record is acked last. An unexpected error outside any
        record's work dead-letters every record of the batch not yet set aside: nothing is
        dropped, and the stage goes on. :class:`Unavailable` leaves the batch neither
        dead-lettered nor acked, for the stage to try again after a wait.
        """
        stage_of = stage if callable(stage) else (lambda _message, _s=stage: _s)
        work = Batch(self, events, stage_of)
        async with self.gate.processing() if self.gated else nullcontext():
            if self.commit_first:
                ack_all(stream, events)
                offsets: dict[TP, int] = {}
                for event in events:
                    tp, offset = event.message.tp, event.message.offset
                    offsets[tp] = max(offsets.get(tp, -1), offset + 1)
                await self._commit_first(offsets, f"a batch of {len(events)} records")
                if self.after_commit is not None:
                    for event in events:
                        self.after_commit(stage_of(event.message))
            abandoned: BaseException | None = None
            try:
                try:
                    yield work
                except Unavailable:
                    raise  # neither dead-lettered nor acked: the stage tries the batch again
                except Exception as exc:
                    if self._fenced(exc):
                        raise
                    if self._abandons(exc):
                        abandoned = exc
                    else:
                        for event in events:
                            if work.ok(event):
                                work.fail_unexpectedly(event, exc)
                if abandoned is not None:
                    await self._abandon(stream, events, stage_of, abandoned)
                    return
                for event, code, reason, error in work.failed:
                    as_current(event)
                    message = event.message
                    if code != "processing_error":
                        log.debug("%s: dead-lettering %s (%s)", stage_of(message), place(message), error,
                                  extra=record_fields(message, stage=stage_of(message)))
                    await self.dead_letter(message, stage=stage_of(message), code=code, reason=reason,
                                           error=error)
                if before_ack is not None:
                    before_ack()
            except Exception as exc:
                if not self._fenced(exc):
                    raise
                log.warning("%s: a batch of %d records left unprocessed: this worker was fenced",
                            stage_of(events[0].message), len(events))
                await self._stop_fenced(exc)
                if not self.commit_first:
                    ack_all(stream, events)
                return
            remember = self.memory.remember
            for event in events:
                message = event.message
                remember(message.tp, message.offset)
            if not self.commit_first:
                ack_all(stream, events)

    # -- dead letters, fences, commits -----------------------------------------------------

    def _abandons(self, error: BaseException) -> bool:
        """Whether ``error`` abandons the work (:meth:`_abandon`) instead of dead-lettering it:
        a dependency's failure, unless the offsets were committed before the work
        (at_most_once), where a restart would not bring the records again: there the records
        are dead-lettered, which keeps them."""
        return not self.commit_first and is_dependency_failure(error)

    async def _abandon(self, stream: StreamT, events: list[EventT], stage_of: Callable[[Message], str],
                       error: BaseException) -> None:
        """A dependency failed in the middle of ``events``' work (the broker, the disk under a
        table's store: :func:`faust_guarantees.dependencies.is_dependency_failure`). Not the
        records' fault: none is dead-lettered or remembered as processed. What the work sent
        before the failure may be in Kafka, so the worker stops uncommitted and starts again
        after a wait (:func:`faust_guarantees.fencing.stop_for_dependency`): under
        exactly_once the broker aborts its open transactions and every record since the last
        commit comes again; under at_least_once the records stay unacked (no commit passes
        them) and come again, their outputs possibly twice."""
        first = events[0].message
        stage = stage_of(first)
        log.error("%s: a dependency failed in the middle of %d records (first %s): %s: %s. None is "
                  "dead-lettered; the worker stops without committing them and starts again",
                  stage, len(events), place(first), type(error).__name__, error, exc_info=error,
                  extra=record_fields(first, stage=stage))
        await stop_for_dependency(self.app, error, f"{stage}: a dependency failed in the middle of a "
                                                   f"batch ({type(error).__name__}: {error})")
        if self.gated and "fenced-restart" in self.guarantees.fixes:
            # exactly_once: the worker is marked fenced, and fenced-restart refuses its commits
            # from now on; acked so that its stop does not wait for them (Consumer.wait_empty).
            ack_all(stream, events)

    async def dead_letter(self, message: Message, *, stage: str, code: str, reason: str,
                          error: BaseException) -> None:
        """Send ``message`` to the dead-letter topic. A send that fails is retried until it
        goes through (the record waits unacked); it raises only once this worker was fenced
        (the record is another worker's now)."""
        app = self.app
        letter = letter_for(message, stage=stage, code=code, reason=reason, error=error, group=app.conf.id,
                            redact=self.redact)
        sent = await send_dead_letter(letter, message, self._send_dead_letter,
                                      max_bytes=app.conf.producer_max_request_size, give_up=self._fenced)
        if sent.reference:
            log.warning("%s: %s is too large to copy into the DLQ (%d bytes); dead-lettered as a reference",
                        stage, place(message), len(message.value or b""),
                        extra=record_fields(message, stage=stage))
        if self.on_dead_letter is not None:
            self.on_dead_letter(message, stage, code, sent.reference)

    async def _send_dead_letter(self, key: bytes | None, value: bytes | None,
                                headers: list[tuple[str, bytes]]) -> None:
        # Awaited: a refusal by the broker (e.g. the DLQ topic's own size limit) must come
        # back here, where it is retried or turned into a reference, not in Faust's flush.
        # Raw: the record's own bytes whatever the DLQ topic's serializers (Faust's default
        # JSON codec would turn a null into the four bytes ``null``).
        await (await self.dead_letters.send(key=key, value=value, headers=headers,
                                            key_serializer="raw", value_serializer="raw"))

    def _fenced(self, error: BaseException) -> bool:
        """The error says this worker was fenced, or it was and is stopping: once fenced,
        its producers fail in several ways (ProducerFenced, 'not in transaction'), all final."""
        return is_fenced(error) or fenced(self.app)

    async def _stop_fenced(self, error: BaseException) -> None:
        """Stop the worker before anything it acks now is committed (the fenced-restart fix;
        its commit would also find the producers fenced, but a send may be the first to tell)."""
        if self.stop_when_fenced:
            await on_fenced(self.app, error)

    async def _commit_first(self, offsets: dict[TP, int], what: str, timeout: float = 5.0) -> None:
        """Commit ``offsets`` at the broker now, before the work (at_most_once only).

        Faust's ``Consumer.commit`` returns without committing when another commit is in
        flight, so the offsets are committed with the consumer's own request. If the group
        is rebalancing the commit is refused or held back: after ``timeout`` the work is
        done anyway (a duplicate is then possible) and the offsets are committed with the
        next regular commit.
        """
        try:
            done = await asyncio.wait_for(self.app.consumer._commit(offsets), timeout)
        except asyncio.TimeoutError:
            done = False
        if not done:
            log.warning("at_most_once: could not commit %s before processing it", what)


class Batch:
    """The work of one batch: each record's body runs in :meth:`record`, which sets a
    refused or failed record aside for the DLQ while the batch goes on."""

    def __init__(self, discipline: Processing, events: list[EventT], stage: Callable[[Message], str]) -> None:
        self._fenced = discipline._fenced
        self.events = events
        self.stage_of = stage
        self.failed: list[Failure] = []
        self._failed_ids: set[int] = set()

    def record(self, event: EventT) -> _RecordScope:
        """One record's work (a ``with`` block), with ``event`` current (see :func:`as_current`):
        a refused record or an unexpected error sets it aside for the DLQ; :class:`Unavailable`,
        a fence and anything not an Exception (cancellation) go up."""
        return _RecordScope(self, event)

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
                if self._fenced(result) or is_dependency_failure(result):
                    raise result
                self.fail_unexpectedly(event, result)
            else:
                done.append(event)
        return done


class _RecordScope:
    """:meth:`Batch.record`'s context manager: a class, not a ``@contextmanager`` generator,
    which cost 4 % of the dedup stage's time at two scopes per event (py-spy, session 16)."""

    __slots__ = ("batch", "event")

    def __init__(self, batch: Batch, event: EventT) -> None:
        self.batch, self.event = batch, event

    def __enter__(self) -> None:
        as_current(self.event)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None or isinstance(exc, Unavailable) or not isinstance(exc, Exception):
            return False  # Unavailable: not the record's fault, the batch is tried again
        if isinstance(exc, RejectedRecord):
            self.batch.fail(self.event, exc.code, exc.reason, exc)
            return True
        if self.batch._fenced(exc) or is_dependency_failure(exc):
            return False  # a dependency's failure, not the record's: the batch is abandoned
        self.batch.fail_unexpectedly(self.event, exc)
        return True


def _queue_taker(stream: StreamT) -> tuple[Any, Callable[[list[Message]], EventT | None]]:
    """The stream's queue, and a function taking its next event as Faust's stream iterator
    would hand it over (faust/_cython/streams.pyx ``_prepare_event``, 0.15): an event from
    before a rebalance is dropped untracked; a new one is tracked as unacked (and appended
    to the list passed, for the sensors: :func:`faust_guarantees.sensors.batch_in`). No
    queue on any other Faust version or channel: every event then comes through the
    iterator."""
    channel = stream.channel
    if not faust.__version__.startswith("0.15.") or not isinstance(channel, ChannelT):
        return None, lambda _tracked: None
    app = stream.app
    queue = channel.queue
    get = queue.get_nowait
    acking = app.topics._acking_topics
    add_unacked = app.consumer._unacked_messages.add
    flow_active = app.flow_control.is_active

    def take(tracked: list[Message]) -> EventT | None:
        event = get()
        if not isinstance(event, EventT):
            return None  # a topic's channel holds events only
        message = event.message
        if not flow_active() or message.generation_id != app.consumer_generation_id:
            return None  # delivered before a rebalance: Faust drops it, never tracked
        if message.topic in acking and not message.tracked:
            message.tracked = True
            add_unacked(message)
            tracked.append(message)
        return event

    return queue, take
