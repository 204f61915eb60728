"""The relay: unsent outbox rows -> Kafka, at least once, in per-aggregate order.

One batch, in this order::

    claim unsent rows, lowest id first
    publish them (key = aggregate id, headers x-outbox-id, x-event-type)
    WAIT until the broker acknowledged every one (idempotent producer, acks=all)
    mark them sent

Guarantee: every committed outbox row reaches Kafka at least once, and one
aggregate's rows reach it in id order. Marking a row sent only after its ack
means a crash can never leave a row "sent" that Kafka does not hold; the price
is that a crash can publish a row twice. What a SIGKILL does at each point:

* before the publish (crash point ``after_commit``: the orders are committed,
  the relay holds them, nothing is sent): the rows are still unsent, so the
  restarted relay publishes them. Delivered once.
* after the acks, before marking (crash point ``after_publish``): the rows are
  in Kafka AND still unsent, so the restarted relay publishes them again. Kafka
  holds two records per outbox id; the consumer's dedup makes the second a no-op
  (:mod:`outbox.consumer`). Idempotence cannot help here: it removes the
  duplicates of one producer's retries, and the restarted relay is a new producer.
* after marking: nothing to redo.

Arm a crash point with ``OUTBOX_CRASH_AT=after_commit`` or ``after_publish:N``
(the N-th batch to reach it, default 1): the relay SIGKILLs itself there, with
no ``finally``, flush or rollback, as in a power cut.

Per-aggregate order. Rows are published in id order; the record key is the
aggregate id, so one aggregate maps to one partition (for a fixed partition
count); and order within a partition survives retries: aiokafka keeps at most
one produce request in flight per broker connection (Java's
``max.in.flight.requests.per.connection=1``) and puts a failed batch back at the
head of its partition's queue, while idempotence lets the broker reject a
resent batch it already wrote. Each batch is acknowledged in full before the
next is read. Duplicates after a crash repeat an earlier stretch of ids, so
the first occurrences still come in order.

Backends:

* PostgreSQL: the batch is one transaction that claims its rows with ``FOR
  UPDATE SKIP LOCKED`` and holds them until they are marked, so several relays
  can run and never publish the same rows concurrently. SKIP LOCKED alone would
  break per-aggregate order (relay B could publish an aggregate's row 12 while
  relay A still holds row 11), so a claimed row is kept only if no older unsent
  row of its aggregate is outside the batch; the rest wait for a later batch.
* SQLite: holding the database's single write lock while Kafka answers would
  stall every order, so the batch is read in a snapshot, published, and marked
  in a short write transaction. That is only correct for ONE relay per
  database file, which a lock file (``<db>.relay.lock``) enforces: a second relay
  exits with :class:`RelayBusy`. The OS drops the lock when the relay dies.

A publish that fails after aiokafka's own retries ends the process: the rows
are still unsent and a restart publishes them (the ``after_publish`` case).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from aiokafka import AIOKafkaProducer

from outbox import EVENT_TYPE_HEADER, OUTBOX_ID_HEADER
from outbox.schema import Connection, Dialect, connect, create_outbox_schema, iso_utc

log = logging.getLogger(__name__)

CRASH_ENV: Final = "OUTBOX_CRASH_AT"
CRASH_POINTS: Final = {
    "after_commit": "the orders are committed and claimed by the relay; nothing is published yet",
    "after_publish": "Kafka acknowledged the batch (acks=all); its rows are not marked sent yet",
}

_CLAIM_POSTGRES: Final = """
WITH batch AS MATERIALIZED (
    SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
)
SELECT o.id, o.aggregate_id, o.type, o.payload
FROM outbox AS o JOIN batch USING (id)
WHERE NOT EXISTS (
    SELECT 1 FROM outbox AS older
    WHERE older.aggregate_id = o.aggregate_id AND older.sent_at IS NULL AND older.id < o.id
      AND older.id NOT IN (SELECT id FROM batch)
)
ORDER BY o.id
"""
_CLAIM_SQLITE: Final = "SELECT id, aggregate_id, type, payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    aggregate_id: str
    type: str
    payload: str


Publish = Callable[[Sequence[OutboxRow]], Awaitable[None]]


@dataclass
class CrashPoint:
    """Where to SIGKILL the relay (``OUTBOX_CRASH_AT``); ``point=None`` is disarmed."""

    point: str | None = None
    nth: int = 1
    passes: int = 0

    @classmethod
    def parse(cls, spec: str) -> CrashPoint:
        """``""`` -> disarmed; ``after_commit`` or ``after_publish:3``; ValueError otherwise."""
        if not spec:
            return cls()
        point, _, nth = spec.partition(":")
        if point not in CRASH_POINTS:
            raise ValueError(f"{CRASH_ENV}={spec!r}: unknown crash point; use one of {', '.join(CRASH_POINTS)}")
        if nth and not (nth.isdigit() and int(nth) > 0):
            raise ValueError(f"{CRASH_ENV}={spec!r}: expected POINT or POINT:N with N a whole number > 0")
        return cls(point, int(nth or 1))

    def due(self, point: str) -> bool:
        """Count one pass through ``point``; true on the armed point's ``nth`` pass."""
        if point != self.point:
            return False
        self.passes += 1
        return self.passes == self.nth

    def check(self, point: str) -> None:
        """SIGKILL this process if ``point`` is due."""
        if self.due(point):
            print(f"FAULT: SIGKILL at crash point {point} (pass {self.nth})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class RelayConfig:
    db_url: str
    bootstrap: str
    topic: str
    batch_size: int = 500
    interval: float = 0.5
    once: bool = False


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    seconds: float = 0.0


class RelayBusy(RuntimeError):
    """Another relay already serves this SQLite database."""


async def claim_unsent(conn: Connection, limit: int) -> list[OutboxRow]:
    """Return up to ``limit`` unsent rows in id order (on PostgreSQL: locked, order-safe ones only)."""
    claim = _CLAIM_POSTGRES if conn.dialect is Dialect.POSTGRESQL else _CLAIM_SQLITE
    return [OutboxRow(*row) for row in await conn.fetchall(claim, (limit,))]


async def mark_sent(conn: Connection, rows: Sequence[OutboxRow]) -> None:
    placeholders = ", ".join(["%s"] * len(rows))
    await conn.execute(
        f"UPDATE outbox SET sent_at = %s WHERE id IN ({placeholders})",
        (iso_utc(), *(row.id for row in rows)),
    )


async def has_unsent(conn: Connection) -> bool:
    async with conn.transaction(write=False):
        return await conn.fetchone("SELECT 1 FROM outbox WHERE sent_at IS NULL LIMIT 1") is not None


def record_headers(row: OutboxRow) -> list[tuple[str, bytes]]:
    return [(OUTBOX_ID_HEADER, str(row.id).encode()), (EVENT_TYPE_HEADER, row.type.encode())]


async def publish(producer: AIOKafkaProducer, topic: str, rows: Sequence[OutboxRow]) -> None:
    """Send ``rows`` in order; return once the broker acknowledged all of them."""
    acks = [
        await producer.send(
            topic, key=row.aggregate_id.encode(), value=row.payload.encode(), headers=record_headers(row)
        )
        for row in rows
    ]
    await asyncio.gather(*acks)


async def relay_batch(conn: Connection, publish: Publish, limit: int, crash: CrashPoint) -> int:
    """Relay one batch (see the module docstring); return how many rows were published."""
    if conn.dialect is Dialect.POSTGRESQL:
        async with conn.transaction():
            rows = await claim_unsent(conn, limit)
            if rows:
                crash.check("after_commit")
                await publish(rows)
                crash.check("after_publish")
                await mark_sent(conn, rows)
        return len(rows)
    async with conn.transaction(write=False):
        rows = await claim_unsent(conn, limit)
    if rows:
        crash.check("after_commit")
        await publish(rows)
        crash.check("after_publish")
        async with conn.transaction():
            await mark_sent(conn, rows)
    return len(rows)


async def run_relay(config: RelayConfig, stop: asyncio.Event | None = None) -> RelayStats:
    """Relay until ``stop`` is set, or with ``once`` until no unsent row is left."""
    crash = CrashPoint.parse(os.environ.get(CRASH_ENV, ""))
    stop = stop or asyncio.Event()
    conn = await connect(config.db_url)
    try:
        with _sole_relay_on_sqlite(conn):
            await create_outbox_schema(conn)
            producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap, enable_idempotence=True, acks="all")
            await producer.start()
            log.info("relaying outbox rows to topic %s, %d per batch", config.topic, config.batch_size)
            try:
                return await _relay_until_done(conn, partial(publish, producer, config.topic), config, crash, stop)
            finally:
                await producer.stop()
    finally:
        await conn.close()


async def _relay_until_done(
    conn: Connection, publish: Publish, config: RelayConfig, crash: CrashPoint, stop: asyncio.Event
) -> RelayStats:
    stats = RelayStats()
    started = time.monotonic()
    while not stop.is_set():
        published = await relay_batch(conn, publish, config.batch_size, crash)
        if published:
            stats.published += published
            stats.batches += 1
            continue
        # Nothing claimable: either the outbox is drained or (PostgreSQL) another relay holds the rows.
        if config.once and not await has_unsent(conn):
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.interval)
    stats.seconds = time.monotonic() - started
    return stats


@contextlib.contextmanager
def _sole_relay_on_sqlite(conn: Connection) -> Iterator[None]:
    """On SQLite, hold ``<db>.relay.lock`` exclusively for the relay's lifetime."""
    if conn.sqlite_path is None:
        yield
        return
    with open(f"{conn.sqlite_path}.relay.lock", "w", encoding="utf-8") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RelayBusy(f"another relay already serves {conn.sqlite_path} (SQLite allows one)") from None
        yield
