"""The exact-gaps fix.

Every guarantee: Faust commits a partition past an offset it never saw acked when that
offset is the only one missing at the head (Consumer._new_offset: 'min(acked) -
committed > 1'). The tolerance makes up for an off-by-one in its gap bookkeeping
(Consumer._add_gap starts gaps after the committed offset, which is the NEXT offset to
read, and after a seek the read offset means 'next', not 'last read'), so a transaction
marker at the committed offset is never registered. But a real record dropped between
fetch and agent is committed past the same way and lost for good (lab: exactly_once
rebalance at 5,000 events, one event missing from applied and the sink, its account off
by its amount). A seek Faust makes while the fetcher runs (Consumer.seek, called from
the event loop, not the consumer thread) also lets records of a batch fetched BEFORE the
seek through after it; they move the read offset past the re-fetched records, which
Faust then drops (the stall heal's first seek back had no effect). Fix: our seeks (the
stall heal's, seek-after-queue-clear's) run in the consumer thread with the consumer's
flow stopped, so no batch fetched before them is delivered after them; the offsets the
client itself skipped after a seek or between two records (transaction markers, aborted
records) are registered as gaps exactly, from the expected next offset up to the record
it returns; and a commit never passes an offset that is neither acked nor such a gap;
offsets both acked and in a gap count once (a duplicate ended Faust's consecutive run,
robinhood/faust#625). A hole left by a dropped record now stops the partition's commits
until the stall heal delivers the record again. Two more ways to lose records between
fetch and agent, found under a burst of stall-heal seeks (at_least_once, commit interval
0.1 s): (1) stopping the flow ends Faust's getmany in the middle of its batch, and the
client's position is already past the records it did not deliver, in EVERY partition of
the batch; a rebalance seeks every partition afterwards, a seek of one partition did
not, and at a partition's tail nothing ever delivered them (the worker went silent with
lag). (2) Faust's Consumer.wait_for_stopped_flow never waits (_wait_next_records SETS
not_waiting_next_records where it means to clear it), so when the flow resumed before
getmany looked, it went on delivering a batch fetched before the seek. Fix: the client
counts its seeks per partition (in the consumer thread, where seeks and fetches run one
at a time) and each fetch notes the counts; a record fetched before a seek of its
partition that has run since is not delivered, and a partition whose fetched records
were not all delivered (and, when the flow stopped during the batch, the record being
handed over then, whose delivery the stop cancels) is sought back to the first of them,
unless a seek ran since its fetch; a record delivered twice this way is skipped as
already processed (faust_guarantees/memory.py). Faust's recovery seeks (perform_seek)
with the fetcher delivering: records fetched after the client's seek and delivered
before the seek's bookkeeping made the next record look like a jump from the sought
offset, a gap over records that were delivered and then cleared with the queues (CI and
lab, exactly_once crash runs at commit interval 0.1 s: 4 to 28 events lost). Fix:
perform_seek runs with the flow stopped, and with direct-delivery the gaps come only
from what the client returned, never from Faust's read offset.

Cf. faust-streaming#606, #312. Regression tests: unit tests on Faust's own
_new_offset/_add_gap/perform_seek, stock and fixed (test_faust_fixes_unit.py); the
broker test test_a_burst_of_seek_backs_loses_and_repeats_nothing (before: 945 of 2,334
events lost under at_least_once and 1,163 under exactly_once; after: 0 lost, 0
repeated); test_lab.py run in sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .._patch import replace
from ..classes import AppClasses
from .. import state
from ..seeking import quiescent_seek
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "exact-gaps"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:Consumer._wait_next_records": "6218e1969a63",
    "faust.transport.consumer:Consumer.getmany": "4b168d84882a",
    "faust.transport.consumer:Consumer.perform_seek": "0e8c130ff4b0",
    "faust.transport.consumer:Consumer.seek": "b86a9fe05f95",
    "faust.transport.consumer:Consumer._add_gap": "4df2573ded7c",
    "faust.transport.consumer:Consumer.stop_flow": "cf7e875a2b0d",
    "faust.transport.consumer:Consumer._new_offset": "1d2c7ea89a7a",
    "aiokafka.consumer.fetcher:Fetcher.seek_to": "f0ba6aba6c22",
    "aiokafka.consumer.fetcher:Fetcher.request_offset_reset": "e5bd8ba88386",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._fetch_records": "39a2c6c79fc1",
}


class FetchTrack:
    """The offset the client returns next for each stream partition.

    ``expected[tp]`` is the sought offset after a seek, then one past the last
    record delivered; None when not known (never sought, or records of a batch
    were fetched and not delivered), and then no gap is inferred.
    """

    def __init__(self) -> None:
        self.expected: dict[Any, int | None] = {}
        self.seeks: dict[Any, int] = {}

    def sought(self, tp: Any, offset: int | None) -> None:
        self.expected[tp] = offset if offset is not None and offset >= 0 else None
        self.seeks[tp] = self.seeks.get(tp, 0) + 1

    def delivered(self, tp: Any, offset: int) -> tuple[int, int] | None:
        """Record that the client returned ``offset``; the range [from, to) it skipped
        before it, if any (markers, aborted or compacted records: nothing to process)."""
        expected = self.expected.get(tp)
        self.expected[tp] = offset + 1
        if expected is not None and offset > expected:
            return expected, offset
        return None

    def undelivered(self, tp: Any, seeks_before: Mapping[Any, int]) -> None:
        """Records of ``tp`` were fetched and not delivered: what comes next is unknown,
        unless ``tp`` was sought since (``seeks_before``): then it is the sought offset."""
        if self.seeks.get(tp, 0) == seeks_before.get(tp, 0):
            self.expected[tp] = None


def redelivery_offsets(
    fetched: Mapping[Any, Sequence[Any]], yielded: Mapping[Any, int],
    last: tuple[Any, int] | None, flow_stopped: bool,
) -> dict[Any, int]:
    """Where to seek each partition of a batch that Faust's getmany did not deliver in
    full: the first record it did not deliver (``yielded[tp]`` records of
    ``fetched[tp]`` were), and, when the flow stopped during the batch, the ``last``
    record delivered ``(tp, offset)``, whose hand-over to the stream the stop cancels."""
    offsets = {tp: records[yielded.get(tp, 0)].offset
               for tp, records in fetched.items() if yielded.get(tp, 0) < len(records)}
    if flow_stopped and last is not None:
        tp, offset = last
        offsets[tp] = min(offsets.get(tp, offset), offset)
    return offsets


async def _redeliver(consumer: Any, offsets: Mapping[Any, int], fetch_epochs: Mapping[Any, int]) -> None:
    """Seek each partition back to ``offsets[tp]``: records fetched and never delivered,
    unless the partition was sought since its records were fetched (that seek says what
    comes next). Decided in the consumer thread, where seeks and fetches run one at a
    time, so a seek queued meanwhile (the stall heal's) is never overridden."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return
    client = thread._ensure_consumer()
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        if tp not in assigned:
            continue  # revoked: the rebalance seeks it
        try:
            sought = await thread.call_thread(seek_unless_moved, client, tp, fetch_epochs.get(tp, 0), offset)
        except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile; the rebalance seeks it
            log.warning("exact-gaps: seeking %s back to %d failed (%r)", tp, offset, exc)
            continue
        if sought:
            state.of(consumer.app).intervened(NAME, "redeliver")
            log.info("exact-gaps: %s records from %d were fetched and not delivered (the flow "
                     "stopped mid-batch); sought back to deliver them", tp, offset)
            consumer._read_offset[tp] = offset if offset else None
            _track(consumer).sought(tp, offset)


def seek_epochs(client: Any) -> dict[Any, int]:
    """How many seeks of each partition the client has run (counted by the patched
    Fetcher.seek_to): the live dict, read from the event loop, written in the thread."""
    return client._fetcher.__dict__.setdefault("_seek_epochs", {})


def seek_unless_moved(client: Any, tp: Any, epoch: int, offset: int) -> bool:
    """In the consumer thread: seek ``tp`` to ``offset`` if no seek ran since ``epoch``."""
    if seek_epochs(client).get(tp, 0) != epoch:
        return False
    client.seek(tp, offset)
    return True


def count_seeks() -> None:
    """Count every seek an aiokafka client runs, per partition (:func:`seek_epochs`).

    aiokafka builds its Fetcher itself, out of any app's reach: process-wide, every
    client's seeks are counted (one dict write per seek); only a fixed app's consumer
    thread reads the counts."""
    from aiokafka.consumer.fetcher import Fetcher

    stock_seek_to = Fetcher.seek_to
    stock_request_offset_reset = Fetcher.request_offset_reset

    def seek_to(self: Any, tp: Any, offset: int) -> Any:
        epochs = self.__dict__.setdefault("_seek_epochs", {})
        epochs[tp] = epochs.get(tp, 0) + 1  # one dict write, atomic under the GIL
        return stock_seek_to(self, tp, offset)

    def request_offset_reset(self: Any, tps: Any, strategy: Any) -> Any:
        # seek_to_beginning/end (seek-uncommitted-partitions): a seek too. Uncounted, a
        # redelivery seek decided on a fetch from before it overrode it (exact-gaps).
        epochs = self.__dict__.setdefault("_seek_epochs", {})
        for tp in tps:
            epochs[tp] = epochs.get(tp, 0) + 1
        return stock_request_offset_reset(self, tps, strategy)

    replace(Fetcher, "seek_to", seek_to)
    replace(Fetcher, "request_offset_reset", request_offset_reset)


def _patch_seek_epochs(classes: AppClasses) -> None:
    """Note the seek counts with each fetch: a record fetched before a seek of its
    partition is stale once the seek ran."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    stock_fetch_records = AIOKafkaConsumerThread._fetch_records

    async def _fetch_records(self: Any, consumer: Any, active_partitions: Any, timeout: Any = None,
                             max_records: Any = None) -> Any:
        records = await stock_fetch_records(self, consumer, active_partitions, timeout=timeout,
                                            max_records=max_records)
        epochs = seek_epochs(consumer)
        self._fetch_epochs = {tp: epochs.get(tp, 0) for tp in records or ()}
        return records

    count_seeks()
    classes.replace(AIOKafkaConsumerThread, "_fetch_records", _fetch_records)


def _track(consumer: Any) -> FetchTrack:
    track = consumer.__dict__.get("_fetch_track")
    if track is None:
        track = consumer.__dict__["_fetch_track"] = FetchTrack()
    return track


def strict_new_offset(acked: list[int], committed: int | None) -> tuple[int | None, int]:
    """Faust's Consumer._new_offset, except that the acked offsets (sorted, merged with
    the gaps below their maximum) must start AT the committed offset, the next offset
    to read: (offset to commit or None, how many acked offsets it takes from the front)."""
    if not acked or (committed is not None and acked[0] > committed):
        return None, 0
    from faust.utils.functional import consecutive_numbers

    batch = next(consecutive_numbers(acked))
    return batch[-1] + 1, len(batch)


def _patch_consumer(classes: AppClasses) -> None:
    from faust.transport.consumer import Consumer

    stock_wait_next_records = Consumer._wait_next_records
    stock_getmany = Consumer.getmany
    stock_perform_seek = Consumer.perform_seek
    stock_seek = Consumer.seek
    stock_stop_flow = Consumer.stop_flow

    def stop_flow(self: Consumer) -> None:
        self.__dict__["_flow_stops"] = self.__dict__.get("_flow_stops", 0) + 1
        stock_stop_flow(self)

    async def _wait_next_records(self: Consumer, timeout: float) -> Any:
        records, active = await stock_wait_next_records(self, timeout)
        self._fetched_batch = records or {}
        thread = getattr(self, "_thread", None)
        self._fetched_epochs = getattr(thread, "_fetch_epochs", {}) if records else {}
        return records, active

    async def getmany(self: Consumer, timeout: float) -> Any:
        track = _track(self)
        self._fetched_batch = {}
        self._fetched_epochs = {}
        seeks_before = dict(track.seeks)
        stops_before = self.__dict__.get("_flow_stops", 0)
        generation = self.app.consumer_generation_id
        thread = getattr(self, "_thread", None)
        epochs = seek_epochs(thread._ensure_consumer()) if thread is not None else None
        yielded: dict[Any, int] = {}
        last: tuple[Any, int] | None = None
        acks_enabled_for = self.app.topics.acks_enabled_for
        async for tp, message in stock_getmany(self, timeout):
            yielded[tp] = yielded.get(tp, 0) + 1
            if epochs is not None and epochs.get(tp, 0) != self._fetched_epochs.get(tp, 0):
                # Fetched before a seek of its partition that has run since (the flow
                # resumed before Faust's getmany noticed it stopped): it comes again from
                # the sought offset; delivered now it would move the read offset past it.
                continue
            last = (tp, message.offset)
            skipped = track.delivered(tp, message.offset)
            if skipped is not None and acks_enabled_for(message.topic):
                gap = self._gap[tp]
                gap.addi(*skipped)
                gap.merge_overlaps()
            yield tp, message
        for tp, records in self._fetched_batch.items():
            if yielded.get(tp, 0) < len(records):
                track.undelivered(tp, seeks_before)  # stock getmany stopped early (flow stopped)
        offsets = redelivery_offsets(self._fetched_batch, yielded, last,
                                     self.__dict__.get("_flow_stops", 0) != stops_before)
        if offsets and self.app.consumer_generation_id == generation:  # else the rebalance seeks
            await _redeliver(self, offsets, self._fetched_epochs)

    def _sought(self: Consumer, tp: Any, offset: int | None) -> None:
        _track(self).sought(tp, offset)
        if offset is not None and self._gap.get(tp):
            self._gap[tp].chop(offset, float("inf"))  # inferred from records that come again

    async def perform_seek(self: Consumer) -> None:
        # With the flow stopped, like every other seek of ours: Faust's recovery seeks
        # with the fetcher delivering (tables/recovery.py _resume_streams), and records
        # fetched after the client's seek but delivered before the bookkeeping below made
        # the next record look like a jump from the sought offset: a gap over records
        # that were delivered, then cleared with the queues (lab, CI: 4 to 28 events lost
        # per exactly_once crash run at commit interval 0.1 s).
        await quiescent_seek(self, lambda: _perform_seek(self))

    async def _perform_seek(self: Consumer) -> None:
        await stock_perform_seek(self)
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp in self.assignment():
            if acks_enabled_for(tp.topic):  # stream partitions; changelogs are not acked
                read = self._read_offset.get(tp)  # None where the base is (never committed)
                _sought(self, tp, read if read is not None else self._committed_offset.get(tp))

    async def seek(self: Consumer, partition: Any, offset: int) -> None:
        thread = getattr(self, "_thread", None)
        if thread is None:  # not a threaded (aiokafka) consumer
            await stock_seek(self, partition, offset)
        else:  # in the consumer thread, as Faust's own perform_seek, not from the event loop
            await thread.call_thread(thread._ensure_consumer().seek, partition, offset)
            self._read_offset[partition] = offset if offset else None
        _sought(self, partition, offset)

    async def _add_gap(self: Consumer, tp: Any, offset_from: int, offset_to: int) -> None:
        # Stock starts a gap after the committed offset; the committed offset is the next
        # offset to read, so a marker AT it was never a gap (hence stock's tolerance).
        committed = self._committed_offset[tp]
        if committed is not None and offset_from < committed:
            offset_from = committed
        if offset_from <= offset_to:
            self._gap[tp].addi(offset_from, offset_to + 1)
            self._gap[tp].merge_overlaps()

    def _new_offset(self: Consumer, tp: Any) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:  # as stock: fold the gaps below the highest acked offset into acked
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                stuff_to_add: list[int] = []
                for entry in candidates:
                    stuff_to_add.extend(range(entry.begin, entry.end))
                new_max_offset = max(stuff_to_add[-1], max_offset + 1)
                acked.extend(stuff_to_add)
                gap_for_tp.chop(0, new_max_offset)
        # Stock registers a gap up to AND including the record after it, so the same offset
        # can be both a gap and acked; a duplicate ends the consecutive run and each commit
        # then takes one run only (robinhood/faust#625).
        acked[:] = sorted(set(acked))
        offset, taken = strict_new_offset(acked, self._committed_offset[tp])
        if taken:
            batch = acked[:taken]
            acked[:taken] = []
            self._acked_index[tp].difference_update(batch)
        return offset

    for name, fixed in (("stop_flow", stop_flow), ("_wait_next_records", _wait_next_records),
                        ("getmany", getmany), ("perform_seek", perform_seek), ("seek", seek),
                        ("_add_gap", _add_gap), ("_new_offset", _new_offset)):
        classes.replace(Consumer, name, fixed)


def install(guarantees: Guarantees) -> None:
    _patch_seek_epochs(guarantees.classes)
    _patch_consumer(guarantees.classes)
