"""The outbox without a broker: schema, the write transaction, the relay's batch, the consumer's dedup.

Every database scenario runs on SQLite; the PostgreSQL variants need the local
server and are marked ``integration``. The relay's publish is a fake here; the
real one, with real SIGKILLs, is in tests/integration/test_outbox.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from outbox import EVENT_TYPE_HEADER, ORDER_PLACED, OUTBOX_ID_HEADER
from outbox.consumer import MalformedEvent, OutboxEvent, apply_events, event_from_record
from outbox.orders import (
    CreditLimitExceeded,
    Order,
    OrderRequest,
    add_outbox_event,
    get_order,
    place_order,
)
from outbox.relay import (
    CrashPoint,
    OutboxRow,
    RelayBusy,
    RelayConfig,
    claim_unsent,
    relay_batch,
    run_relay,
)
from outbox.schema import (
    Connection,
    connect,
    create_consumer_schema,
    create_outbox_schema,
)

DISARMED = CrashPoint()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    url: str = request.getfixturevalue("fresh_db")
    return url


def run_with(db_url: str, scenario: Callable[[Connection], Awaitable[None]]) -> None:
    """Run ``scenario`` on a connection to a database with both schemas."""

    async def main() -> None:
        conn = await connect(db_url)
        try:
            await create_outbox_schema(conn)
            await create_consumer_schema(conn)
            await scenario(conn)
        finally:
            await conn.close()

    asyncio.run(main())


async def query(conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async with conn.transaction(write=False):
        return await conn.fetchall(sql, params)


async def order(conn: Connection, customer_id: str, amount: int = 100, credit_limit: int = 10**9) -> Order:
    return await place_order(
        conn, OrderRequest(customer_id=customer_id, amount=amount, currency="EUR"), credit_limit=credit_limit
    )


# --------------------------------------------------------------------------- crash points


def test_crash_point_specs() -> None:
    assert CrashPoint.parse("") == CrashPoint()
    assert CrashPoint.parse("after_commit") == CrashPoint("after_commit", 1)
    assert CrashPoint.parse("after_publish:3") == CrashPoint("after_publish", 3)
    for bad in ("after_lunch", "after_publish:0", "after_publish:x", "after_publish:-1"):
        with pytest.raises(ValueError, match="OUTBOX_CRASH_AT"):
            CrashPoint.parse(bad)


def test_crash_point_fires_on_the_nth_pass_of_its_point_only() -> None:
    crash = CrashPoint("after_publish", 2)
    passes = [crash.due(point) for point in ("after_commit", "after_publish", "after_commit", "after_publish")]
    assert passes == [False, False, False, True]
    assert not crash.due("after_publish")
    assert not any(CrashPoint().due(point) for point in ("after_commit", "after_publish"))


# --------------------------------------------------------------------------- schema and connection


def test_schema_creation_is_idempotent(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        await create_outbox_schema(conn)
        await create_consumer_schema(conn)
        rows = await query(conn, "SELECT count(*) FROM outbox")
        assert rows == [(0,)]

    run_with(db_url, scenario)


def test_statements_run_only_inside_a_transaction_and_transactions_do_not_nest(tmp_path: Path) -> None:
    async def scenario(conn: Connection) -> None:
        with pytest.raises(RuntimeError, match="inside"):
            await conn.execute("SELECT 1")
        async with conn.transaction():
            with pytest.raises(RuntimeError, match="nest"):
                async with conn.transaction():
                    pass

    run_with(f"sqlite:///{tmp_path / 'outbox.db'}", scenario)


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        asyncio.run(connect("mysql://localhost/db"))


# --------------------------------------------------------------------------- write side


def test_place_order_writes_the_order_and_its_outbox_row(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        placed = await order(conn, "cust-1", 1999)
        assert await get_order(conn, placed.id) == placed
        assert await get_order(conn, "ord_missing") is None
        [(aggregate_id, event_type, payload, sent_at)] = await query(
            conn, "SELECT aggregate_id, type, payload, sent_at FROM outbox"
        )
        assert (aggregate_id, event_type, sent_at) == ("cust-1", ORDER_PLACED, None)
        assert Order.model_validate_json(payload) == placed

    run_with(db_url, scenario)


def test_order_over_the_credit_limit_rolls_back_both_rows(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        await order(conn, "cust-1", 600, credit_limit=1000)
        with pytest.raises(CreditLimitExceeded, match="1100"):
            await order(conn, "cust-1", 500, credit_limit=1000)
        assert await query(conn, "SELECT count(*) FROM orders") == [(1,)]
        assert await query(conn, "SELECT count(*) FROM outbox") == [(1,)]

    run_with(db_url, scenario)


def test_outbox_ids_are_not_reused_after_deleting_rows(db_url: str) -> None:
    """A reused id would be dropped by consumers as a duplicate of the deleted event."""

    async def scenario(conn: Connection) -> None:
        await order(conn, "cust-1")
        async with conn.transaction():
            await conn.execute("DELETE FROM outbox")
        await order(conn, "cust-1")
        assert await query(conn, "SELECT id FROM outbox") == [(2,)]

    run_with(db_url, scenario)


@pytest.mark.integration
def test_events_of_one_aggregate_get_ids_in_commit_order_on_postgres(fresh_db: str) -> None:
    """A writer waits for an open transaction holding an event of the same aggregate, not of another."""

    async def scenario(a: Connection) -> None:
        b, c = await connect(fresh_db), await connect(fresh_db)
        try:
            async with a.transaction():
                await add_outbox_event(a, "x", "Custom", "{}", "2026-01-01T00:00:00+00:00")
                same_aggregate = asyncio.create_task(order(b, "x"))
                await asyncio.wait_for(order(c, "y"), timeout=5)
                await asyncio.sleep(0.3)
                assert not same_aggregate.done()
            await asyncio.wait_for(same_aggregate, timeout=5)
        finally:
            await b.close()
            await c.close()
        assert await query(a, "SELECT id, aggregate_id FROM outbox ORDER BY id") == [(1, "x"), (2, "y"), (3, "x")]

    run_with(fresh_db, scenario)


# --------------------------------------------------------------------------- relay batch


class FakeKafka:
    """A publish function that records what it was given, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[OutboxRow] = []

    async def __call__(self, rows: Sequence[OutboxRow]) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.published.extend(rows)


def test_relay_batch_marks_rows_sent_only_after_publish_returns(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        for customer in ("a", "b", "a", "c", "b"):
            await order(conn, customer)
        with pytest.raises(ConnectionError):
            await relay_batch(conn, FakeKafka(fail=True), 3, DISARMED)
        assert await query(conn, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(5,)]

        kafka = FakeKafka()
        assert await relay_batch(conn, kafka, 3, DISARMED) == 3
        assert await relay_batch(conn, kafka, 3, DISARMED) == 2
        assert await relay_batch(conn, kafka, 3, DISARMED) == 0
        assert [row.id for row in kafka.published] == [1, 2, 3, 4, 5]
        assert [row.aggregate_id for row in kafka.published] == ["a", "b", "a", "c", "b"]
        assert await query(conn, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]

    run_with(db_url, scenario)


@pytest.mark.integration
def test_concurrent_claims_on_postgres_skip_locked_rows_and_keep_aggregate_order(fresh_db: str) -> None:
    """Relay B must neither take relay A's rows nor overtake them with a later row of the same aggregate."""

    async def scenario(a: Connection) -> None:
        for customer in ("x", "x", "y", "x", "z"):  # ids 1..5
            await order(a, customer)
        b = await connect(fresh_db)
        try:
            async with a.transaction():
                held_by_a = await claim_unsent(a, 1)
                async with b.transaction():
                    taken_by_b = await claim_unsent(b, 10)
            async with b.transaction():
                after_a_released = await claim_unsent(b, 10)
        finally:
            await b.close()
        assert [row.id for row in held_by_a] == [1]
        assert [(row.id, row.aggregate_id) for row in taken_by_b] == [(3, "y"), (5, "z")]
        assert [row.id for row in after_a_released] == [1, 2, 3, 4, 5]  # A rolled back: nothing was marked

    run_with(fresh_db, scenario)


def test_a_second_relay_on_one_sqlite_file_is_refused_before_any_kafka_contact(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    with open(f"{db}.relay.lock", "w", encoding="utf-8") as other_relay:
        fcntl.flock(other_relay, fcntl.LOCK_EX | fcntl.LOCK_NB)
        config = RelayConfig(f"sqlite:///{db}", bootstrap="127.0.0.1:1", topic="unused", once=True)
        with pytest.raises(RelayBusy, match="another relay"):
            asyncio.run(run_relay(config))


# --------------------------------------------------------------------------- consumer


def event(outbox_id: int, customer_id: str, amount: int, event_type: str = ORDER_PLACED) -> OutboxEvent:
    payload = {"id": f"ord_{outbox_id}", "customer_id": customer_id, "amount": amount, "currency": "EUR"}
    return OutboxEvent(outbox_id, customer_id, event_type, payload)


def test_consumer_applies_each_outbox_id_once(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        first = await apply_events(conn, [event(1, "a", 10), event(2, "b", 20), event(1, "a", 10), event(3, "a", 5)])
        redelivered = await apply_events(conn, [event(2, "b", 20), event(3, "a", 5)])
        assert (first.applied, first.duplicates) == (3, 1)
        assert (redelivered.applied, redelivered.duplicates) == (0, 2)
        assert await query(conn, "SELECT outbox_id FROM order_effects ORDER BY seq") == [(1,), (2,), (3,)]
        totals = await query(conn, "SELECT customer_id, orders, amount FROM customer_totals ORDER BY customer_id")
        assert totals == [("a", 2, 15), ("b", 1, 20)]

    run_with(db_url, scenario)


def test_naive_consumer_applies_duplicates(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        stats = await apply_events(conn, [event(1, "a", 10), event(1, "a", 10)], deduplicate=False)
        assert (stats.applied, stats.duplicates) == (2, 0)
        assert await query(conn, "SELECT orders, amount FROM customer_totals") == [(2, 20)]

    run_with(db_url, scenario)


def test_unknown_event_type_rolls_back_the_whole_batch(db_url: str) -> None:
    async def scenario(conn: Connection) -> None:
        with pytest.raises(MalformedEvent, match="OrderShipped"):
            await apply_events(conn, [event(1, "a", 10), event(2, "a", 10, "OrderShipped")])
        assert await query(conn, "SELECT count(*) FROM order_effects") == [(0,)]
        assert await query(conn, "SELECT count(*) FROM processed_outbox_ids") == [(0,)]

    run_with(db_url, scenario)


def record(headers: list[tuple[str, bytes]], key: bytes | None = b"cust-1") -> ConsumerRecord[bytes, bytes]:
    value = json.dumps({"id": "ord_1", "amount": 5}).encode()
    return ConsumerRecord("t", 0, 7, 0, 0, key, value, None, len(key or b""), len(value), headers)


def test_event_from_record_reads_the_relay_wire_format() -> None:
    headers = [(OUTBOX_ID_HEADER, b"42"), (EVENT_TYPE_HEADER, ORDER_PLACED.encode())]
    assert event_from_record(record(headers)) == OutboxEvent(42, "cust-1", ORDER_PLACED, {"id": "ord_1", "amount": 5})
    for broken in (record(headers[:1]), record(headers[1:]), record(headers, key=None)):
        with pytest.raises(MalformedEvent, match=r"t\[0\]@7"):
            event_from_record(broken)
