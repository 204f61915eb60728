"""The mechanism of fixes whose failure cannot be provoked on demand against the broker.

Both failures show up only intermittently (under load) in real runs; here the
stock and the fixed Faust methods get exactly the state those runs had:

- shutdown-commit: a consumer whose final commit raises aiokafka's
  IllegalOperation during SIGTERM (benchmark exactly_once runs hung after it), and
  an exactly_once periodic commit after the stop ended the transactions (benchmark
  exactly_once runs at commit interval 0.1 s exited 1 on SIGTERM);
- changelog-metadata: a metadata snapshot listing a just-created changelog with
  0 partitions (CI lab runs dead-lettered valid events after it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from types import SimpleNamespace

import faust
import pytest
from aiokafka.errors import IllegalOperation
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

import faust_guarantees
from faust_guarantees import guard, seeking
from faust_guarantees.classes import standalone
from faust_guarantees.fixes import (
    changelog_metadata,
    commit_gate,
    exact_gaps,
    fenced_restart,
    livelock_position,
    persisted_offsets,
    recovery_highwater,
    recovery_idle_wait,
    revoked_producers,
    seek_uncommitted_partitions,
    shutdown_commit,
    source_partition_transactions,
)
from faust_guarantees.state import Guarantees

#: What a fix's install() gets in these tests: the fixes below touch classes only.
NO_APP = Guarantees(SimpleNamespace())


def _fixed(fix, upstream, name=None):
    """``fix`` installed for no app: its subclass of ``upstream``, or that class's method
    ``name``. Faust's own classes stay stock (the kit changes an app's subclasses only)."""
    guarantees = Guarantees(SimpleNamespace())
    fix.install(guarantees)
    cls = guarantees.classes.of(upstream)
    return cls if name is None else getattr(cls, name)


class _ConsumerWhoseCommitFails:
    app = SimpleNamespace(in_transaction=True, should_stop=True)

    async def commit(self, start_new_transaction: bool = True) -> bool:
        raise IllegalOperation("Not in the middle of a transaction")


def _stock():
    return Consumer.commit_and_end_transactions


def test_stock_faust_lets_a_failed_final_commit_abort_the_shutdown():
    with pytest.raises(IllegalOperation):
        asyncio.run(_stock()(_ConsumerWhoseCommitFails()))


def test_with_the_fix_a_failed_final_commit_is_logged_and_the_shutdown_goes_on(caplog):
    fixed = _fixed(shutdown_commit, Consumer, "commit_and_end_transactions")
    with caplog.at_level(logging.WARNING, logger=shutdown_commit.__name__):
        asyncio.run(fixed(_ConsumerWhoseCommitFails()))
    assert "the final commit failed" in caplog.text and "Not in the middle of a transaction" in caplog.text


class _EosConsumer:
    """What Consumer.commit and commit_and_end_transactions touch, with aiokafka's rule for a
    transactional producer: offsets can be sent only inside a transaction, and a commit with
    ``start_new_transaction=False`` leaves the producer outside one."""

    def __init__(self, *, stopping: bool, exactly_once: bool = True, cls: type = Consumer) -> None:
        self.cls = cls  # Faust's Consumer, or the fix's subclass of it
        self.app = SimpleNamespace(client_only=False, in_transaction=exactly_once, should_stop=stopping)
        self.loop = None
        self.in_transaction = exactly_once
        self.commits = 0
        self._commit_fut = None

    async def commit(self, topics=None, start_new_transaction: bool = True) -> bool:
        return await self.cls.commit(self, topics, start_new_transaction=start_new_transaction)

    async def maybe_wait_for_commit_to_finish(self) -> bool:
        return False

    async def force_commit(self, topics=None, start_new_transaction: bool = True) -> bool:
        if self.app.in_transaction and not self.in_transaction:
            raise IllegalOperation("Not in the middle of a transaction")
        self.commits += 1
        self.in_transaction = self.app.in_transaction and start_new_transaction
        return True


async def _stop_then_periodic_commit(consumer: _EosConsumer) -> bool:
    """The order of a SIGTERM: the stop's final commit ends the transactions, then the
    consumer's periodic commit task fires once more before it is cancelled."""
    consumer.loop = asyncio.get_running_loop()
    await consumer.cls.commit_and_end_transactions(consumer)
    return await consumer.cls.commit(consumer)


def test_stock_faust_commits_outside_a_transaction_after_the_stop_ended_them():
    with pytest.raises(IllegalOperation, match="Not in the middle of a transaction"):
        asyncio.run(_stop_then_periodic_commit(_EosConsumer(stopping=True)))


def test_with_the_fix_no_commit_follows_the_stop_that_ended_the_transactions():
    consumer = _EosConsumer(stopping=True, cls=_fixed(shutdown_commit, Consumer))
    assert asyncio.run(_stop_then_periodic_commit(consumer)) is False
    assert consumer.commits == 1  # the stop's own final commit, and nothing after it


def test_the_fix_leaves_commits_after_a_revocation_and_under_at_least_once_alone():
    """A revocation ends the transactions too, but Faust begins new ones for the partitions
    it keeps; and at_least_once commits have no transaction to be outside of."""
    fixed = _fixed(shutdown_commit, Consumer)

    revoked = _EosConsumer(stopping=False, cls=fixed)
    with pytest.raises(IllegalOperation):  # the commit is attempted: not skipped by the fix
        asyncio.run(_stop_then_periodic_commit(revoked))

    at_least_once = _EosConsumer(stopping=True, exactly_once=False, cls=fixed)
    assert asyncio.run(_stop_then_periodic_commit(at_least_once)) is True
    assert at_least_once.commits == 2


class _MetadataSnapshot:
    """The consumer's view of partition counts, as Faust's table check reads it."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def topic_partitions(self, topic: str) -> int | None:
        return self.counts.get(topic)


class _Table:
    """The attributes Collection._verify_source_topic_partitions reads."""

    name = "seen-events"
    changelog_topic_name = "app-seen-events-changelog"

    def __init__(self, counts: dict[str, int]) -> None:
        self.app = type("App", (), {"consumer": _MetadataSnapshot(counts)})()
        self._verified_source_topics_for_partitions: set[str] = set()


def _verify():
    from faust.tables.base import Collection

    return (Collection._verify_source_topic_partitions,
            _fixed(changelog_metadata, Collection, "_verify_source_topic_partitions"))


def test_a_changelog_missing_from_the_metadata_snapshot_is_not_a_partition_mismatch():
    from faust.exceptions import PartitionsMismatch

    stock, fixed = _verify()
    not_yet_known = {"app.events": 4, "app-seen-events-changelog": 0}
    with pytest.raises(PartitionsMismatch, match="has 0 partitions"):
        stock(_Table(not_yet_known), "app.events")
    table = _Table(not_yet_known)
    fixed(table, "app.events")  # no error, and not cached as verified
    assert table._verified_source_topics_for_partitions == set()
    table.app.consumer.counts["app-seen-events-changelog"] = 4
    fixed(table, "app.events")
    assert table._verified_source_topics_for_partitions == {"app.events"}
    with pytest.raises(PartitionsMismatch, match="has 8 partitions"):
        fixed(_Table({"app.events": 4, "app-seen-events-changelog": 8}), "app.events")


class _TransactionManager:
    """What TransactionManager.send reads, on a fresh worker whose consumer metadata does not
    list the just-created changelog yet (key_partition answers None)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int | None, str | None]] = []
        groups = {"app.events": 0, "app-seen-events-changelog": 0, "app-__assignor-__leader": 1}
        self.app = SimpleNamespace(conf=SimpleNamespace(id="app"), assignor=SimpleNamespace(
            _topic_groups=groups, group_for_topic=groups.__getitem__))
        self.consumer = SimpleNamespace(key_partition=lambda topic, key, partition=None: None)
        self.producer = SimpleNamespace(send=self._send)

    async def _send(self, topic, key, value, partition, timestamp, headers, *, transactional_id=None):
        self.sent.append((partition, transactional_id))


def test_a_changelog_write_goes_to_its_partition_s_transaction_before_the_metadata_knows_it():
    """Stock sends the write outside any transaction (transactional_id None); the fix sends it
    to partition 1's transactional producer, the one that commits source partition 1."""
    from faust.transport.consumer import TransactionManager

    fixed = _fixed(source_partition_transactions, TransactionManager, "send")
    args = ("app-seen-events-changelog", b'"evt-1"', b"1.0", 1, None, None)
    stock_manager, fixed_manager = _TransactionManager(), _TransactionManager()
    asyncio.run(fixed._stock(stock_manager, *args))
    asyncio.run(fixed(fixed_manager, *args))
    assert stock_manager.sent == [(None, None)]
    assert fixed_manager.sent == [(1, "app-0-1")]


class _ConsumerThreadNeverFetched:
    """A consumer thread under exactly_once whose client has assigned a changelog partition
    and not fetched it yet: no cached last stable offset; the broker says 42."""

    consumer = SimpleNamespace(in_transaction=True)

    def _ensure_consumer(self):
        async def end_offsets(partitions):
            return {tp: 42 for tp in partitions}

        return SimpleNamespace(last_stable_offset=lambda tp: None, end_offsets=end_offsets)


def test_recovery_reads_the_changelog_s_highwater_from_the_broker_before_any_fetch():
    """Stock answers None (recovery then reads nothing: highwater -1); the fix asks the broker."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    fixed = _fixed(recovery_highwater, AIOKafkaConsumerThread, "_highwaters")
    tp = ("app-balances-changelog", 2)
    assert asyncio.run(fixed._stock(_ConsumerThreadNeverFetched(), [tp])) == {tp: None}
    assert asyncio.run(fixed(_ConsumerThreadNeverFetched(), [tp])) == {tp: 42}


def test_recovery_idle_wait_caps_only_the_changelog_queue_wait(monkeypatch):
    """recovery-idle-wait: tables/recovery.py's one asyncio.wait_for (5 s, twice, before
    Faust looks for trailing transaction markers) waits at most RECOVERY_IDLE_S."""
    from faust.tables import recovery

    monkeypatch.setattr(recovery, "asyncio", asyncio)
    recovery_idle_wait.install(NO_APP)
    assert isinstance(recovery.asyncio, recovery_idle_wait._RecoveryAsyncio)
    assert recovery.asyncio.TimeoutError is asyncio.TimeoutError and recovery.asyncio.sleep is asyncio.sleep

    async def idle_wait() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await recovery.asyncio.wait_for(asyncio.Event().wait(), timeout=5.0)
        return loop.time() - started

    monkeypatch.setattr(recovery_idle_wait, "RECOVERY_IDLE_S", 0.05)
    assert asyncio.run(idle_wait()) < 1.0


# -- exact-gaps ---------------------------------------------------------------------------

TP3 = ("payments.events", 3)
TP4 = ("payments.events", 4)
TP5 = ("payments.unique", 5)


def test_a_head_hole_of_one_offset_stops_the_commit():
    """Stock Faust commits past a single never-acked offset at the head (here 45: a
    record dropped between fetch and agent is then lost); the fix does not."""
    assert exact_gaps.strict_new_offset([46, 47, 48], committed=45) == (None, 0)
    assert exact_gaps.strict_new_offset([45, 46, 47, 50], committed=45) == (48, 3)
    assert exact_gaps.strict_new_offset([0, 1], committed=None) == (2, 2)


def test_offsets_the_client_skipped_after_a_seek_are_a_gap():
    """After a seek to 45 the client returns 47 first: 45-46 hold no record for us
    (a commit marker, an aborted record), so they are a gap and commits go on."""
    track = exact_gaps.FetchTrack()
    track.sought(TP3, 45)
    assert track.delivered(TP3, 47) == (45, 47)
    assert track.delivered(TP3, 48) is None
    assert track.delivered(TP3, 52) == (49, 52)


def test_nothing_is_inferred_when_the_next_offset_is_unknown():
    track = exact_gaps.FetchTrack()
    assert track.delivered(TP3, 10) is None  # never sought
    track.undelivered(TP3, dict(track.seeks))  # records of a batch were fetched and not delivered
    assert track.delivered(TP3, 20) is None
    track.sought(TP3, None)  # a partition without a committed offset
    assert track.delivered(TP3, 0) is None


def test_a_batch_cut_short_by_a_seek_leaves_the_sought_offset_expected():
    """The seek stops the flow, Faust's getmany drops the rest of its batch: what comes
    next is the sought offset, not unknown."""
    track = exact_gaps.FetchTrack()
    track.sought(TP3, 10)
    before = dict(track.seeks)
    track.delivered(TP3, 10)
    track.sought(TP3, 11)
    track.undelivered(TP3, before)
    assert track.delivered(TP3, 13) == (11, 13)


def _records(*offsets: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o) for o in offsets]


def test_records_fetched_and_not_delivered_are_sought_back_in_every_partition():
    """The flow stopped (a seek of ANOTHER partition) after getmany had yielded 2 of
    TP3's 4 records and none of TP4's: the client's position is past all of them, so
    both partitions go back to their first undelivered record, and TP3 to the record
    whose hand-over the stop cancelled."""
    fetched = {TP3: _records(10, 11, 12, 13), TP4: _records(40, 41)}
    yielded = {TP3: 2}
    assert exact_gaps.redelivery_offsets(fetched, yielded, (TP3, 11), flow_stopped=True) == {TP3: 11, TP4: 40}
    assert exact_gaps.redelivery_offsets(fetched, yielded, (TP3, 11), flow_stopped=False) == {TP3: 12, TP4: 40}


def test_a_batch_delivered_in_full_is_not_sought():
    fetched = {TP3: _records(10, 11), TP4: _records(40)}
    assert exact_gaps.redelivery_offsets(fetched, {TP3: 2, TP4: 1}, (TP4, 40), flow_stopped=False) == {}
    # the flow stopped while the batch's last record was handed over: only that one again
    assert exact_gaps.redelivery_offsets(fetched, {TP3: 2, TP4: 1}, (TP4, 40), flow_stopped=True) == {TP4: 40}


class _Client:
    """The aiokafka client side of a seek: its fetcher counts seeks per partition."""

    def __init__(self, epochs: dict) -> None:
        self._fetcher = SimpleNamespace(_seek_epochs=dict(epochs))
        self.sought: list[tuple] = []

    def seek(self, tp, offset) -> None:
        self._fetcher._seek_epochs[tp] = self._fetcher._seek_epochs.get(tp, 0) + 1
        self.sought.append((tp, offset))


def test_a_partition_sought_since_its_fetch_is_left_to_that_seek():
    """The stall heal's seek of TP4 ran in the consumer thread after the batch was
    fetched (epoch 3 -> 4): whatever the batch left undelivered comes again from the
    heal's offset, and seeking TP4 forward again would skip records."""
    client = _Client({TP3: 1, TP4: 4})
    assert exact_gaps.seek_unless_moved(client, TP3, 1, 12) is True
    assert exact_gaps.seek_unless_moved(client, TP4, 3, 40) is False
    assert client.sought == [(TP3, 12)]


def test_redelivery_leaves_revoked_and_since_sought_partitions_alone():
    client = _Client({TP3: 2, TP4: 5})

    async def call_thread(fun, *args):
        return fun(*args)

    thread = SimpleNamespace(_ensure_consumer=lambda: client, call_thread=call_thread)
    consumer = SimpleNamespace(assignment=lambda: {TP3, TP4}, _thread=thread, _read_offset={}, app=SimpleNamespace())
    # fetched at epochs TP3: 2, TP4: 4; the heal sought TP4 since (5); TP5 is not assigned
    asyncio.run(exact_gaps._redeliver(consumer, {TP3: 12, TP4: 40, TP5: 7}, {TP3: 2, TP4: 4, TP5: 0}))
    assert client.sought == [(TP3, 12)]
    assert consumer._read_offset == {TP3: 12}
    assert exact_gaps._track(consumer).expected[TP3] == 12


def _consumer_state(acked: list[int], committed: int):
    from collections import defaultdict

    from intervaltree import IntervalTree

    return SimpleNamespace(
        _acked=defaultdict(list, {TP3: list(acked)}), _acked_index=defaultdict(set, {TP3: set(acked)}),
        _gap=defaultdict(IntervalTree), _committed_offset=defaultdict(lambda: None, {TP3: committed}),
    )


def _exact_gaps_consumer() -> type:
    """Faust's Consumer with exact-gaps applied (its subclass for no app; Faust's own
    Consumer stays stock)."""
    classes = standalone()
    exact_gaps._patch_consumer(classes)
    return classes.of(Consumer)


def test_stock_faust_commits_past_a_record_nobody_acked_and_the_fix_does_not():
    """The mechanism of the lost event, on Faust's own Consumer._new_offset: record 45
    was dropped between fetch and agent, 46-48 were processed."""
    stock = getattr(Consumer._new_offset, "_stock", Consumer._new_offset)
    assert stock(_consumer_state([46, 47, 48], committed=45), TP3) == 49, "stock: 45 is committed past"
    fixed = _exact_gaps_consumer()
    assert fixed._new_offset(_consumer_state([46, 47, 48], committed=45), TP3) is None
    state = _consumer_state([46, 47, 48], committed=45)
    state._gap[TP3].addi(45, 46)  # 45 was a commit marker the client skipped: a gap
    assert fixed._new_offset(state, TP3) == 49


def test_a_gap_may_start_at_the_committed_offset():
    """The committed offset is the next offset to read: a commit marker there is a gap.
    Stock _add_gap starts gaps one later, so the marker stays a hole."""
    stock = getattr(Consumer._add_gap, "_stock", Consumer._add_gap)
    state = _consumer_state([46], committed=45)
    asyncio.run(stock(state, TP3, 45, 45))
    assert not state._gap[TP3], "stock: nothing registered"
    fixed = _exact_gaps_consumer()
    asyncio.run(fixed._add_gap(state, TP3, 45, 45))
    assert fixed._new_offset(state, TP3) == 47


class _Flow:
    """A consumer's flow switches, recording what happens in which order."""

    def __init__(self, active: bool = True) -> None:
        self.flow_active = active
        self.steps: list[str] = []
        self.app = SimpleNamespace(consumer_generation_id=7)

    def stop_flow(self) -> None:
        self.flow_active = False
        self.steps.append("stop")

    def resume_flow(self) -> None:
        self.flow_active = True
        self.steps.append("resume")

    async def wait_for_stopped_flow(self) -> None:
        self.steps.append("fetcher idle")


def test_a_seek_is_made_with_the_fetcher_stopped():
    consumer = _Flow()

    async def seek() -> None:
        consumer.steps.append(f"seek (flow {'on' if consumer.flow_active else 'off'})")

    asyncio.run(seeking.quiescent_seek(consumer, seek))
    assert consumer.steps == ["stop", "fetcher idle", "seek (flow off)", "resume"]


def test_a_rebalance_keeps_the_flow_it_stopped():
    consumer = _Flow(active=False)  # a rebalance stopped it

    async def seek() -> None:
        consumer.steps.append("seek")

    asyncio.run(seeking.quiescent_seek(consumer, seek))
    assert consumer.steps == ["seek"] and not consumer.flow_active
    consumer = _Flow()

    async def seek_during_a_new_generation() -> None:
        consumer.app.consumer_generation_id += 1

    asyncio.run(seeking.quiescent_seek(consumer, seek_during_a_new_generation))
    assert consumer.steps == ["stop", "fetcher idle"], "the flow is the new rebalance's to resume"


def test_an_offset_both_acked_and_in_a_gap_does_not_split_the_commit():
    """robinhood/faust#625: [10, 11, 11, 12] is two consecutive runs to Faust."""
    stock = getattr(Consumer._new_offset, "_stock", Consumer._new_offset)
    state = _consumer_state([10, 11, 12], committed=10)
    state._gap[TP3].addi(11, 12)  # Faust's own _add_gap includes the record after the gap
    assert stock(state, TP3) == 12, "stock: the duplicate 11 ends the run (12 waits for the next commit)"
    fixed = _exact_gaps_consumer()
    state = _consumer_state([10, 11, 12], committed=10)
    state._gap[TP3].addi(11, 12)
    assert fixed._new_offset(state, TP3) == 13


# -- livelock-position ------------------------------------------------------------------


def _thread_with_a_partition_awaiting_its_position():
    """What AIOKafkaConsumerThread.verify_event_path reads: a real aiokafka partition state
    of a partition assigned but not yet positioned, a fetch already polled, a monitor."""
    from aiokafka.consumer.subscription_state import TopicPartitionState

    async def new_state() -> TopicPartitionState:  # aiokafka creates a future: needs a loop
        return TopicPartitionState(assignment=None)

    state = asyncio.run(new_state())
    state.highwater, state.timestamp = 10, 1_000
    assignment = SimpleNamespace(active=True, state_value=lambda tp: state)
    client = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment))))
    app = SimpleNamespace(monitor=SimpleNamespace(stream_inbound_time={}),
                          topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    return SimpleNamespace(
        _ensure_consumer=lambda: client, consumer=SimpleNamespace(app=app), time_started=0.0,
        tp_stream_timeout_secs=300.0, tp_fetch_request_timeout_secs=300.0,
        _verify_aiokafka_event_path=lambda now, tp: False,
    )


def _verify_event_path():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return AIOKafkaConsumerThread.verify_event_path


def test_stock_faust_crashes_on_a_partition_without_a_position():
    from faust.types import TP

    stock = getattr(_verify_event_path(), "_stock", _verify_event_path())
    with pytest.raises(AssertionError):
        stock(_thread_with_a_partition_awaiting_its_position(), 1.0, TP("app.events", 0))


def test_with_the_fix_a_partition_without_a_position_is_not_checked_yet():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.types import TP

    fixed = _fixed(livelock_position, AIOKafkaConsumerThread, "verify_event_path")
    assert getattr(fixed, "_fixed", False)
    assert fixed(_thread_with_a_partition_awaiting_its_position(), 1.0, TP("app.events", 0)) is None


def test_the_gated_commit_gives_up_on_a_buffer_that_will_never_drain():
    """A fenced worker's ProducerBuffer crashed ('Can't send messages while not in
    transaction') with records left in it; the commit waiting for it to drain held the
    revocation's commit and the worker's stop forever. Now the wait ends, and the
    commit is skipped (the records would be missing from their transactions)."""
    import asyncio
    from types import SimpleNamespace

    _drain = commit_gate._drain

    def event(is_set: bool) -> asyncio.Event:
        e = asyncio.Event()
        if is_set:
            e.set()
        return e

    async def scenario(buffer_crashed: bool) -> bool:
        buffer = SimpleNamespace(size=3, _in_flight=0, _crashed=event(buffer_crashed), should_stop=False,
                                 message_sent=asyncio.Event())
        app = SimpleNamespace(_crashed=event(False))
        return await asyncio.wait_for(_drain(buffer, app), timeout=5)

    assert asyncio.run(scenario(buffer_crashed=True)) is False

    async def drains() -> bool:
        buffer = SimpleNamespace(size=1, _in_flight=0, _crashed=event(False), should_stop=False,
                                 message_sent=asyncio.Event())
        app = SimpleNamespace(_crashed=event(False))

        async def send() -> None:
            await asyncio.sleep(0.05)
            buffer.size = 0
            buffer.message_sent.set()

        task = asyncio.create_task(send())
        done = await asyncio.wait_for(_drain(buffer, app), timeout=5)
        await task
        return done

    assert asyncio.run(drains()) is True


def test_a_never_committed_partition_is_not_committed_past_a_hole_at_its_head():
    """The CI run that lost 21 charges: nothing committed yet, the records at the head
    dropped (a queue clear), the next one acked. Without a base the acked run starts
    anywhere; with the start offset as base the commit waits for the head."""
    tp = TP("t", 0)

    books = SimpleNamespace(_committed_offset=defaultdict(lambda: None))  # Consumer's own books
    assert exact_gaps.strict_new_offset([24, 25], books._committed_offset[tp]) == (26, 2), "stock semantics: no base"
    seek_uncommitted_partitions.set_commit_bases(books, {tp: 0})
    assert exact_gaps.strict_new_offset([24, 25], books._committed_offset[tp]) == (None, 0)
    assert exact_gaps.strict_new_offset([0, 1, 2], books._committed_offset[tp]) == (3, 3)



def test_the_installed_libraries_are_the_code_the_fixes_were_verified_on():
    """Fails after an upgrade of faust-streaming or aiokafka that changed a function a
    fix replaces or relies on: re-verify the fix, then record the new fingerprints."""
    assert guard.current_fingerprints() == {name: dict(guard.upstream(name)) for name in faust_guarantees.FIXES}
    assert guard.unverified(list(faust_guarantees.FIXES)) == []


def test_a_changed_upstream_function_names_the_fix_to_reverify(monkeypatch):
    target = "faust.transport.consumer:Consumer._new_offset"
    monkeypatch.setattr(exact_gaps, "UPSTREAM", {**exact_gaps.UPSTREAM, target: "0" * 12})
    problems = guard.unverified(["exact-gaps", "commit-gate"])
    assert len(problems) == 1 and problems[0].startswith(f"exact-gaps: {target} is not the code it was verified on")
    assert guard.unverified(["commit-gate"]) == [], "only the enabled fixes are checked"


def test_another_library_version_names_the_fixes_that_touch_it():
    problems = guard.unverified(["exact-gaps", "commit-gate", "wipe-unclean-state"],
                                versions={"faust": "0.16.0", "aiokafka": "0.14.0"})
    assert problems == ["faust-streaming 0.16.0 is installed, the fixes were verified on 0.15.3: "
                        "re-verify exact-gaps, commit-gate"]
    problems = guard.unverified(["exact-gaps", "commit-gate"], versions={"faust": "0.15.3", "aiokafka": "0.15.0"})
    assert problems == ["aiokafka 0.15.0 is installed, the fixes were verified on 0.14.0: re-verify exact-gaps"]


def test_an_unverified_upstream_fails_the_install_before_any_patch(monkeypatch):
    problems = ["faust-streaming 0.16.0 is installed, the fixes were verified on 0.15.3: re-verify exact-gaps"]
    monkeypatch.setattr(faust_guarantees, "unverified", lambda enabled: problems)
    with pytest.raises(faust_guarantees.UnverifiedUpstream) as error:  # an app without any attribute: nothing touched
        faust_guarantees.install(SimpleNamespace(), ("exact-gaps",), guarantee="exactly_once")
    assert "re-verify exact-gaps" in str(error.value) and "on_unverified='warn'" in str(error.value)


def test_the_app_names_its_own_settings_in_an_unverified_upstream_error():
    from streams_app.exceptions import UnverifiedUpstream

    error = UnverifiedUpstream(["faust-streaming 0.16.0 is installed, the fixes were verified on 0.15.3: "
                                "re-verify exact-gaps"])
    assert "FAUST_FIXES_UNVERIFIED=warn" in str(error) and "re-verify exact-gaps" in str(error)


class _RecoveringConsumer(_Flow):
    """What Faust's perform_seek touches, with a fetcher that delivers records fetched after
    the client's seek while the seek is still being awaited, when the flow lets it."""

    def __init__(self) -> None:
        super().__init__()
        self._read_offset: dict = {}
        self._committed_offset: defaultdict = defaultdict(lambda: None)
        self._gap: defaultdict = defaultdict(IntervalTree)
        self.app.topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
        self.track = exact_gaps._track(self)

    def assignment(self) -> set:
        return {TP0}

    async def seek_to_committed(self) -> dict:
        # The client is at 17 now; records 21-45 (17-20: markers of an aborted transaction)
        # come back from the next fetch and are delivered while this call is awaited.
        self.steps.append(f"client seek (flow {'on' if self.flow_active else 'off'})")
        if self.flow_active:
            for offset in range(21, 46):
                self.track.delivered(TP0, offset)
        return {TP0: 17}


TP0 = TP("payments.unique", 0)


def test_faust_s_recovery_seek_with_the_fetcher_delivering_makes_delivered_records_a_gap():
    """The CI loss (21 and 28 charges): records delivered during the recovery seek, then
    the seek's bookkeeping, then record 46 looks like a jump from 17 over 21-45."""
    stock_perform_seek = getattr(Consumer.perform_seek, "_stock", Consumer.perform_seek)
    consumer = _RecoveringConsumer()

    async def stock_seek_then_bookkeeping() -> None:  # exact-gaps before this fix
        await stock_perform_seek(consumer)
        consumer.track.sought(TP0, consumer._read_offset[TP0])

    asyncio.run(stock_seek_then_bookkeeping())
    assert consumer.track.delivered(TP0, 46) == (17, 46), "delivered records 21-45 taken for a gap"

    fixed = _exact_gaps_consumer()
    consumer = _RecoveringConsumer()
    asyncio.run(fixed.perform_seek(consumer))
    assert consumer.steps == ["stop", "fetcher idle", "client seek (flow off)", "resume"]
    assert consumer.track.delivered(TP0, 21) == (17, 21), "only the markers before 21 are a gap"


# -- concurrent-commits, lso-consistency-check -------------------------------------------


class _TransactionalProducers:
    """What Producer.commit_transactions touches: one lock and one producer per
    transactional id; each producer logs when each of its steps starts and ends."""

    def __init__(self, ids: list[str]) -> None:
        self.log: list[str] = []
        self._trn_locks = {tid: asyncio.Lock() for tid in ids}
        self._transaction_producers = {tid: self._producer(tid) for tid in ids}

    def _producer(self, tid: str) -> SimpleNamespace:
        async def step(name: str, *args: object) -> None:
            self.log.append(f"{name} {tid}")
            await asyncio.sleep(0.01)
            self.log.append(f"{name} {tid} done")

        return SimpleNamespace(
            send_offsets_to_transaction=lambda offsets, group: step("send_offsets", offsets),
            commit_transaction=lambda: step("commit"), begin_transaction=lambda: step("begin"))


def _commit_two(commit_transactions) -> list[str]:
    producers = _TransactionalProducers(["app-1-0", "app-1-1"])
    asyncio.run(commit_transactions(producers, {"app-1-0": {TP0: 5}, "app-1-1": {TP0: 7}}, "app"))
    return producers.log


def test_stock_faust_commits_each_partition_s_transaction_after_the_previous_one():
    from faust.transport.drivers.aiokafka import Producer

    stock = getattr(Producer.commit_transactions, "_stock", Producer.commit_transactions)
    log = _commit_two(stock)
    assert log.index("begin app-1-0 done") < log.index("send_offsets app-1-1"), log


def test_with_the_fix_the_transactions_of_all_partitions_commit_at_once():
    from faust.transport.drivers.aiokafka import Producer

    from faust_guarantees.fixes import concurrent_commits

    log = _commit_two(_fixed(concurrent_commits, Producer, "commit_transactions"))
    assert log.index("send_offsets app-1-1") < log.index("send_offsets app-1-0 done"), log
    assert all(f"{step} {tid} done" in log for step in ("send_offsets", "commit", "begin")
               for tid in ("app-1-0", "app-1-1")), "every step of every transaction, as stock"


def test_lso_consistency_check_is_switched_off_for_the_app_only():
    import faust

    from faust_guarantees.fixes import lso_consistency_check

    app, other = faust.App("lso-1", autodiscover=False), faust.App("lso-2", autodiscover=False)
    lso_consistency_check.install(Guarantees(app))
    assert app.conf.recovery_consistency_check is False and other.conf.recovery_consistency_check is True


@pytest.mark.parametrize("fixed", [False, True], ids=["stock", "fixed"])
def test_at_least_once_persists_the_changelog_offset_at_the_commit_not_per_record(fixed):
    """Stock Faust under at_least_once: a RocksDB put of the persisted offset for every
    changelog record acknowledged. Fixed: the latest one is kept and written once, when the
    source partition with its number commits."""
    from faust.tables.base import Collection
    from faust.tables.manager import TableManager

    puts = []
    store = SimpleNamespace(set_persisted_offset=lambda tp, offset: puts.append((tp, offset)))
    manager = _fixed(persisted_offsets, TableManager).__new__(_fixed(persisted_offsets, TableManager))
    manager._pending_persisted_offsets = {}
    table = SimpleNamespace(data=store, app=SimpleNamespace(in_transaction=False, tables=manager))
    sent = _fixed(persisted_offsets, Collection, "_on_changelog_sent") if fixed else Collection._on_changelog_sent
    changelog, other = TP("app-seen-events-changelog", 2), TP("app-seen-events-changelog", 3)
    for tp, offset in ((changelog, 10), (changelog, 11), (other, 5), (changelog, 12)):
        sent(table, SimpleNamespace(result=lambda tp=tp, offset=offset: SimpleNamespace(topic_partition=tp, offset=offset)))
    if not fixed:
        assert puts == [(changelog, 10), (changelog, 11), (other, 5), (changelog, 12)]
        return
    assert puts == []
    manager.on_commit({TP("payments.raw", 2): 100, TP("payments.events", 2): 7})
    assert puts == [(changelog, 12)]
    manager.on_commit({TP("payments.raw", 3): 40})
    assert puts == [(changelog, 12), (other, 5)]


@pytest.mark.parametrize("fixed", [False, True], ids=["stock", "fixed"])
def test_a_commit_failing_after_the_sender_died_of_a_fence_stops_the_worker_as_fenced(fixed):
    """CI on a913dd7: the zombie worker's sender met the fence first (aiokafka's transaction
    manager went fatal with ProducerFenced); the commit then failed with an AssertionError
    ('Invalid state transition'), and the worker crashed without saying it was fenced: a
    clean-marked stop. Fixed: the commit reads the fence behind the error and stops the worker
    as fenced (unclean, restored from the changelog at the restart)."""
    import faust
    from aiokafka.errors import ProducerFenced
    from aiokafka.producer.transaction_manager import (
        TransactionManager as AioTransactions,
    )
    from faust.transport.consumer import TransactionManager

    async def scenario():
        app = faust.App(f"fence-behind-{fixed}", autodiscover=False)
        app.assignor.group_for_topic = lambda topic: 0
        crashed: list[BaseException] = []

        async def crash(error: BaseException) -> None:
            crashed.append(error)

        app.crash = crash
        manager = AioTransactions("fence-behind-0-2", 60000)
        manager.set_pid_and_epoch(7, 0)
        manager.begin_transaction()
        manager.fatal_error(ProducerFenced())  # the sender's produce response said fenced

        class Producer:
            _transaction_producers = {"fence-behind-%s-0-2" % fixed: SimpleNamespace(_txn_manager=manager)}

            async def commit_transactions(self, by_id, group_id, start_new_transaction=True):
                manager.committing_transaction()  # what aiokafka's commit_transaction does first

        transactions = TransactionManager.__new__(_fixed(fenced_restart, TransactionManager) if fixed
                                                  else TransactionManager)
        transactions.app, transactions.producer = app, Producer()
        outcome = await transactions.commit({TP("fence-behind.raw", 2): 10})
        return outcome, crashed, faust_guarantees.fenced(app)

    if not fixed:
        with pytest.raises(AssertionError, match="Invalid state transition"):
            asyncio.run(scenario())
        return
    outcome, crashed, was_fenced = asyncio.run(scenario())
    assert outcome is False and was_fenced and len(crashed) == 1 and isinstance(crashed[0], ProducerFenced)


@pytest.mark.parametrize("threaded", [False, True], ids=["pending", "threaded"])
def test_the_buffer_count_without_settings_lookups_is_faust_s_size(threaded):
    """direct-delivery counts the producer buffer per message without Faust's settings
    lookup; it must count what ProducerBuffer.size counts."""
    from faust.transport.producer import ProducerBuffer

    from faust_guarantees.fixes.direct_delivery import buffered

    async def scenario():
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=threaded))
        if threaded:
            buffer.queue = asyncio.Queue()
        for n in range(3):
            (buffer.queue if threaded else buffer.pending).put_nowait(n)
        return buffer.size, buffered(buffer)

    size, count = asyncio.run(scenario())
    assert size == count == 3


@pytest.mark.parametrize("fixed", [False, True], ids=["stock", "fixed"])
def test_the_producer_of_a_partition_lost_to_a_standby_is_stopped(fixed):
    """A worker loses partition 0 of its source topic and keeps it as a standby (the new
    assignment): stock Faust maps revoked partitions to producers skipping standbys, so the
    producer of partition 0 stays; when partition 0 comes back after another worker used
    it, that producer's epoch is stale and the worker is fenced for nothing."""
    from faust.transport.consumer import TransactionManager

    raw_0, raw_1 = TP("rp.raw", 0), TP("rp.raw", 1)
    stopped: list[str] = []

    class Producer:
        _transaction_producers = {"rp-1-0": object(), "rp-1-1": object()}

        async def stop_transaction(self, tid):
            stopped.append(tid)
            self._transaction_producers.pop(tid, None)

        async def maybe_begin_transaction(self, tid):
            pass

    manager = TransactionManager.__new__(_fixed(revoked_producers, TransactionManager) if fixed
                                         else TransactionManager)
    manager.app = SimpleNamespace(conf=SimpleNamespace(id="rp"), assignor=SimpleNamespace(
        group_for_topic=lambda topic: 1, is_standby=lambda tp: tp == raw_0))
    manager.producer = Producer()
    manager.log = logging.getLogger("test")
    manager.transactional_id_format = "{group_id}-{tpg.group}-{tpg.partition}"
    asyncio.run(manager.on_rebalance({raw_1}, {raw_0}, set()))
    assert stopped == (["rp-1-0"] if fixed else [])


def test_recovery_waits_for_a_changelog_record_still_on_its_way():
    """verified-restore-end: Faust's end-of-restore check (tables/recovery.py
    detect_aborted_tx) declares a partition done once the client's position reaches the
    high watermark, even while a record the client handed over is still on its way to the
    recovery. The fixed position stays short of the high watermark while the broker holds
    a committed record the recovery has not applied; markers only: done as stock."""
    import faust

    from faust_guarantees.fixes import verified_restore_end as fix

    app = faust.App("kit-restore-end", autodiscover=False, processing_guarantee="exactly_once")
    faust_guarantees.install(app)
    balances, seen = TP("app-balances-changelog", 0), TP("app-seen-changelog", 1)
    # Faust keeps high watermarks as the last offset (the end-of-changelog commit marker).
    recovery = SimpleNamespace(in_recovery=True, active_highwaters={balances: 10, seen: 20},
                               active_offsets={balances: 5, seen: 19})
    probes: list[dict] = []

    def broker(first):
        async def probe(_bootstrap, ranges):
            probes.append(dict(ranges))
            return {tp: first.get(tp) for tp in ranges}
        return probe

    def position(tp, found, probe):
        return asyncio.run(fix.verified_position(app, recovery, tp, found, probe=probe))

    # Stock decides "done" from the position alone: 11 >= 10.
    on_its_way = broker({balances: 8})  # offset 8 is committed; the recovery applied through 5
    assert position(balances, 11, on_its_way) == 9, "short of the high watermark: the check waits"
    assert probes == [{balances: (6, 11), seen: (20, 21)}], "one probe for every partition in the check"
    assert position(seen, 21, on_its_way) == 21, "seen: markers only, from the same probe"
    assert len(probes) == 1
    assert position(balances, 7, on_its_way) == 7, "a position short of it is left alone"

    recovery.active_offsets[balances] = 8
    markers_only = broker({})
    assert position(balances, 11, markers_only) == 11, "nothing committed left: done, as stock"
    assert probes[-1] == {balances: (9, 11), seen: (20, 21)}

    async def unreadable(_bootstrap, _ranges):
        raise TimeoutError("an open transaction")

    recovery.__dict__.pop("_kit_restore_verdicts")
    assert position(balances, 11, unreadable) == 9, "not verified: not done"
    recovery.in_recovery = False
    assert position(balances, 11, unreadable) == 11, "outside recovery: the client's position"
    assert type(app.consumer).position._fixed


def _raw_message(key, value, headers):
    from faust.types import Message

    return Message(topic="rd.raw", partition=2, offset=41, timestamp=1.0, timestamp_type=0,
                   headers=headers, key=key, value=value, checksum=None)


@pytest.mark.parametrize(("key", "value", "headers"),
                         [(b"k", b"{\"a\": 1}", [("h", b"1")]), (None, None, []), (b"", b"\xff\x00", [])],
                         ids=["bytes", "nulls", "not-utf8"])
def test_a_raw_bytes_delivery_puts_the_event_the_conductor_would(key, value, headers):
    """direct-delivery puts a raw-bytes stream's events in its queue without the conductor's
    decode: the event must be the one the conductor's decode makes (key, value, headers,
    message) and the message referenced once, as the conductor's incref(1)."""
    from faust_guarantees.fixes.direct_delivery import RawDelivery, takes_raw_bytes

    async def scenario():
        app = faust.App("rd-test", broker="kafka://127.0.0.1:1")
        topic = app.topic("rd.raw", key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")
        assert takes_raw_bytes(topic)
        stock = await topic.decode(_raw_message(key, value, headers), propagate=True)
        message = _raw_message(key, value, headers)
        delivery = RawDelivery(app)
        assert delivery.channel({topic}) is topic
        delivery.put(topic, message)
        return stock, topic.queue.get_nowait(), message

    stock, event, message = asyncio.run(scenario())
    assert (event.key, event.value, event.headers) == (stock.key, stock.value, stock.headers)
    assert event.message is message and message.refcount == 1


def test_a_raw_bytes_delivery_tells_the_consumer_of_pressure_with_faust_s_tp():
    """The queue's pressure callbacks take the partition out of the fetch and back: the
    consumer wants Faust's TP (a message carries aiokafka's TopicPartition, which
    Consumer._get_active_partitions refuses: the first run of this path crashed the agent)."""
    from aiokafka.structs import TopicPartition

    from faust_guarantees.fixes.direct_delivery import RawDelivery

    told: list[tuple[str, object]] = []

    class Consumer:
        def on_buffer_full(self, tp):
            told.append(("full", tp))

        def on_buffer_drop(self, tp):
            told.append(("drop", tp))

    app = SimpleNamespace(create_event=None, consumer=Consumer(),
                          sensors=SimpleNamespace(on_topic_buffer_full=lambda tp: None))
    high, drop = RawDelivery(app)._callbacks(TopicPartition("rd.raw", 2))
    high()
    drop()
    assert told == [("full", TP("rd.raw", 2)), ("drop", TP("rd.raw", 2))]
    assert all(type(tp) is TP for _, tp in told)


def test_a_stream_that_decodes_its_records_takes_the_conductor_s_delivery():
    """Only raw bytes skip the decode: typed keys or values, another serializer, or a
    partition read by two streams go through the conductor."""
    from faust_guarantees.fixes.direct_delivery import RawDelivery, takes_raw_bytes

    app = faust.App("rd-test-2", broker="kafka://127.0.0.1:1")
    raw = app.topic("a", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    assert not takes_raw_bytes(app.topic("b", key_type=str, value_type=bytes, value_serializer="raw"))
    assert not takes_raw_bytes(app.topic("c", key_type=bytes, value_type=bytes, key_serializer="raw",
                                         value_serializer="json"))
    assert not takes_raw_bytes(app.topic("d"))
    twin = app.topic("a", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    assert RawDelivery(app).channel({raw, twin}) is None
