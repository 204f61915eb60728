"""The external database the sink charges into: SQLite by default, PostgreSQL by DSN.

This stands for any system outside Kafka (a payment provider, a bank, an email
server). Kafka transactions cannot reach it, so whether a redelivered event
charges twice depends only on how the row is written:

- ``naive``: a plain ``INSERT`` with no key; every delivery is a new charge.
- ``idempotent``: the idempotency key is the event id, a UNIQUE constraint
  guards it, and the insert is ``ON CONFLICT DO NOTHING``: the first delivery
  charges, every later one is a no-op that the database itself enforces.
- ``transactional`` ("storing offsets outside Kafka"): every charge row carries
  the record it came from (topic, partition, offset) under a UNIQUE constraint,
  written in the same statement as the charge. A record delivered again (a
  crash between the database commit and the Kafka commit, a rebalance) is
  refused by the database, so the Kafka commit no longer decides whether the
  effect repeats. It guards against redelivery of the same record, not against
  two records carrying one event (an upstream at-least-once duplicate): that
  needs exactly_once upstream or an idempotency key.

  The textbook form of this pattern stores one position per partition (the
  last offset + 1) and seeks there on assignment. That assumes records reach
  the sink in offset order, and Faust does not guarantee it: a record it drops
  between fetch and agent (a stream queue cleared on recovery, see
  faust_guarantees) comes again only after LATER records were
  processed. The position then jumps over the dropped records and the seek
  skips them for good (lab, exactly_once / crash-after-effect, seed 7: 3
  events never charged). Per-record identity has no such hole: the consumer
  resumes at Kafka's committed offset, which never passes an unprocessed
  record, and whatever was charged since is refused.

Every mode writes ``event_id`` so duplicates can be counted afterwards:
``duplicate_charges = rows - distinct event ids``.

Outages
-------
A database restart must delay charges, never lose them, fail them or leave
the ledger broken afterwards:

- PostgreSQL connections come from a small ``psycopg_pool.AsyncConnectionPool``
  (1..4). Each is checked on checkout; a connection that broke is discarded by
  the pool, which reconnects in the background. Nothing connects before the
  first call (importing agents/sink.py builds a Ledger).
- Every statement runs in its own transaction (:meth:`Ledger.charge_many`: a
  batch's statements in one), rolled back on any error, so a failed statement
  never leaves a connection in "current transaction is aborted" for the
  statements after it, and a batch is charged whole or not at all.
- Transient errors (connection refused or lost, server shutting down or
  starting up, no pooled connection in time, SQLite "database is locked") are
  retried with tenacity: exponential backoff with full jitter, capped at 5 s
  between tries, for as long as the outage lasts (streams_app/retrying.py).
  A refusal of the record's data (a constraint violation, a value the column cannot
  hold) is not an outage: it is raised at once as :class:`ChargeRefused`. Any other
  database error (privileges or the table taken away, a read-only server after a
  failover) is the dependency's: retried like an outage (:func:`is_transient`). :attr:`Ledger.outage`,
  :attr:`Ledger.retries` and :attr:`Ledger.last_error` tell operators.
- An ambiguous failure (the connection is lost after COMMIT was sent: the
  charge may or may not be in) is retried like any outage. In idempotent and
  transactional modes the UNIQUE constraint turns the retry into a no-op when
  the lost COMMIT went through (the call then returns False: the charge was
  made, by the attempt whose answer was lost). In naive mode the retry is a
  second charge, exactly like a redelivery: that is the mode's documented
  flaw, shown by the lab, and kept.

SQLite runs its blocking driver on one dedicated thread, so the event loop
never waits on disk and one connection is never shared between threads.
PostgreSQL uses psycopg's async driver on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed
from tenacity import RetryCallState

from common.redact import mask_url

from .exceptions import ChargeRefused, SinkError
from .retrying import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

#: PostgreSQL pool bounds: the sink charges one event at a time per agent, the
#: dashboard reads stats now and then; a few connections are plenty.
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4
#: Seconds to open one PostgreSQL connection, and to wait for a pooled one, before
#: the try counts as failed (and is retried).
CONNECT_TIMEOUT_S = 5
CHECKOUT_TIMEOUT_S = 5.0
#: The pool's own background reconnect backs off 1, 2, 4... s; ending it after this
#: long lets the next checkout start a fresh one, so a database that is back is
#: found within seconds however long it was down.
RECONNECT_TIMEOUT_S = 5.0
#: The server ends a session idle this long inside a transaction, releasing its locks.
#: The ledger's transactions never wait on anything but their own statements, so only a
#: worker that stopped mid-transaction (SIGSTOP, a long GC or VM pause, a zombie after a
#: rebalance) is idle in one; without this limit its row locks would hold every worker
#: that charges the same keys (and the rebalance that waits for them) until it resumed.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000
#: A statement waiting this long for a lock (a migration's ALTER TABLE, an operator's LOCK
#: TABLE, another worker's rows) or running this long fails, as an outage does: the sink's
#: try must end (under exactly_once it holds the commit gate, and with it every stage's
#: commits, and the broker aborts a transaction open for 60 s).
LOCK_TIMEOUT_MS = 2_000
STATEMENT_TIMEOUT_MS = 5_000
_SESSION_OPTIONS = (f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS} "
                    f"-c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}")
#: A server that stops answering (a paused VM, a network that drops packets, SIGSTOP) sends no
#: error at all: each wait for it (a statement, the commit) is bounded on this side too, longer
#: than STATEMENT_TIMEOUT_MS so that a server that answers says why. psycopg then tries to
#: cancel the query for up to 10 s more before it gives the connection up (the pool drops it).
NO_ANSWER_S = 8.0
#: How long SQLite waits for another writer's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0
#: stats() serves the dashboard: it must answer, so it gives up after this long.
STATS_GIVE_UP_AFTER_S = 3.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id              {pk},
    event_id        TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,          -- NULL in naive mode: NULLs never conflict
    account         TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    charged_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS charges_event_id ON charges (event_id);
"""

#: transactional mode: the source record of each charge (NULL in the other modes).
_SOURCE_COLUMNS = (("source_topic", "TEXT"), ("source_partition", "INTEGER"), ("source_offset", "BIGINT"))
_SOURCE_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS charges_source "
    "ON charges (source_topic, source_partition, source_offset)"
)

_INSERT = (
    "INSERT INTO charges (event_id, idempotency_key, account, amount, currency, created_at) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT (idempotency_key) DO NOTHING"
)

_INSERT_AT_SOURCE = (
    "INSERT INTO charges (event_id, account, amount, currency, created_at, "
    "source_topic, source_partition, source_offset) "
    "VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
    "ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING"
)

_STATS = (
    "SELECT COUNT(*), COUNT(DISTINCT event_id), COALESCE(SUM(amount), 0) FROM charges"
)


@dataclass(frozen=True)
class ChargeStats:
    charges: int
    charged_events: int
    total_amount: int

    @property
    def duplicate_charges(self) -> int:
        return self.charges - self.charged_events


def is_refusal(exc: BaseException) -> bool:
    """Whether the database refused the statement for the data it carries: a constraint
    (NOT NULL, UNIQUE, CHECK) or a value it cannot store. Retrying cannot help; the record
    is dead-lettered."""
    return isinstance(exc, (psycopg.IntegrityError, psycopg.DataError, sqlite3.IntegrityError, sqlite3.DataError))


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database cannot take this charge now" (retry) rather
    than "the database refused this record" (:func:`is_refusal`, do not).

    Every other database error is the dependency's, not the record's: psycopg's
    OperationalError (connection refused or lost, server shutdown or start-up, too many
    connections, serialization failures, a full disk, the pool's timeouts), and also a
    server that turned read-only (a failover to a standby: 25006), a session the server
    ended (25P03), privileges or the table taken away (42501, 42P01), a corrupt SQLite
    file. Those are retried for as long as they last (the sink waits, nothing is
    dead-lettered) with the error in the log, ``/health`` and the metrics: an operator
    must act. Dead-lettering every record until then would empty the stream into the
    DLQ. A closed pool is final.
    """
    if isinstance(exc, PoolClosed):
        return False
    return isinstance(exc, (psycopg.Error, sqlite3.Error)) and not is_refusal(exc)


@dataclass(frozen=True)
class Charge:
    """One charge for :meth:`Ledger.charge_many`; the source record's position is used in
    ``transactional`` mode only."""

    event_id: str
    account: str
    amount: int
    currency: str
    created_at: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class _Result:
    rowcount: int
    row: tuple[Any, ...] | None


class _Backend(Protocol):
    marker: str

    async def execute(self, sql: str, params: tuple[Any, ...] | None) -> _Result:
        """Run one statement in its own transaction: committed, or rolled back on error."""
        ...

    async def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        """Run one statement per row, all in one transaction; each row's rowcount."""
        ...

    async def close(self) -> None: ...


class _SqliteBackend:
    """One connection on one thread; a local file has no outages worth a pool."""

    marker = "?"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._conn: sqlite3.Connection | None = None

    async def execute(self, sql: str, params: tuple[Any, ...] | None) -> _Result:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._execute, sql, params or ())

    def _execute(self, sql: str, params: tuple[Any, ...]) -> _Result:
        conn = self._connection()
        try:
            cursor = conn.execute(sql, params)
            row = cursor.fetchone() if cursor.description is not None else None
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return _Result(cursor.rowcount, row)

    async def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._execute_many, sql, rows)

    def _execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        conn = self._connection()
        try:
            counts = [conn.execute(sql, params).rowcount for params in rows]
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return counts

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
            try:
                _create_sqlite_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)


def _create_sqlite_schema(conn: sqlite3.Connection) -> None:
    # WAL lets the dashboard read while the sink writes; NORMAL still
    # survives a process crash (only an OS crash may lose the last commit).
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA.format(pk="INTEGER PRIMARY KEY AUTOINCREMENT"))
    columns = {row[1] for row in conn.execute("PRAGMA table_info(charges)")}
    for name, kind in _SOURCE_COLUMNS:  # a database made before these columns existed
        if name not in columns:
            conn.execute(f"ALTER TABLE charges ADD COLUMN {name} {kind}")
    conn.execute(_SOURCE_INDEX)
    conn.commit()


class _PostgresBackend:
    """A small pool, opened on first use in the event loop that uses it."""

    marker = "%s"

    def __init__(self, url: str, *, min_size: int, max_size: int, checkout_timeout: float) -> None:
        self._url = url
        self._checkout_timeout = checkout_timeout
        self._min_size = min_size
        self._max_size = max_size
        self._pool: AsyncConnectionPool | None = None
        self._schema_ready = False
        self._setup = asyncio.Lock()  # binds to a loop on first use, not here

    async def execute(self, sql: str, params: tuple[Any, ...] | None) -> _Result:
        return await _answered(self._execute(sql, params))

    async def _execute(self, sql: str, params: tuple[Any, ...] | None) -> _Result:
        pool = await self._ready_pool()
        # connection(): a broken connection is discarded on return, not reused.
        # transaction(): COMMIT on success, ROLLBACK on any error.
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(sql, params)
            row = await cursor.fetchone() if cursor.description is not None else None
            rowcount = cursor.rowcount
        return _Result(rowcount, row)

    async def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(NO_ANSWER_S) as answer:
                pool = await self._ready_pool()
                async with pool.connection() as conn, conn.transaction():
                    cursor = conn.cursor()
                    counts = []
                    for params in rows:
                        answer.reschedule(loop.time() + NO_ANSWER_S)  # per statement, not per batch
                        await cursor.execute(sql, params)
                        counts.append(cursor.rowcount)
                    answer.reschedule(loop.time() + NO_ANSWER_S)  # the COMMIT
        except TimeoutError as exc:
            raise _no_answer() from exc
        return counts

    async def _ready_pool(self) -> AsyncConnectionPool:
        if self._pool is not None and self._schema_ready:
            return self._pool
        async with self._setup:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self._url, min_size=self._min_size, max_size=self._max_size, open=False,
                    name="ledger", check=AsyncConnectionPool.check_connection,
                    kwargs={"connect_timeout": CONNECT_TIMEOUT_S, "options": _SESSION_OPTIONS},
                    timeout=self._checkout_timeout, reconnect_timeout=RECONNECT_TIMEOUT_S,
                )
                await pool.open(wait=False)  # connects in the background; an outage is fine
                self._pool = pool
            if not self._schema_ready:
                await _create_postgres_schema(self._pool)
                self._schema_ready = True
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


async def _create_postgres_schema(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn, conn.transaction():
        # Two workers starting together would race on CREATE ... IF NOT EXISTS.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('charges schema'))")
        for statement in _SCHEMA.format(pk="BIGSERIAL PRIMARY KEY").split(";"):
            if statement.strip():
                await conn.execute(statement)
        for name, kind in _SOURCE_COLUMNS:
            await conn.execute(f"ALTER TABLE charges ADD COLUMN IF NOT EXISTS {name} {kind}")
        await conn.execute(_SOURCE_INDEX)


async def _answered(call: Awaitable[T]) -> T:
    """``await call``, bounded to NO_ANSWER_S: a server that stops answering is an outage."""
    try:
        async with asyncio.timeout(NO_ANSWER_S):
            return await call
    except TimeoutError as exc:
        raise _no_answer() from exc


def _no_answer() -> psycopg.OperationalError:
    return psycopg.OperationalError(f"the database did not answer within {NO_ANSWER_S:.0f} s")


def _backend_for(url: str, *, pool_min_size: int, pool_max_size: int, checkout_timeout: float) -> _Backend:
    """Choose the driver from the URL scheme; nothing is opened yet."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return _SqliteBackend(Path(url.removeprefix("sqlite:///").removeprefix("sqlite://")))
    if scheme in ("postgresql", "postgres"):
        return _PostgresBackend(url, min_size=pool_min_size, max_size=pool_max_size,
                                checkout_timeout=checkout_timeout)
    raise ValueError(
        f"unsupported sink database {mask_url(url)!r}: "
        "use sqlite:///path/to/file.db or postgresql://user:password@host:port/db"
    )


class Ledger:
    """Charges in the external database; every method is async.

    Outages are retried inside (``retry``, by default for as long as they
    last): a charge call returns once the database took it, or raises
    :class:`ChargeRefused` when the database refused it.
    """

    def __init__(
        self, url: str, *, retry: RetryPolicy | None = None,
        pool_min_size: int = POOL_MIN_SIZE, pool_max_size: int = POOL_MAX_SIZE,
    ) -> None:
        self.url = url
        self._retry = retry or RetryPolicy()
        # A policy that gives up after N s must not wait longer than that for a connection.
        checkout = min(CHECKOUT_TIMEOUT_S, self._retry.give_up_after or CHECKOUT_TIMEOUT_S)
        self._backend = _backend_for(url, pool_min_size=pool_min_size, pool_max_size=pool_max_size,
                                     checkout_timeout=checkout)
        self._outage = False
        self._retries = 0
        self._last_error: str | None = None

    @property
    def target(self) -> str:
        """The database URL with its password masked: for logs and dashboards."""
        return mask_url(self.url)

    @property
    def outage(self) -> bool:
        """True from a transient failure until the next statement that succeeds."""
        return self._outage

    @property
    def retries(self) -> int:
        """Tries repeated after a transient failure, since this ledger was made."""
        return self._retries

    @property
    def last_error(self) -> str | None:
        """The last error seen (transient or refusal), password masked; kept after recovery."""
        return self._last_error

    async def charge_many(self, charges: Sequence[Charge], *, mode: str,
                          policy: RetryPolicy | None = None) -> list[bool]:
        """Record ``charges`` in ONE transaction: per charge, False when the database
        already had it (its idempotency key in ``idempotent`` mode, its source record in
        ``transactional`` mode; never in ``naive``). All or nothing: a refusal of any one
        (ChargeRefused) or an outage leaves none of them charged. ``policy``: the retries
        of this call (the ledger's own by default)."""
        if not charges:
            return []
        if mode == "transactional":
            template = _INSERT_AT_SOURCE
            rows = [(c.event_id, c.account, c.amount, c.currency, c.created_at,
                     c.topic, c.partition, c.offset) for c in charges]
        else:
            template = _INSERT
            rows = [(c.event_id, c.event_id if mode == "idempotent" else None, c.account, c.amount,
                     c.currency, c.created_at) for c in charges]
        sql = template.format(p=self._backend.marker)
        first = charges[0]
        what = (f"charge {first.event_id}" + (f" from {first.topic}[{first.partition}]@{first.offset}"
                                              if mode == "transactional" else "")
                if len(charges) == 1 else f"charge {len(charges)} events from {first.event_id}")
        counts = await self._call(what, lambda: self._backend.execute_many(sql, rows), policy)
        return [count == 1 for count in counts]

    async def stats(self) -> ChargeStats:
        """Count the charges; gives up (SinkError) after a few seconds of outage."""
        policy = self._retry
        if policy.give_up_after is None:
            policy = replace(policy, give_up_after=STATS_GIVE_UP_AFTER_S)
        result = await self._run("read charge stats", _STATS, None, policy)
        row = result.row
        assert row is not None, "SELECT COUNT(*) always returns one row"
        return ChargeStats(int(row[0]), int(row[1]), int(row[2]))

    async def close(self) -> None:
        await self._backend.close()

    async def _run(
        self, what: str, template: str, params: tuple[Any, ...] | None, policy: RetryPolicy | None = None,
    ) -> _Result:
        """Run one statement, retrying outages; raise ChargeRefused on a refusal and
        SinkError when a bounded policy gave up."""
        sql = template.format(p=self._backend.marker)
        return await self._call(what, lambda: self._backend.execute(sql, params), policy)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]], policy: RetryPolicy | None = None) -> T:
        """``await call()`` retrying outages; ChargeRefused on a refusal, SinkError when a
        bounded policy gave up."""
        policy = policy or self._retry
        try:
            result = await policy.run(call, retry_on=is_transient, before_sleep=self._note_retry)
        except (psycopg.Error, sqlite3.Error) as exc:
            if isinstance(exc, PoolClosed):
                raise
            self._last_error = self._describe(exc)
            if is_transient(exc):
                self._outage = True
                raise SinkError(
                    f"{what}: the sink database {self.target} is still unavailable after "
                    f"{policy.give_up_after} s: {self._last_error}"
                ) from exc
            self._outage = False  # it answered: the database is up
            raise ChargeRefused(
                f"{what}: the sink database {self.target} refused it ({self._last_error}); "
                "retrying cannot help: fix the event"
            ) from exc
        self._outage = False
        return result

    def _note_retry(self, state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        self._outage = True
        self._retries += 1
        self._last_error = self._describe(state.outcome.exception())
        log.warning(
            "ledger: %s unavailable (%s); try %d in %.2f s",
            self.target, self._last_error, state.attempt_number + 1, state.next_action.sleep,
        )

    def _describe(self, exc: BaseException | None) -> str:
        return mask_url(f"{type(exc).__name__}: {exc}".strip(), self.url)
