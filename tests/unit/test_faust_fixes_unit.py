"""The mechanism of fixes whose failure cannot be provoked on demand against the broker.

Both failures show up only intermittently (under load) in real runs; here the
stock and the fixed Faust methods get exactly the state those runs had:

- shutdown-commit: a consumer whose final commit raises aiokafka's
  IllegalOperation during SIGTERM (benchmark exactly_once runs hung after it);
- changelog-metadata: a metadata snapshot listing a just-created changelog with
  0 partitions (CI lab runs dead-lettered valid events after it).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import IllegalOperation
from faust.transport.consumer import Consumer

from streams_app import faust_fixes


class _ConsumerWhoseCommitFails:
    async def commit(self, start_new_transaction: bool = True) -> bool:
        raise IllegalOperation("Not in the middle of a transaction")


def _stock():
    method = Consumer.commit_and_end_transactions
    return getattr(method, "_stock", method)


def test_stock_faust_lets_a_failed_final_commit_abort_the_shutdown():
    with pytest.raises(IllegalOperation):
        asyncio.run(_stock()(_ConsumerWhoseCommitFails()))


def test_with_the_fix_a_failed_final_commit_is_logged_and_the_shutdown_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(Consumer, "commit_and_end_transactions", _stock())
    faust_fixes._patch_shutdown_commit()
    with caplog.at_level(logging.WARNING, logger=faust_fixes.__name__):
        asyncio.run(Consumer.commit_and_end_transactions(_ConsumerWhoseCommitFails()))
    assert "the final commit failed" in caplog.text and "Not in the middle of a transaction" in caplog.text


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

    method = Collection._verify_source_topic_partitions
    return getattr(method, "_stock", method), method


def test_a_changelog_missing_from_the_metadata_snapshot_is_not_a_partition_mismatch():
    from faust.exceptions import PartitionsMismatch

    faust_fixes._patch_changelog_metadata()
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


def test_recovery_idle_wait_caps_only_the_changelog_queue_wait(monkeypatch):
    """recovery-idle-wait: tables/recovery.py's one asyncio.wait_for (5 s, twice, before
    Faust looks for trailing transaction markers) waits at most RECOVERY_IDLE_S."""
    from faust.tables import recovery

    monkeypatch.setattr(recovery, "asyncio", asyncio)
    faust_fixes._patch_recovery_idle_wait()
    assert isinstance(recovery.asyncio, faust_fixes._RecoveryAsyncio)
    assert recovery.asyncio.TimeoutError is asyncio.TimeoutError and recovery.asyncio.sleep is asyncio.sleep

    async def idle_wait() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await recovery.asyncio.wait_for(asyncio.Event().wait(), timeout=5.0)
        return loop.time() - started

    monkeypatch.setattr(faust_fixes, "RECOVERY_IDLE_S", 0.05)
    assert asyncio.run(idle_wait()) < 1.0


# -- exact-gaps ---------------------------------------------------------------------------

TP3 = ("payments.events", 3)


def test_a_head_hole_of_one_offset_stops_the_commit():
    """Stock Faust commits past a single never-acked offset at the head (here 45: a
    record dropped between fetch and agent is then lost); the fix does not."""
    acked = [46, 47, 48]
    assert faust_fixes.strict_new_offset(acked, None, committed=45) == (None, 0)
    assert faust_fixes.strict_new_offset([45, 46, 47, 50], None, committed=45) == (48, 3)
    assert faust_fixes.strict_new_offset([0, 1], None, committed=None) == (2, 2)


def test_offsets_the_client_skipped_after_a_seek_are_a_gap():
    """After a seek to 45 the client returns 47 first: 45-46 hold no record for us
    (a commit marker, an aborted record), so they are a gap and commits go on."""
    track = faust_fixes.FetchTrack()
    track.sought(TP3, 45)
    assert track.delivered(TP3, 47) == (45, 47)
    assert track.delivered(TP3, 48) is None
    assert track.delivered(TP3, 52) == (49, 52)


def test_nothing_is_inferred_when_the_next_offset_is_unknown():
    track = faust_fixes.FetchTrack()
    assert track.delivered(TP3, 10) is None  # never sought
    track.undelivered(TP3)  # records of a batch were fetched and not delivered
    assert track.delivered(TP3, 20) is None
    track.sought(TP3, None)  # a partition without a committed offset
    assert track.delivered(TP3, 0) is None


def test_records_fetched_before_the_partitions_latest_seek_are_stale():
    track = faust_fixes.FetchTrack()
    track.sought(TP3, 10)
    batch = track.batch_started()
    assert not track.stale(TP3, batch)
    track.sought(TP3, 5)  # the heal seeks back while that batch is being delivered
    assert track.stale(TP3, batch)
    assert not track.stale(("payments.raw", 0), batch)  # other partitions are not affected
    assert not track.stale(TP3, track.batch_started())
