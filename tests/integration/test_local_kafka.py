"""The project's own Kafka broker (infra.kafka) and the aiokafka features the demos rely on.

These tests also pin the broker version choice: if a Kafka upgrade broke
at-least-once or transactional delivery with aiokafka, it would show here first.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import pkgutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiokafka.protocol
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.protocol.admin import ApiVersionRequest
from aiokafka.protocol.api import Request

from infra import kafka
from tests.fixtures.kafka import TopicFactory, read_all, read_all_async, wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m infra.kafka ...`` from the repository root."""
    env = dict(os.environ)
    if home is not None:
        env["FAUST_SEMANTICS_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "infra.kafka", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


# --- broker lifecycle -------------------------------------------------------------


def test_start_and_status_are_idempotent(local_kafka: kafka.BrokerInfo) -> None:
    assert kafka.start(local_kafka.port) == local_kafka
    assert kafka.status(local_kafka.port) == local_kafka
    result = _cli("status", "--port", str(local_kafka.port))
    assert result.returncode == 0, result.stderr
    assert local_kafka.bootstrap in result.stdout


@dataclass(frozen=True)
class SpareBroker:
    """Where a second, throw-away broker may run: four free ports and an empty data home."""

    port: int
    home: Path


@pytest.fixture
def spare_broker(tmp_path: Path) -> Iterator[SpareBroker]:
    """Yield a free port block and a fresh home (sharing the jar cache); stop whatever ran there."""
    libs = kafka.ensure_jars()
    (tmp_path / libs.parent.name).symlink_to(libs.parent)
    spare = SpareBroker(port=_free_port_block(4), home=tmp_path)
    yield spare
    kafka.stop(spare.port, spare.home)


def _free_port_block(count: int) -> int:
    """Return a port P such that P .. P+count-1 are all free on 127.0.0.1."""
    while True:
        base = _bind_or_none(0)
        if base is not None and base + count <= 65535 and all(_bind_or_none(base + i) for i in range(count)):
            return base


def _bind_or_none(port: int) -> int | None:
    """Bind 127.0.0.1:``port`` briefly; return the bound port, or None if it is taken."""
    with socket.socket() as probe:
        try:
            probe.bind((kafka.HOST, port))
        except OSError:
            return None
        return int(probe.getsockname()[1])


def test_second_broker_lifecycle_with_stale_pid_file(spare_broker: SpareBroker) -> None:
    port, home = spare_broker.port, spare_broker.home
    assert kafka.status(port, home) is None
    assert _cli("status", "--port", str(port), home=home).returncode == 1

    # A pid file left by a dead process (here: one that has just exited) must not fool start().
    dead = subprocess.Popen(["true"])
    dead.wait()
    kafka.broker_dir(port, home).mkdir(parents=True)
    (kafka.broker_dir(port, home) / "broker.pid").write_text(f"{dead.pid}\n")
    assert kafka.status(port, home) is None

    info = kafka.start(port, home)
    assert info.bootstrap == f"127.0.0.1:{port}" and info.controller_port == port + 1
    assert info.proxied_listener_port == port + 2 and info.proxied_advertised_port == port + 3
    assert info.proxied_bootstrap == f"127.0.0.1:{port + 3}"
    assert info.data_dir == kafka.broker_dir(port, home) and info.log_path.is_file()
    assert kafka.status(port, home) == info

    assert kafka.stop(port, home) == info.pid
    assert not Path(f"/proc/{info.pid}").exists()
    assert kafka.status(port, home) is None
    assert kafka.stop(port, home) is None
    stopped = _cli("stop", "--port", str(port), home=home)
    assert stopped.returncode == 0 and "was not running" in stopped.stdout


def test_reset_stops_the_broker_and_starts_it_on_empty_storage(spare_broker: SpareBroker) -> None:
    port, home = spare_broker.port, spare_broker.home
    info = kafka.start(port, home)

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=info.bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=info.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("left-over", 1, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    assert "left-over" in asyncio.run(topics())

    result = _cli("reset", "--port", str(port), home=home)
    assert result.returncode == 0 and f"(pid {info.pid})" in result.stdout, result.stdout + result.stderr
    assert kafka.status(port, home) is None and not info.data_dir.joinpath("data").exists()

    info = kafka.start(port, home)
    assert "left-over" not in asyncio.run(topics())


def test_start_failure_quotes_the_first_error_and_the_log_tail(spare_broker: SpareBroker) -> None:
    with socket.socket() as squatter:
        squatter.bind((kafka.HOST, spare_broker.port))
        squatter.listen()
        with pytest.raises(kafka.BrokerStartError, match="exited during start-up") as failure:
            kafka.start(spare_broker.port, spare_broker.home, wait=60)
    message = str(failure.value)
    assert "Address already in use" in message.split("--- last")[0], "the first error must be quoted"
    assert str(kafka.broker_dir(spare_broker.port, spare_broker.home) / "server.log") in message


# --- protocol compatibility -------------------------------------------------------


def _request_types() -> list[type[Request]]:
    """Every concrete aiokafka request type (importing all protocol modules first)."""
    for module in pkgutil.iter_modules(aiokafka.protocol.__path__):
        importlib.import_module(f"aiokafka.protocol.{module.name}")
    found: list[type[Request]] = []
    pending = list(Request.__subclasses__())
    while pending:
        request_type = pending.pop()
        pending.extend(request_type.__subclasses__())
        if not inspect.isabstract(request_type):
            found.append(request_type)
    return found


def test_every_aiokafka_request_shares_a_version_with_the_broker(kafka_bootstrap: str) -> None:
    """Kafka 4 dropped old protocol versions (KIP-896); aiokafka must still have one in range."""

    async def broker_versions() -> dict[int, tuple[int, int]]:
        host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
        conn = await create_conn(host, int(port))
        try:
            response = await conn.send(ApiVersionRequest())
        finally:
            conn.close()
        return {key: (low, high) for key, low, high in response.api_versions}

    supported = asyncio.run(broker_versions())
    missing = []
    for request_type in _request_types():
        ours = [struct.API_VERSION for struct in request_type._CLASSES]  # the versions aiokafka can send
        low, high = supported.get(request_type.API_KEY, (0, -1))
        if not any(low <= version <= high for version in ours):
            missing.append(f"{request_type.__name__}: aiokafka {ours}, broker {low}..{high}")
    assert not missing


# --- delivery features ------------------------------------------------------------


def test_produce_and_consume_with_group_commit(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=3)
    group = f"{topic}-group"

    async def scenario() -> dict[TopicPartition, int | None]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(30):
                await producer.send_and_wait(topic, f"v{i}".encode(), key=f"k{i % 5}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip
        await consumer.start()
        try:
            seen = 0
            while seen < 30:
                batches = await consumer.getmany(timeout_ms=1000)
                seen += sum(len(batch) for batch in batches.values())
            await consumer.commit()
            return {tp: await consumer.committed(tp) for tp in consumer.assignment()}
        finally:
            await consumer.stop()

    committed = asyncio.run(scenario())
    assert len(committed) == 3 and sum(offset or 0 for offset in committed.values()) == 30
    records = read_all(kafka_bootstrap, topic)
    assert sorted(record.value for record in records) == sorted(f"v{i}".encode() for i in range(30))
    per_key = {record.key: record.partition for record in records}
    assert all(per_key[record.key] == record.partition for record in records), "a key spans partitions"


def test_transaction_commit_is_visible_and_abort_is_not(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    source, sink = topic_factory(label="source"), topic_factory(partitions=2, label="sink")
    group = f"{source}-group"

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{sink}-tx")
        await producer.start()
        try:
            async with producer.transaction():
                for value in (b"committed-1", b"committed-2"):
                    await producer.send(sink, value)
                await producer.send_offsets_to_transaction({TopicPartition(source, 0): 7}, group)
            async with producer.transaction():
                await producer.send(sink, b"committed-3")
            # Aborted last, so read_all must also get past a trailing abort marker.
            await producer.begin_transaction()
            for value in (b"aborted-1", b"aborted-2"):
                await (await producer.send(sink, value))  # acknowledged, still rolled back below
            await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(scenario())
    committed = sorted(record.value for record in read_all(kafka_bootstrap, sink, "read_committed"))
    everything = sorted(record.value for record in read_all(kafka_bootstrap, sink, "read_uncommitted"))
    assert committed == [b"committed-1", b"committed-2", b"committed-3"]
    assert everything == sorted([*committed, b"aborted-1", b"aborted-2"])
    assert _committed_offset(kafka_bootstrap, group, TopicPartition(source, 0)) == 7


def _committed_offset(bootstrap: str, group: str, partition: TopicPartition) -> int | None:
    """Return the offset ``group`` has committed for ``partition`` (None if none)."""

    async def query() -> int | None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            offset: int | None = await consumer.committed(partition)
            return offset
        finally:
            await consumer.stop()

    return asyncio.run(query())


def test_read_committed_stops_at_an_open_transaction(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    """read_all's end for read_committed is the last stable offset, not the high watermark."""
    topic = topic_factory()

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-tx")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, b"before")
            await producer.begin_transaction()
            await (await producer.send(topic, b"pending"))
            stable = await read_all_async(kafka_bootstrap, topic, "read_committed", timeout=10)
            dirty = await read_all_async(kafka_bootstrap, topic, "read_uncommitted", timeout=10)
            await producer.abort_transaction()
        finally:
            await producer.stop()
        return [r.value for r in stable], [r.value for r in dirty]

    stable, dirty = asyncio.run(scenario())
    assert stable == [b"before"]
    assert dirty == [b"before", b"pending"]


# --- proxied listener -------------------------------------------------------------


class ForwardingProxy:
    """A trivial TCP proxy on 127.0.0.1: ``listen_port`` -> ``target_port``, counting connections."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ForwardingProxy:
        self._server = await asyncio.start_server(self._forward, kafka.HOST, self.listen_port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        broker_reader, broker_writer = await asyncio.open_connection(kafka.HOST, self.target_port)
        await asyncio.gather(_pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes one way until end of stream; a reset connection ends it the same way."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def test_producer_through_the_proxied_listener(local_kafka: kafka.BrokerInfo, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=2)

    async def scenario() -> tuple[int, set[int]]:
        async with ForwardingProxy(local_kafka.proxied_advertised_port, local_kafka.proxied_listener_port) as proxy:
            producer = AIOKafkaProducer(bootstrap_servers=local_kafka.proxied_bootstrap, acks="all")
            await producer.start()
            try:
                for i in range(10):
                    await producer.send_and_wait(topic, f"p{i}".encode(), partition=i % 2)
                advertised = {broker.port for broker in producer.client.cluster.brokers()}
            finally:
                await producer.stop()
        return proxy.connections, advertised

    connections, advertised_ports = asyncio.run(scenario())
    assert advertised_ports == {local_kafka.proxied_advertised_port}
    assert connections >= 2, "expected the bootstrap and the broker connection through the proxy"
    values = sorted(record.value for record in read_all(local_kafka.bootstrap, topic))
    assert values == [f"p{i}".encode() for i in range(10)]


# --- helpers ----------------------------------------------------------------------


def test_wait_for_reports_expectation_and_elapsed_time() -> None:
    seen = [1, 2]
    with pytest.raises(pytest.fail.Exception, match=r"^expected 3 records, got 2 after 0\.\d s$"):
        wait_for(lambda: len(seen) == 3, timeout=0.3, describe=lambda: f"expected 3 records, got {len(seen)}")
    seen.append(3)
    wait_for(lambda: len(seen) == 3, timeout=0.3, describe="three records")
