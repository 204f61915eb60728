"""Durable storage of charges and idempotency keys: one interface, SQLite and PostgreSQL.

Idempotency protocol (what :class:`Store` guarantees on both backends)
---------------------------------------------------------------------
A request carrying an ``Idempotency-Key`` goes through two transactions:

1. :meth:`Store.claim_key` inserts the key row in state ``in_progress`` with
   a random lock token, in a transaction of its own, relying on the primary
   key to let exactly one of several concurrent requests win. It is committed
   *before* any work starts so that a concurrent duplicate sees the row and is
   told to retry later (409) instead of charging a second time. A request
   that finds the row gets, in this order of checks: a mismatch (other
   parameters, 422), the stored response (completed, a replay), a conflict
   (still locked, 409), or the lock itself when the holder's lock is older
   than ``lock_timeout`` (its process crashed mid-way: the key must not stay
   locked forever).
2. :meth:`Store.complete_key` marks the key ``completed`` with the response,
   and inserts the charge, in ONE transaction, conditional on still holding
   the lock token. Either both the charge and the stored response exist or
   neither does, so a crash between the two steps leaves a retryable key and
   no charge, never a charge that a replay would not know about. If the lock
   was taken over meanwhile, nothing is written.

:meth:`Store.release_key` deletes a key whose request failed before
completing, so that a retry need not wait for the lock timeout; it only
deletes ``in_progress`` rows with the caller's token and so can never erase a
completed response.

Requests without a key call :meth:`Store.insert_charge` directly: every such
request is a new charge (the naive mode).

Counters of replays, conflicts and mismatches live in the database as well,
so statistics survive restarts.

Backends are chosen by URL (:func:`store_from_url`): ``sqlite:///path.db``
(SQLAlchemy convention: ``sqlite:////abs/path.db`` is absolute) or
``postgresql://...``; errors show the URL with its password masked. Times are epoch seconds passed in by the caller, which
keeps lock expiry and pruning testable without sleeping.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from common.redact import mask_url, masked_errors
from payment_api.models import Charge

T = TypeVar("T")

IN_PROGRESS: Final = "in_progress"
COMPLETED: Final = "completed"
PG_SCHEMA: Final = "payment_api"


@dataclass(frozen=True)
class Acquired:
    """The caller holds the key's lock and must complete or release it."""

    token: str


@dataclass(frozen=True)
class Replay:
    """The key completed earlier: answer with exactly this stored response."""

    status: int
    body: str


@dataclass(frozen=True)
class InProgress:
    """Another request holds the key's (unexpired) lock: retry later."""


@dataclass(frozen=True)
class Mismatch:
    """The key was first used with other parameters: refuse."""


KeyClaim = Acquired | Replay | InProgress | Mismatch


@dataclass(frozen=True)
class KeyRow:
    """The stored state of an idempotency key, as read by :meth:`Store.claim_key`."""

    fingerprint: str
    state: str
    locked_at: float | None
    response_status: int | None
    response_body: str | None


@dataclass(frozen=True)
class Stats:
    """Totals for dashboards and tests."""

    charges: int
    idempotency_keys: int
    #: distinct ``reference`` values among the charges: with one reference per paid
    #: thing, ``charges - distinct_references`` counts things charged more than once
    distinct_references: int
    total_amount: int
    replays: int
    conflicts: int
    mismatches: int


_COUNTER_BY_CLAIM: Final[dict[type, str]] = {Replay: "replays", InProgress: "conflicts", Mismatch: "mismatches"}


def judge_existing_key(row: KeyRow | None, fingerprint: str, now: float, lock_timeout: float) -> KeyClaim | None:
    """Decide what a request gets for a key that already exists; ``None`` means "take over the lock".

    The fingerprint is checked first: a key reused for another charge is a
    client bug whatever the key's state. A missing row (pruned between the
    insert attempt and this read) is reported as in progress, so the client
    simply retries.
    """
    if row is None:
        return InProgress()
    if row.fingerprint != fingerprint:
        return Mismatch()
    if row.state == COMPLETED:
        assert row.response_status is not None and row.response_body is not None
        return Replay(row.response_status, row.response_body)
    if row.locked_at is not None and now - row.locked_at < lock_timeout:
        return InProgress()
    return None


def new_lock_token() -> str:
    """Return a random token identifying one holder of a key's lock."""
    return secrets.token_hex(16)


class Store(ABC):
    """Storage of charges and idempotency keys; see the module docstring for the protocol."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abstractmethod
    async def insert_charge(self, charge: Charge) -> None:
        """Store a charge made without an idempotency key."""

    @abstractmethod
    async def claim_key(self, key: str, fingerprint: str, now: float, lock_timeout: float) -> KeyClaim:
        """Insert ``key`` locked for this request, or report why that is not possible."""

    @abstractmethod
    async def complete_key(self, key: str, token: str, charge: Charge, status: int, body: str) -> bool:
        """Atomically store the charge and the key's response; ``False`` if the lock was lost."""

    @abstractmethod
    async def release_key(self, key: str, token: str) -> None:
        """Forget a key still locked with ``token`` (its request failed before completing)."""

    @abstractmethod
    async def get_charge(self, charge_id: str) -> Charge | None:
        """Return one charge, or ``None``."""

    @abstractmethod
    async def list_charges(self, account: str | None, limit: int) -> list[Charge]:
        """Return up to ``limit`` charges, oldest first, optionally of one account."""

    @abstractmethod
    async def stats(self) -> Stats:
        """Return totals."""

    @abstractmethod
    async def prune_keys(self, created_before: float) -> int:
        """Delete keys created before ``created_before``; return how many were deleted."""


def store_from_url(url: str) -> Store:
    """Return an unopened store for ``sqlite:///path`` or ``postgresql://`` URLs."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite" and url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ValueError(f"unsupported database URL {mask_url(url)!r}: use sqlite:///path.db or postgresql://...")


_TOTALS: Final = (
    "SELECT (SELECT count(*) FROM charges), (SELECT count(*) FROM idempotency_keys), "
    "(SELECT count(DISTINCT reference) FROM charges), (SELECT coalesce(sum(amount), 0) FROM charges)"
)
_CHARGE_COLUMNS: Final = "id, amount, currency, account, created_at, reference"
_KEY_COLUMNS: Final = "fingerprint, state, locked_at, response_status, response_body"


def _charge_from_row(row: tuple[Any, ...]) -> Charge:
    charge_id, amount, currency, account, created_at, reference = row
    return Charge(
        id=charge_id, amount=amount, currency=currency, account=account, created_at=created_at, reference=reference
    )


# --------------------------------------------------------------------------- SQLite

_SQLITE_SCHEMA: Final = f"""
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    account TEXT NOT NULL,
    created_at TEXT NOT NULL,
    reference TEXT
);
CREATE INDEX IF NOT EXISTS charges_by_account ON charges (account, created_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('{IN_PROGRESS}', '{COMPLETED}')),
    lock_token TEXT,
    locked_at REAL,
    created_at REAL NOT NULL,
    response_status INTEGER,
    response_body TEXT,
    CHECK (state = '{IN_PROGRESS}' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_created_at ON idempotency_keys (created_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class SqliteStore(Store):
    """SQLite (stdlib ``sqlite3``) in WAL mode, the zero-setup default.

    One connection is owned by a dedicated single-thread executor: every
    operation is a whole transaction run on that thread, so operations of
    concurrent requests are serialised without blocking the event loop.
    Writes use ``BEGIN IMMEDIATE`` (take the write lock up front) and a busy
    timeout, which keeps the protocol correct even when another process
    shares the file.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="payment-api-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._submit(self._connect)

    async def close(self) -> None:
        await self._submit(self._disconnect)
        self._executor.shutdown()

    async def insert_charge(self, charge: Charge) -> None:
        await self._transaction(lambda conn: self._insert_charge(conn, charge))

    async def claim_key(self, key: str, fingerprint: str, now: float, lock_timeout: float) -> KeyClaim:
        def claim(conn: sqlite3.Connection) -> KeyClaim:
            token = new_lock_token()
            inserted = conn.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, state, lock_token, locked_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                (key, fingerprint, IN_PROGRESS, token, now, now),
            ).rowcount
            if inserted:
                return Acquired(token)
            found = conn.execute(f"SELECT {_KEY_COLUMNS} FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
            verdict = judge_existing_key(KeyRow(*found) if found else None, fingerprint, now, lock_timeout)
            if verdict is None:
                conn.execute(
                    "UPDATE idempotency_keys SET lock_token = ?, locked_at = ? WHERE key = ?", (token, now, key)
                )
                return Acquired(token)
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (?, 1)"
                " ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
                (_COUNTER_BY_CLAIM[type(verdict)],),
            )
            return verdict

        return await self._transaction(claim)

    async def complete_key(self, key: str, token: str, charge: Charge, status: int, body: str) -> bool:
        def complete(conn: sqlite3.Connection) -> bool:
            updated = conn.execute(
                "UPDATE idempotency_keys SET state = ?, lock_token = NULL, response_status = ?, response_body = ?"
                " WHERE key = ? AND lock_token = ? AND state = ?",
                (COMPLETED, status, body, key, token, IN_PROGRESS),
            ).rowcount
            if updated:
                self._insert_charge(conn, charge)
            return bool(updated)

        return await self._transaction(complete)

    async def release_key(self, key: str, token: str) -> None:
        await self._transaction(
            lambda conn: conn.execute(
                "DELETE FROM idempotency_keys WHERE key = ? AND lock_token = ? AND state = ?",
                (key, token, IN_PROGRESS),
            )
        )

    async def get_charge(self, charge_id: str) -> Charge | None:
        row = await self._transaction(
            lambda conn: conn.execute(f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE id = ?", (charge_id,)).fetchone(),
            mode="DEFERRED",
        )
        return _charge_from_row(row) if row else None

    async def list_charges(self, account: str | None, limit: int) -> list[Charge]:
        where, params = ("WHERE account = ?", (account,)) if account is not None else ("", ())
        rows = await self._transaction(
            lambda conn: conn.execute(
                f"SELECT {_CHARGE_COLUMNS} FROM charges {where} ORDER BY created_at, id LIMIT ?", (*params, limit)
            ).fetchall(),
            mode="DEFERRED",
        )
        return [_charge_from_row(row) for row in rows]

    async def stats(self) -> Stats:
        def read(conn: sqlite3.Connection) -> Stats:
            totals = conn.execute(_TOTALS).fetchone()
            counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            return _stats(totals, counters)

        return await self._transaction(read, mode="DEFERRED")

    async def prune_keys(self, created_before: float) -> int:
        return await self._transaction(
            lambda conn: conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (created_before,)).rowcount
        )

    @staticmethod
    def _insert_charge(conn: sqlite3.Connection, charge: Charge) -> None:
        conn.execute(
            f"INSERT INTO charges ({_CHARGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (charge.id, charge.amount, charge.currency, charge.account, charge.created_at, charge.reference),
        )

    def _connect(self) -> None:
        # isolation_level=None: no implicit transactions; _transaction issues BEGIN itself.
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(_SQLITE_SCHEMA)
        # Databases created before charges had a reference (SQLite has no ADD COLUMN IF NOT EXISTS).
        if "reference" not in {row[1] for row in conn.execute("PRAGMA table_info(charges)")}:
            conn.execute("ALTER TABLE charges ADD COLUMN reference TEXT")
        self._conn = conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _submit(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def _transaction(
        self, work: Callable[[sqlite3.Connection], T], mode: Literal["IMMEDIATE", "DEFERRED"] = "IMMEDIATE"
    ) -> T:
        """Run ``work`` in one transaction on the store's thread; roll back if it raises."""

        def run() -> T:
            conn = self._conn
            if conn is None:
                raise RuntimeError("SqliteStore is not open")
            conn.execute(f"BEGIN {mode}")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._submit(run)


# --------------------------------------------------------------------------- PostgreSQL

_PG_SCHEMA: Final = f"""
CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA};
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    account TEXT NOT NULL,
    created_at TEXT NOT NULL,
    reference TEXT
);
CREATE INDEX IF NOT EXISTS charges_by_account ON charges (account, created_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('{IN_PROGRESS}', '{COMPLETED}')),
    lock_token TEXT,
    locked_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    response_status INTEGER,
    response_body TEXT,
    CHECK (state = '{IN_PROGRESS}' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_created_at ON idempotency_keys (created_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
-- databases created before charges had a reference
ALTER TABLE charges ADD COLUMN IF NOT EXISTS reference TEXT;
"""


class PostgresStore(Store):
    """PostgreSQL through an async psycopg 3 connection pool.

    Tables live in their own schema (``payment_api``, made the connections'
    ``search_path``), so the API can share a database with other components
    without name clashes. Concurrent claims of one key are resolved by the
    primary key: the second ``INSERT ... ON CONFLICT DO NOTHING`` waits for the
    first transaction and then sees its committed row; ``SELECT ... FOR
    UPDATE`` makes the lock takeover of an expired key race-free.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] | None = None

    async def open(self) -> None:
        """Open the pool; errors never quote the DSN's password (libpq's parser may)."""
        with masked_errors(self._dsn):
            conninfo_to_dict(self._dsn)  # a malformed DSN fails here, not in the pool's log
            await self._open_pool()

    async def _open_pool(self) -> None:
        pool = AsyncConnectionPool(
            self._dsn,
            min_size=1,
            max_size=10,
            open=False,
            kwargs={"autocommit": True, "options": f"-c search_path={PG_SCHEMA}"},
        )
        try:
            await pool.open(wait=True, timeout=15.0)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        async with self._transaction() as conn:
            # Serialise schema creation between servers starting at the same time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('payment_api.schema'))")
            await conn.execute(_PG_SCHEMA)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def insert_charge(self, charge: Charge) -> None:
        async with self._transaction() as conn:
            await self._insert_charge(conn, charge)

    async def claim_key(self, key: str, fingerprint: str, now: float, lock_timeout: float) -> KeyClaim:
        token = new_lock_token()
        async with self._transaction() as conn:
            inserted = await conn.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, state, lock_token, locked_at, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
                (key, fingerprint, IN_PROGRESS, token, now, now),
            )
            if inserted.rowcount:
                return Acquired(token)
            cursor = await conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM idempotency_keys WHERE key = %s FOR UPDATE", (key,)
            )
            found = await cursor.fetchone()
            verdict = judge_existing_key(KeyRow(*found) if found else None, fingerprint, now, lock_timeout)
            if verdict is None:
                await conn.execute(
                    "UPDATE idempotency_keys SET lock_token = %s, locked_at = %s WHERE key = %s", (token, now, key)
                )
                return Acquired(token)
            await conn.execute(
                "INSERT INTO counters (name, value) VALUES (%s, 1)"
                " ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
                (_COUNTER_BY_CLAIM[type(verdict)],),
            )
            return verdict

    async def complete_key(self, key: str, token: str, charge: Charge, status: int, body: str) -> bool:
        async with self._transaction() as conn:
            updated = await conn.execute(
                "UPDATE idempotency_keys SET state = %s, lock_token = NULL, response_status = %s, response_body = %s"
                " WHERE key = %s AND lock_token = %s AND state = %s",
                (COMPLETED, status, body, key, token, IN_PROGRESS),
            )
            if updated.rowcount:
                await self._insert_charge(conn, charge)
            return bool(updated.rowcount)

    async def release_key(self, key: str, token: str) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE key = %s AND lock_token = %s AND state = %s",
                (key, token, IN_PROGRESS),
            )

    async def get_charge(self, charge_id: str) -> Charge | None:
        async with self._transaction() as conn:
            cursor = await conn.execute(f"SELECT {_CHARGE_COLUMNS} FROM charges WHERE id = %s", (charge_id,))
            row = await cursor.fetchone()
        return _charge_from_row(row) if row else None

    async def list_charges(self, account: str | None, limit: int) -> list[Charge]:
        where, params = ("WHERE account = %s", (account,)) if account is not None else ("", ())
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"SELECT {_CHARGE_COLUMNS} FROM charges {where} ORDER BY created_at, id LIMIT %s", (*params, limit)
            )
            rows = await cursor.fetchall()
        return [_charge_from_row(row) for row in rows]

    async def stats(self) -> Stats:
        async with self._transaction() as conn:
            cursor = await conn.execute(_TOTALS)
            totals = await cursor.fetchone()
            assert totals is not None
            cursor = await conn.execute("SELECT name, value FROM counters")
            counters = dict(await cursor.fetchall())
        return _stats(totals, counters)

    async def prune_keys(self, created_before: float) -> int:
        async with self._transaction() as conn:
            deleted = await conn.execute("DELETE FROM idempotency_keys WHERE created_at < %s", (created_before,))
        return deleted.rowcount

    @staticmethod
    async def _insert_charge(conn: AsyncConnection[tuple[Any, ...]], charge: Charge) -> None:
        await conn.execute(
            f"INSERT INTO charges ({_CHARGE_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
            (charge.id, charge.amount, charge.currency, charge.account, charge.created_at, charge.reference),
        )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection[tuple[Any, ...]]]:
        """Borrow a pooled connection and run one transaction on it (committed on success)."""
        if self._pool is None:
            raise RuntimeError("PostgresStore is not open")
        async with self._pool.connection() as conn, conn.transaction():
            yield conn


def _stats(totals: tuple[Any, ...], counters: dict[str, int]) -> Stats:
    charges, keys, references, amount = totals
    return Stats(
        charges=int(charges),
        idempotency_keys=int(keys),
        distinct_references=int(references),
        total_amount=int(amount),
        replays=counters.get("replays", 0),
        conflicts=counters.get("conflicts", 0),
        mismatches=counters.get("mismatches", 0),
    )
