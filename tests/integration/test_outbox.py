"""The transactional outbox against a real broker, on SQLite and on PostgreSQL.

The relay always runs as ``python -m outbox relay`` in a subprocess, so that
``OUTBOX_CRASH_AT`` really SIGKILLs a process: no ``finally``, no flush, no
rollback sent by the client. Kafka's contents are read back without a consumer
group (``read_all``, read_uncommitted: every record the broker holds), the
consumer runs in-process.

The three fault cases of the issue, each proven by what Kafka and the database
hold afterwards:

1. a rolled-back order transaction publishes nothing;
2. a SIGKILL after the commit, before the publish: delivered once after restart;
3. a SIGKILL after the publish, before marking sent: Kafka holds each record
   twice, and the consumer still applies each order once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import ConsumerRecord

from outbox import EVENT_TYPE_HEADER, ORDER_PLACED, OUTBOX_ID_HEADER
from outbox.__main__ import serve_app
from outbox.consumer import ConsumerStats, run_consumer
from outbox.orders import CreditLimitExceeded, Order, OrderRequest, place_order
from outbox.relay import CRASH_ENV
from outbox.schema import connect, create_outbox_schema
from tests.fixtures.kafka import TopicFactory, read_all, wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
RELAY_TIMEOUT_S = 60.0
PARTITIONS = 3
UNSENT = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
READY_LINE = "relaying outbox rows"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    url: str = request.getfixturevalue("fresh_db")
    return url


# --------------------------------------------------------------------------- helpers


def relay_command(db_url: str, bootstrap: str, topic: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "outbox", "relay", "--db", db_url, "--bootstrap", bootstrap, "--topic", topic, *args]


def relay_env(crash_at: str | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != CRASH_ENV}
    return env if crash_at is None else {**env, CRASH_ENV: crash_at}


def run_relay_once(
    db_url: str, bootstrap: str, topic: str, crash_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m outbox relay --once`` to its end (or its SIGKILL)."""
    return subprocess.run(
        relay_command(db_url, bootstrap, topic, "--once"),
        check=False,
        cwd=REPO_ROOT,
        env=relay_env(crash_at),
        capture_output=True,
        text=True,
        timeout=RELAY_TIMEOUT_S,
    )


@dataclass
class RunningRelay:
    process: subprocess.Popen[str]
    log: Path

    def wait_ready(self) -> None:
        """Wait until the relay is connected and handles SIGTERM (Python start-up takes a while)."""
        wait_for(lambda: READY_LINE in self.log.read_text(), timeout=30, describe=lambda: self.log.read_text())

    def stop(self) -> subprocess.CompletedProcess[str]:
        """SIGTERM the relay (it finishes its batch) and collect its output."""
        self.process.send_signal(signal.SIGTERM)
        stdout, _ = self.process.communicate(timeout=RELAY_TIMEOUT_S)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout, self.log.read_text())


def start_relay(log: Path, db_url: str, bootstrap: str, topic: str, *args: str) -> RunningRelay:
    """Start a relay that polls until SIGTERM, its log in ``log`` (a file: a pipe nobody reads could fill up)."""
    with log.open("w") as stderr:
        process = subprocess.Popen(
            relay_command(db_url, bootstrap, topic, *args),
            cwd=REPO_ROOT,
            env=relay_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    return RunningRelay(process, log)


def totals(relay: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON totals line a relay that exited normally printed last."""
    assert relay.returncode == 0, f"relay exited {relay.returncode}:\n{relay.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(relay.stdout.strip().splitlines()[-1])
    return result


def assert_killed_at(relay: subprocess.CompletedProcess[str], point: str) -> None:
    assert relay.returncode == -signal.SIGKILL, f"relay exited {relay.returncode}:\n{relay.stderr[-3000:]}"
    assert f"FAULT: SIGKILL at crash point {point}" in relay.stderr


def place_orders(db_url: str, customers: Sequence[str], amount: int = 100) -> list[Order]:
    """Place one order per entry of ``customers``, in that order."""

    async def main() -> list[Order]:
        conn = await connect(db_url)
        try:
            await create_outbox_schema(conn)
            return [
                await place_order(conn, OrderRequest(customer_id=customer, amount=amount, currency="EUR"))
                for customer in customers
            ]
        finally:
            await conn.close()

    return asyncio.run(main())


def query(db_url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async def main() -> list[tuple[Any, ...]]:
        conn = await connect(db_url)
        try:
            async with conn.transaction(write=False):
                return await conn.fetchall(sql, params)
        finally:
            await conn.close()

    return asyncio.run(main())


def count(db_url: str, sql: str) -> int:
    [(value,)] = query(db_url, sql)
    return int(value)


def records(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record the broker holds for ``topic``."""
    return read_all(bootstrap, topic, isolation_level="read_uncommitted")


def outbox_id(record: ConsumerRecord[bytes, bytes]) -> int:
    return int(dict(record.headers)[OUTBOX_ID_HEADER])


def consume(db_url: str, bootstrap: str, topic: str, group: str, deduplicate: bool = True) -> ConsumerStats:
    """Run the reference consumer until it has read the whole topic."""
    run = run_consumer(db_url, bootstrap, topic, group, deduplicate=deduplicate, until_caught_up=True)
    return asyncio.run(asyncio.wait_for(run, timeout=60))


def assert_effects_match_orders(db_url: str) -> None:
    """Exactly one effect per order, and each customer's total is the sum of its orders."""
    assert count(db_url, "SELECT count(*) FROM order_effects") == count(db_url, "SELECT count(*) FROM orders")
    expected = query(
        db_url, "SELECT customer_id, count(*), sum(amount) FROM orders GROUP BY customer_id ORDER BY customer_id"
    )
    applied = query(db_url, "SELECT customer_id, orders, amount FROM customer_totals ORDER BY customer_id")
    assert [(customer, int(n), int(amount)) for customer, n, amount in expected] == applied


# --------------------------------------------------------------------------- 1. rollback


def test_rolled_back_order_publishes_nothing(db_url: str, kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=PARTITIONS)

    async def orders() -> Order:
        conn = await connect(db_url)
        try:
            await create_outbox_schema(conn)
            kept = await place_order(
                conn, OrderRequest(customer_id="c1", amount=600, currency="EUR"), credit_limit=1000
            )
            refused = OrderRequest(customer_id="c1", amount=500, currency="EUR")
            with pytest.raises(CreditLimitExceeded):  # raised inside the transaction, after both inserts
                await place_order(conn, refused, credit_limit=1000)
            return kept
        finally:
            await conn.close()

    kept = asyncio.run(orders())
    assert count(db_url, "SELECT count(*) FROM orders") == 1
    assert count(db_url, "SELECT count(*) FROM outbox") == 1

    assert totals(run_relay_once(db_url, kafka_bootstrap, topic))["published"] == 1
    [published] = records(kafka_bootstrap, topic)
    assert Order.model_validate_json(published.value or b"") == kept
    assert consume(db_url, kafka_bootstrap, topic, "rollback").applied == 1


# --------------------------------------------------------------------------- 2. crash before publish


def test_crash_after_commit_before_publish_is_delivered_once_after_restart(
    db_url: str, kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    place_orders(db_url, ["c1", "c2", "c3", "c1", "c2", "c3"])

    assert_killed_at(run_relay_once(db_url, kafka_bootstrap, topic, crash_at="after_commit"), "after_commit")
    assert records(kafka_bootstrap, topic) == []
    assert count(db_url, UNSENT) == 6

    assert totals(run_relay_once(db_url, kafka_bootstrap, topic))["published"] == 6
    ids = Counter(outbox_id(record) for record in records(kafka_bootstrap, topic))
    assert ids == Counter({row_id: 1 for (row_id,) in query(db_url, "SELECT id FROM outbox")})
    assert count(db_url, UNSENT) == 0

    stats = consume(db_url, kafka_bootstrap, topic, "after-commit")
    assert (stats.records, stats.applied, stats.duplicates) == (6, 6, 0)
    assert_effects_match_orders(db_url)


# --------------------------------------------------------------------------- 3. crash after publish


def test_crash_after_publish_before_marking_sent_duplicates_in_kafka_but_not_in_effects(
    db_url: str, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    topic = topic_factory(partitions=PARTITIONS)
    orders = place_orders(db_url, [f"c{i % 3}" for i in range(10)])

    assert_killed_at(run_relay_once(db_url, kafka_bootstrap, topic, crash_at="after_publish"), "after_publish")
    assert len(records(kafka_bootstrap, topic)) == 10
    assert count(db_url, UNSENT) == 10

    assert totals(run_relay_once(db_url, kafka_bootstrap, topic))["published"] == 10
    in_kafka = records(kafka_bootstrap, topic)
    assert Counter(outbox_id(record) for record in in_kafka) == Counter(
        {i: 2 for i in range(1, 11)}
    )  # the fault is real

    stats = consume(db_url, kafka_bootstrap, topic, "after-publish")
    assert (stats.records, stats.applied, stats.duplicates) == (20, 10, 10)
    assert count(db_url, "SELECT count(*) FROM order_effects") == len(orders) == 10
    assert_effects_match_orders(db_url)

    # Every record delivered once more (a new group re-reads the topic): all no-ops.
    again = consume(db_url, kafka_bootstrap, topic, "redelivery")
    assert (again.applied, again.duplicates) == (0, 20)
    assert_effects_match_orders(db_url)

    # Without the dedup table the same records double every effect.
    naive_db = f"sqlite:///{tmp_path / 'naive.db'}"
    assert consume(naive_db, kafka_bootstrap, topic, "naive", deduplicate=False).applied == 20
    assert count(naive_db, "SELECT count(*) FROM order_effects") == 20


# --------------------------------------------------------------------------- 4. per-aggregate order


async def place_concurrently(db_url: str, writers: int, per_writer: int, customers: Sequence[str]) -> None:
    """``writers`` connections placing orders at the same time, all of them for every customer."""

    async def writer(number: int) -> None:
        conn = await connect(db_url)
        try:
            for i in range(per_writer):
                customer = customers[(number + i) % len(customers)]
                await place_order(conn, OrderRequest(customer_id=customer, amount=1 + i, currency="EUR"))
        finally:
            await conn.close()

    setup = await connect(db_url)
    await create_outbox_schema(setup)
    await setup.close()
    await asyncio.gather(*(writer(number) for number in range(writers)))


def test_each_aggregate_is_consumed_in_outbox_id_order(
    db_url: str, kafka_bootstrap: str, topic_factory: TopicFactory, tmp_path: Path
) -> None:
    """Concurrent writers, and on PostgreSQL two relays competing for rows in small batches."""
    topic = topic_factory(partitions=PARTITIONS)
    customers = [f"cust-{n}" for n in range(40)]
    relays = 2 if db_url.startswith("postgresql") else 1
    place_orders(db_url, [])  # creates the schema before the relays poll it
    running = [
        start_relay(
            tmp_path / f"relay-{n}.log", db_url, kafka_bootstrap, topic, "--interval", "0.02", "--batch-size", "7"
        )
        for n in range(relays)
    ]
    try:
        for relay in running:
            relay.wait_ready()
        asyncio.run(place_concurrently(db_url, writers=4, per_writer=60, customers=customers))
        wait_for(
            lambda: count(db_url, UNSENT) == 0, timeout=60, describe=lambda: f"{count(db_url, UNSENT)} rows unsent"
        )
    finally:
        published = [totals(relay.stop())["published"] for relay in running]
    assert sum(published) == 240, published  # no crash, so no row published twice even with two relays
    assert min(published) > 0, published  # the relays really competed for rows

    # In Kafka: each customer in one partition, in id order.
    by_customer: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for record in records(kafka_bootstrap, topic):
        by_customer[(record.key or b"").decode()].append((record.partition, outbox_id(record)))
    expected = {
        customer: [
            row_id
            for (row_id,) in query(db_url, "SELECT id FROM outbox WHERE aggregate_id = %s ORDER BY id", (customer,))
        ]
        for customer in customers
    }
    for customer, seen in by_customer.items():
        assert len({partition for partition, _ in seen}) == 1
        assert [row_id for _, row_id in seen] == expected[customer]

    # In the consumer's effects: applied in id order per customer.
    assert consume(db_url, kafka_bootstrap, topic, "order").applied == 240
    for customer in customers:
        applied = [
            row_id
            for (row_id,) in query(
                db_url, "SELECT outbox_id FROM order_effects WHERE customer_id = %s ORDER BY seq", (customer,)
            )
        ]
        assert applied == expected[customer]
    assert_effects_match_orders(db_url)


def test_a_second_relay_on_one_sqlite_file_exits_at_once(
    tmp_path: Path, kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    db_url = f"sqlite:///{tmp_path / 'outbox.db'}"
    topic = topic_factory()
    first = start_relay(tmp_path / "relay.log", db_url, kafka_bootstrap, topic)
    try:
        first.wait_ready()
        second = run_relay_once(db_url, kafka_bootstrap, topic)
    finally:
        assert totals(first.stop())["published"] == 0
    assert second.returncode == 3
    assert "another relay already serves" in second.stderr


# --------------------------------------------------------------------------- 5. HTTP


@asynccontextmanager
async def serve(db_url: str, credit_limit: int) -> AsyncIterator[str]:
    """Run ``python -m outbox serve``'s application (payment API + orders) on a random loopback port."""
    runner = web.AppRunner(serve_app(db_url, credit_limit))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json()


BAD_ORDERS = [
    (b'{"customer_id": "c1", "amount": 100', 400, "invalid_json"),
    (b'{"customer_id": "c1", "amount": "100", "currency": "EUR"}', 400, "invalid_request"),
    (b'{"customer_id": "c1", "amount": 0, "currency": "EUR"}', 400, "invalid_request"),
    (b'{"customer_id": "c1", "amount": 100, "currency": "eur"}', 400, "invalid_request"),
    (b'{"customer_id": "c 1", "amount": 100, "currency": "EUR"}', 400, "invalid_request"),
    (b'{"customer_id": "c1", "amount": 100, "currency": "EUR", "note": "x"}', 400, "invalid_request"),
    (b'{"customer_id": "c1", "amount": 901, "currency": "EUR"}', 422, "credit_limit_exceeded"),
]


def test_orders_endpoint_writes_order_and_outbox_row_and_refuses_bad_input_with_no_rows(
    db_url: str, kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=PARTITIONS)

    async def scenario() -> dict[str, Any]:
        async with serve(db_url, credit_limit=1000) as base, aiohttp.ClientSession() as session:
            status, created = await post(
                session, f"{base}/v1/orders", b'{"customer_id": "c1", "amount": 100, "currency": "EUR"}'
            )
            assert status == 201, created
            async with session.get(f"{base}/v1/orders/{created['id']}") as response:
                assert (response.status, await response.json()) == (200, created)
            async with session.get(f"{base}/v1/orders/ord_unknown") as response:
                assert (response.status, (await response.json())["error"]["type"]) == (404, "not_found")
            for body, expected_status, expected_type in BAD_ORDERS:
                status, error = await post(session, f"{base}/v1/orders", body)
                assert (status, error["error"]["type"]) == (expected_status, expected_type), body
            # The payment API's own routes are still served next to the orders.
            status, charge = await post(
                session, f"{base}/v1/charges", b'{"amount": 5, "currency": "EUR", "account": "a"}'
            )
            assert status == 201, charge
            return created

    created = asyncio.run(scenario())
    assert query(db_url, "SELECT id, customer_id, amount FROM orders") == [(created["id"], "c1", 100)]
    [(aggregate_id, event_type, payload)] = query(db_url, "SELECT aggregate_id, type, payload FROM outbox")
    assert (aggregate_id, event_type, json.loads(payload)) == ("c1", ORDER_PLACED, created)

    assert totals(run_relay_once(db_url, kafka_bootstrap, topic))["published"] == 1
    [published] = records(kafka_bootstrap, topic)
    assert published.key == b"c1"
    assert dict(published.headers)[EVENT_TYPE_HEADER] == ORDER_PLACED.encode()
    assert json.loads(published.value or b"") == created
