"""The outbox's tables on SQLite and PostgreSQL, and the one connection type that runs them.

Write side (:func:`create_outbox_schema`)::

    orders  (id, customer_id, amount, currency, created_at)      the business row
    outbox  (id, aggregate_id, type, payload JSON, created_at, sent_at NULL)

Read side (:func:`create_consumer_schema`, possibly in another database)::

    processed_outbox_ids (outbox_id PRIMARY KEY, processed_at)   the dedup table
    order_effects   (seq, outbox_id, customer_id, order_id, amount)  an append-only log
    customer_totals (customer_id, orders, amount)                a running total

What the tables guarantee, and why:

* ``outbox.id`` is the event's identity for consumers, so it must never be
  reused: ``GENERATED ALWAYS AS IDENTITY`` on PostgreSQL, ``AUTOINCREMENT`` on
  SQLite (a plain ``INTEGER PRIMARY KEY`` hands out the highest deleted id
  again, and a consumer would drop the new event as a duplicate of the old).
* ``sent_at IS NULL`` marks the relay's work; two partial indexes keep that
  work cheap to find however many sent rows pile up: by id (the relay's scan)
  and by aggregate and id (the per-aggregate order check on PostgreSQL).
* The effect tables have no unique constraint on ``outbox_id`` on purpose: a
  duplicate effect is possible, so only ``processed_outbox_ids`` can prevent it,
  and a test can see when it does not.

:class:`Connection` wraps one DB-API connection (``sqlite3`` or ``psycopg``)
behind the same async interface, so each SQL statement of the outbox is written
once, with ``%s`` placeholders. Every statement runs inside
:meth:`Connection.transaction`, which also serialises the coroutines sharing
the connection: two requests can never interleave their statements in one
transaction. The DB-API calls run on one dedicated thread per connection, off
the event loop (sqlite3 objects must stay on the thread that made them).

URLs follow ``payment_api.store``: ``sqlite:///relative.db``,
``sqlite:////absolute/path.db``, ``postgresql://user:password@host:port/db``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.types.string import TextLoader

from common.redact import mask_url, masked_errors

T = TypeVar("T")
Row = tuple[Any, ...]

SQLITE_BUSY_TIMEOUT_S: Final = 10.0


class Dialect(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


_SQLITE_OUTBOX: Final = (
    """CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        amount INTEGER NOT NULL CHECK (amount > 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        aggregate_id TEXT NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL CHECK (json_valid(payload)),
        created_at TEXT NOT NULL,
        sent_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_unsent_by_aggregate ON outbox (aggregate_id, id) WHERE sent_at IS NULL",
)

_PG_OUTBOX: Final = (
    """CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        amount BIGINT NOT NULL CHECK (amount > 0),
        currency TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id)",
    """CREATE TABLE IF NOT EXISTS outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        aggregate_id TEXT NOT NULL,
        type TEXT NOT NULL,
        payload JSONB NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        sent_at TIMESTAMPTZ
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
    "CREATE INDEX IF NOT EXISTS outbox_unsent_by_aggregate ON outbox (aggregate_id, id) WHERE sent_at IS NULL",
)

_SQLITE_CONSUMER: Final = (
    """CREATE TABLE IF NOT EXISTS processed_outbox_ids (
        outbox_id INTEGER PRIMARY KEY,
        processed_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS order_effects (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        outbox_id INTEGER NOT NULL,
        customer_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        amount INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS customer_totals (
        customer_id TEXT PRIMARY KEY,
        orders INTEGER NOT NULL,
        amount INTEGER NOT NULL
    )""",
)

_PG_CONSUMER: Final = (
    """CREATE TABLE IF NOT EXISTS processed_outbox_ids (
        outbox_id BIGINT PRIMARY KEY,
        processed_at TIMESTAMPTZ NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS order_effects (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        outbox_id BIGINT NOT NULL,
        customer_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        amount BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS customer_totals (
        customer_id TEXT PRIMARY KEY,
        orders BIGINT NOT NULL,
        amount BIGINT NOT NULL
    )""",
)

#: The connection whose transaction the current task is inside, if any.
_in_transaction: ContextVar[Connection | None] = ContextVar("outbox_in_transaction", default=None)


class Connection:
    """One database connection with an async, dialect-neutral interface; see the module docstring."""

    def __init__(self, raw: Any, dialect: Dialect, executor: ThreadPoolExecutor, sqlite_path: str | None) -> None:
        self._raw = raw  # sqlite3.Connection or psycopg.Connection, both DB-API with .execute()
        self.dialect = dialect
        self.sqlite_path = sqlite_path
        self._executor = executor
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[None]:
        """Run the block as one transaction: committed if it returns, rolled back if it raises.

        On SQLite a writing transaction starts with ``BEGIN IMMEDIATE`` (it takes
        the database's write lock at once, waiting up to the busy timeout), so
        writers are serialised and ids are handed out in commit order. A
        reading one is ``BEGIN DEFERRED`` (a snapshot, no lock); on PostgreSQL
        ``BEGIN READ ONLY``.
        """
        if _in_transaction.get() is self:
            raise RuntimeError("transactions on one connection do not nest")
        async with self._lock:
            token = _in_transaction.set(self)
            try:
                await self._run(lambda: self._raw.execute(self._begin(write)))
                try:
                    yield
                except BaseException:
                    await self._run(lambda: self._raw.execute("ROLLBACK"))
                    raise
                await self._run(lambda: self._raw.execute("COMMIT"))
            finally:
                _in_transaction.reset(token)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; return its row count."""
        return await self._statement(sql, params, lambda cursor: cursor.rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._statement(sql, params, lambda cursor: cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._statement(sql, params, lambda cursor: cursor.fetchone())

    async def close(self) -> None:
        await self._run(self._raw.close)
        self._executor.shutdown()

    def _begin(self, write: bool) -> str:
        if self.dialect is Dialect.SQLITE:
            return "BEGIN IMMEDIATE" if write else "BEGIN DEFERRED"
        return "BEGIN" if write else "BEGIN READ ONLY"

    async def _statement(self, sql: str, params: Sequence[Any], result: Callable[[Any], T]) -> T:
        if _in_transaction.get() is not self:
            raise RuntimeError("statements run inside `async with conn.transaction()`")
        text = sql.replace("%s", "?") if self.dialect is Dialect.SQLITE else sql
        return await self._run(lambda: result(self._raw.execute(text, tuple(params))))

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


async def connect(url: str) -> Connection:
    """Open a connection to ``sqlite:///path`` or ``postgresql://...``."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-db")
    loop = asyncio.get_running_loop()
    scheme = urlsplit(url).scheme
    if scheme == "sqlite" and url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        raw: Any = await loop.run_in_executor(executor, lambda: _connect_sqlite(path))
        return Connection(raw, Dialect.SQLITE, executor, path)
    if scheme in ("postgresql", "postgres"):
        raw = await loop.run_in_executor(executor, lambda: _connect_postgres(url))
        return Connection(raw, Dialect.POSTGRESQL, executor, None)
    executor.shutdown()
    raise ValueError(f"unsupported database URL {mask_url(url)!r}: use sqlite:///path.db or postgresql://...")


def _connect_sqlite(path: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; Connection.transaction issues BEGIN itself.
    raw = sqlite3.connect(path, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
    raw.execute("PRAGMA journal_mode = WAL")
    return raw


def _connect_postgres(url: str) -> psycopg.Connection[Row]:
    # autocommit: psycopg opens no transaction of its own; Connection.transaction issues BEGIN.
    with masked_errors(url):  # libpq's errors may quote the URL, password included
        raw = psycopg.connect(url, autocommit=True)
    raw.adapters.register_loader("jsonb", TextLoader)  # payloads come back as the JSON text
    return raw


def iso_utc(epoch_seconds: float | None = None) -> str:
    """Timestamps are passed in as ISO-8601 UTC text: stored as is by SQLite, parsed by PostgreSQL."""
    moment = datetime.now(UTC) if epoch_seconds is None else datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.isoformat(timespec="microseconds")


async def create_outbox_schema(conn: Connection) -> None:
    """Create ``orders`` and ``outbox`` with their indexes, if missing."""
    await _create(conn, _SQLITE_OUTBOX if conn.dialect is Dialect.SQLITE else _PG_OUTBOX)


async def create_consumer_schema(conn: Connection) -> None:
    """Create ``processed_outbox_ids`` and the effect tables, if missing."""
    await _create(conn, _SQLITE_CONSUMER if conn.dialect is Dialect.SQLITE else _PG_CONSUMER)


async def _create(conn: Connection, statements: Sequence[str]) -> None:
    async with conn.transaction():
        if conn.dialect is Dialect.POSTGRESQL:
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide on PostgreSQL: serialise it.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('outbox.schema'))")
        for statement in statements:
            await conn.execute(statement)
