"""``seen-events``: event id -> epoch seconds when the id was first forwarded.

The dedup state. Written by the dedup agent on partitions of ``{prefix}.events``
(keyed by event id, so every copy of an id lands on one partition).

Bounded by ``DEDUP_HORIZON`` in three places, so state does not grow forever:
- reads treat an entry older than the horizon as absent (deterministic, even
  before any cleanup ran);
- the changelog is ``compact,delete`` with ``retention.ms`` = horizon and
  segments rolled at a tenth of it, so the broker drops old ids;
- :meth:`SeenEvents.sweep_expired` deletes expired ids from the local RocksDB store, a
  bounded batch per tick of a timer (no changelog tombstone: the changelog
  retention above keeps a restore from bringing them back).

Not Faust's ``ttl`` store option (RocksDB's TTL database), which this table used
before: with rocksdict 0.3.20-0.3.29 a compaction deletes EVERY row written
before the database was last reopened, as if written in 1970 (rows from one
open survive; open, write, close, reopen, compact: nothing is left). A worker
restarted a few times lost its dedup state at the first compaction and forwarded
ids again (lab, at_most_once / idempotent / random-kills, 1,000 events and 6
kills: 6 to 9 ids twice; partitions whose compaction ran had "records in: 30,
records dropped: 30" in RocksDB's LOG). Stores written with the TTL format are
deleted at start-up and restored from the changelog (streams_app/stores.py
``drop_ttl_stores``). Regression test: tests/unit/test_seen_events_store.py.

A re-send older than the horizon is therefore applied again: pick the horizon
longer than any producer's retry window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson
import rocksdict
from faust.stores.base import SerializedStore
from faust.types import EventT

from faust_guarantees.batching import RecordBatches
from faust_guarantees.processing import as_current
from streams_app import metrics, stores

log = logging.getLogger(__name__)

#: The store options of the table: none, and in particular no ``ttl`` (see above).
STORE_OPTIONS: dict[str, Any] | None = None

#: How often the sweep runs, and how many rows one tick may look at per partition (the
#: event loop is held while it looks at one partition: no agent writes between a row's
#: check and its delete). 6,000 rows a second per partition: a store taking 5,000 new ids
#: a second per partition (the issue's figure) stays bounded; one partition's share of a
#: tick is about 30 ms here (the sweep scans and deletes ~195,000 rows/s: lab/soak.py
#: measures it), and the sweep yields to the agents between partitions. (It was 5,000 rows
#: per 10 s: 500 rows/s, a tenth of what 5,000 ids/s needs.)
SWEEP_INTERVAL = 1.0
SWEEP_BUDGET = 6_000
#: A complete pass that kept rows no older than T has nothing to delete before T + horizon
#: (rows written since are newer), so the partition is not scanned again until then, or for
#: a minute at most (rows restored from the changelog after a rebalance may be older). It
#: scanned every row every second: 4.4 % of a busy worker's time (py-spy) with a 7-day
#: horizon and nothing to delete.
RESCAN_AT_LEAST_EVERY = 60.0

#: The table's key and value encoding, as Faust's ``json`` codec writes a str and a float
#: (faust/utils/json.py: orjson with these options), without its serializer registry:
#: 1 us of each 1.3 us encode and decode went to the registry's lookups (timeit), with
#: each id encoded twice per event (read, then write). tests/unit/test_seen_events_store.py
#: checks it against the store's own encoding.
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


def encode(value: str | float) -> bytes:
    return orjson.dumps(value, option=_JSON_OPTIONS)


def expired(first_seen: float, now: float, horizon: float) -> bool:
    """The one expiry rule, for reads and for the sweep: an id first seen more than
    ``horizon`` seconds (DEDUP_HORIZON) before ``now`` is forgotten."""
    return now - first_seen > horizon


class SeenEvents:
    """The ``seen-events`` table of one app: the dedup stage's reads and writes, and the
    sweep of its local store (a timer declared on the app)."""

    def __init__(self, app: Any) -> None:
        self.horizon: float = app.settings.dedup_horizon
        horizon_ms = int(self.horizon * 1000)
        self.table = app.Table(
            "seen-events",
            key_type=str,
            value_type=float,
            partitions=app.settings.partitions,
            extra_topic_configs={
                "cleanup.policy": "compact,delete",
                "retention.ms": str(horizon_ms),
                "segment.ms": str(max(horizon_ms // 10, 60_000)),
            },
            options=STORE_OPTIONS,
            help="event id -> first seen (epoch s); bounded by DEDUP_HORIZON",
        )
        # Per partition: where the pass in progress resumes, the oldest row it kept, and
        # when the next pass is due (RESCAN_AT_LEAST_EVERY).
        self._resume_at: dict[int, bytes | None] = {}
        self._pass_oldest: dict[int, float] = {}
        self._not_before: dict[int, float] = {}

        async def sweep() -> None:
            await self.sweep_expired()

        app.timer(SWEEP_INTERVAL, name="tables.seen_events.sweep")(sweep)

    def is_duplicate(self, event_id: str, now: float | None = None) -> bool:
        """True when ``event_id`` was forwarded within the dedup horizon. (Read from the store
        itself: the table's own lookup adds a sensor call and a KeyError per new id.)"""
        store = self.table.data
        if isinstance(store, SerializedStore):
            raw = store._get(encode(event_id))
            first_seen = None if raw is None else float(orjson.loads(raw))
        else:  # memory://
            first_seen = store.get(event_id)
        return first_seen is not None and not expired(first_seen, time.time() if now is None else now,
                                                      self.horizon)

    def mark_all_seen(self, rows: RecordBatches, seen: list[tuple[EventT, str]], now: float | None = None) -> None:
        """Remember each ``event_id`` of a batch in its event's partition, all first seen at
        the same ``now`` (encoded once); call only once their outputs can no longer be lost.
        The rows are in the store at once; their changelog records go to Kafka with ``rows``
        (faust_guarantees/batching.py)."""
        first_seen = time.time() if now is None else now
        value = encode(first_seen)
        if not rows.set_encoded_rows(self.table, [(event, encode(event_id), value) for event, event_id in seen]):
            for event, event_id in seen:
                as_current(event)
                rows.set_row(self.table, event_id, first_seen)

    async def sweep_expired(self, now: float | None = None, budget: int = SWEEP_BUDGET) -> int:
        """Delete the ids older than the horizon from this worker's local partitions;
        return how many. Each partition resumes where the previous tick stopped; the
        agents run between partitions."""
        dbs = stores.open_databases(self.table)
        if not dbs:
            return 0  # not a RocksDB store (memory:// in tests): nothing accumulates on disk
        now = time.time() if now is None else now
        deleted = 0
        for partition, db in list(dbs.items()):
            if now < self._not_before.get(partition, 0.0):
                continue
            oldest: list[float] = []
            keys, self._resume_at[partition] = expired_keys(db, now, budget, self._resume_at.get(partition),
                                                            horizon=self.horizon, oldest_kept=oldest)
            self._pass_oldest[partition] = min(self._pass_oldest.get(partition, float("inf")), *oldest)
            if self._resume_at[partition] is None:  # the pass is complete
                self._not_before[partition] = min(self._pass_oldest.pop(partition) + self.horizon,
                                                  now + RESCAN_AT_LEAST_EVERY)
            delete_keys(db, keys)
            deleted += len(keys)
            await asyncio.sleep(0)
        metrics.swept(sum(self._resume_at.get(p, 0) is None for p in dbs), deleted, now)
        if deleted:
            log.info("seen-events: deleted %d ids older than DEDUP_HORIZON from the local store", deleted)
        return deleted


def expired_keys(
    db: Any, now: float, budget: int, after: bytes | None = None, *, horizon: float,
    oldest_kept: list[float] | None = None,
) -> tuple[list[bytes], bytes | None]:
    """Keys of ``db`` (an open rocksdict database of this table) :func:`expired` at
    ``now``, from the key after ``after`` on, looking at no more than ``budget``
    rows; and the last key looked at (None once the end was reached). The oldest
    first-seen time among the rows kept is appended to ``oldest_kept``."""
    found: list[bytes] = []
    last = None
    kept = float("inf")
    items: Iterable[tuple[bytes, bytes]] = db.items(from_key=after) if after is not None else db.items()
    for n, (key, raw) in enumerate(items):
        if n >= budget:
            if oldest_kept is not None:
                oldest_kept.append(kept)
            return found, last
        last = key
        if key == after or key.startswith(b"__faust"):
            continue  # where the last tick stopped; Faust's persisted offset
        try:
            first_seen = float(json.loads(raw))
        except ValueError:
            continue
        if expired(first_seen, now, horizon):
            found.append(key)
        elif first_seen < kept:
            kept = first_seen
    if oldest_kept is not None:
        oldest_kept.append(kept)
    return found, None


def delete_keys(db: Any, keys: list[bytes]) -> None:
    """Delete ``keys`` from one partition's store in one RocksDB write."""
    if keys:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in keys:
            batch.delete(key)
        db.write(batch)
