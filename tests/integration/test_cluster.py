"""The local 3-node KRaft cluster (infra/kafka/cluster.py) and what replication buys.

One session-scoped cluster (``tests/fixtures/kafka_cluster.py``: 29092-29094 unless
``KAFKA_CLUSTER_PORT`` says otherwise) serves every test here. The tests that hurt a
node get it back through the ``cluster`` fixture, which restarts whatever they left
down. What is checked: the cluster is whole (three brokers, one active controller);
the pipeline's topics and changelogs are created with 3 replicas and an explicit
min.insync.replicas=2; and the point of all that: acknowledged acks=all writes
survive a SIGKILL of their partition's leader, and the killed broker rejoins the ISR.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from infra import kafka
from infra.kafka.cluster import CONTROLLER_PORT_OFFSET, ClusterInfo, LocalCluster
from lab.checker import charges_by_event, check
from streams_app.admin import PIPELINE_TOPICS, create_topics, delete_topics_containing, ensure_topics
from streams_app.settings import Settings, broker_hosts
from streams_app.traffic import Traffic, generate
from tests.fixtures.kafka import read_all, wait_for
from tests.fixtures.kafka_cluster import CLUSTER_BROKERS, cluster_under_test

T = TypeVar("T")

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
#: DescribeConfigs' config_source for a value set on the topic itself (not a broker default).
DYNAMIC_TOPIC_CONFIG = 1


# --- the cluster itself -------------------------------------------------------------


def test_three_brokers_serve_with_one_active_controller(local_cluster: ClusterInfo) -> None:
    cluster = cluster_under_test()
    nodes = cluster.status().nodes
    assert [node.state for node in nodes] == ["serving"] * CLUSTER_BROKERS
    assert len({node.pid for node in nodes}) == CLUSTER_BROKERS, "one JVM per broker"
    assert [node.port for node in nodes] == list(cluster.ports)
    assert [node.controller_port for node in nodes] == [port + CONTROLLER_PORT_OFFSET for port in cluster.ports]
    assert len({node.data_dir for node in nodes}) == CLUSTER_BROKERS

    described = asyncio.run(_describe_cluster(local_cluster.bootstrap))
    assert sorted(broker["node_id"] for broker in described["brokers"]) == [1, 2, 3]
    controller = cluster.active_controller()
    assert controller in (1, 2, 3)

    result = subprocess.run(
        [sys.executable, "-m", "infra.kafka", "status", "--port", str(cluster.ports[0]), "--brokers", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": serving") == CLUSTER_BROKERS, result.stdout


def test_the_faust_command_reports_the_cluster_from_a_broker_url_list(local_cluster: ClusterInfo) -> None:
    env = {**os.environ, "BROKER_URL": local_cluster.broker_url}
    result = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams_app", "kafka", "status"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("serving") == CLUSTER_BROKERS and output.count("yes") == 1, output


def test_a_paused_node_is_reported_paused_and_its_peers_keep_serving(cluster: LocalCluster) -> None:
    controller = cluster.active_controller()
    victim = next(node for node in cluster.node_ids if node != controller)
    cluster.pause(victim)
    states = {node.node_id: node.state for node in cluster.status().nodes}
    assert states == {node: "paused" if node == victim else "serving" for node in cluster.node_ids}
    assert cluster.active_controller() == controller
    cluster.resume(victim)
    wait_for(
        lambda: cluster.status().node(victim).state == "serving", timeout=30,
        describe=lambda: f"node {victim} after SIGCONT: {cluster.status().node(victim)}",
    )  # fmt: skip


def test_killing_the_active_controller_elects_another(cluster: LocalCluster) -> None:
    killed = cluster.active_controller()
    cluster.kill(killed)
    assert cluster.status().node(killed).state == "down"
    elected: list[int] = []

    def another_leads() -> bool:
        try:
            elected.append(cluster.active_controller(timeout=15))
        except RuntimeError:  # no leader while the election runs
            return False
        return elected[-1] not in (killed, -1)

    wait_for(another_leads, timeout=60, describe=lambda: f"controllers seen after killing {killed}: {elected}")
    cluster.restart(killed)
    assert cluster.status().up


def test_a_node_that_cannot_start_fails_the_start_with_its_log(tmp_path: Path) -> None:
    """A spare cluster (free ports, empty home sharing the jar cache) whose node 2 finds
    its client port taken: start() names node 2 and quotes its first error."""
    libs = kafka.ensure_jars()
    (tmp_path / libs.parent.name).symlink_to(libs.parent)
    spare = LocalCluster(_free_cluster_ports(CLUSTER_BROKERS), tmp_path)
    try:
        with socket.socket() as squatter:
            squatter.bind((kafka.HOST, spare.ports[1]))
            squatter.listen()
            with pytest.raises(kafka.BrokerStartError) as failure:
                spare.start(wait=60)
        message = str(failure.value)
        assert message.startswith(f"node 2 (port {spare.ports[1]})"), message[:300]
        assert "Address already in use" in message.split("--- last")[0], "the first error must be quoted"
        assert str(spare.root / "node-2" / "server.log") in message
        assert "node 1" not in message and "node 3" not in message, "only the failed node is blamed"
    finally:
        spare.stop()


def _free_cluster_ports(count: int) -> tuple[int, ...]:
    """``count`` consecutive client ports that are free, with their controller ports."""
    while True:
        with socket.socket() as probe:
            probe.bind((kafka.HOST, 0))
            first = int(probe.getsockname()[1])
        ports = tuple(range(first, first + count))
        wanted = [*ports, *(port + CONTROLLER_PORT_OFFSET for port in ports)]
        if max(wanted) <= 65535 and all(_free(port) for port in wanted):
            return ports


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((kafka.HOST, port))
        except OSError:
            return False
        return True


# --- replicated topics --------------------------------------------------------------


def test_ensure_topics_creates_three_replicas_with_min_insync_two(local_cluster: ClusterInfo) -> None:
    prefix = f"t-replicated-{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env({
        "BROKER_URL": local_cluster.broker_url, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "2",
        "REPLICATION_FACTOR": "3", "MIN_INSYNC_REPLICAS": "2",
    })  # fmt: skip
    names = [settings.topic(suffix) for suffix in PIPELINE_TOPICS]
    try:
        assert sorted(asyncio.run(ensure_topics(settings))) == sorted(names)
        replicas = asyncio.run(_replica_counts(local_cluster.bootstrap, names))
        assert replicas == {name: [3, 3] for name in names}
        configs = asyncio.run(_topic_config(local_cluster.bootstrap, names, "min.insync.replicas"))
        assert configs == {name: ("2", DYNAMIC_TOPIC_CONFIG) for name in names}
    finally:
        asyncio.run(delete_topics_containing(local_cluster.bootstrap, prefix))


# --- the point of replication: a leader's crash loses nothing acknowledged --------------


def test_acks_all_writes_survive_a_sigkill_of_the_partition_leader(cluster: LocalCluster) -> None:
    """A producer (acks=all, idempotent) writes on while its partition's leader is
    SIGKILLed; a read_committed consumer reading all along gets every record exactly
    once, in order. Leadership moved to a replica in the ISR, the dead broker left
    the ISR, and once restarted it rejoins it."""
    bootstrap = cluster.bootstrap
    topic = f"t-failover-{uuid.uuid4().hex[:6]}"
    asyncio.run(create_topics(bootstrap, [topic], 1, {"min.insync.replicas": "2"}, replication=3))
    try:
        before = cluster.partition_state(topic, 0)
        victim = before.leader
        assert victim in (1, 2, 3) and len(before.replicas) == 3 and sorted(before.isr) == [1, 2, 3], before

        sent, seen, stalled = asyncio.run(_write_through_a_kill(cluster, topic, victim, before=300, after=300))
        assert seen == sent, f"read {len(seen)} of {len(sent)} acknowledged records (or out of order / twice)"

        after = cluster.partition_state(topic, 0)
        assert after.leader not in (victim, -1) and victim not in after.isr, after
        assert stalled < 40, f"writes stalled {stalled:.0f} s after the kill"

        cluster.restart(victim)
        wait_for(
            lambda: victim in cluster.partition_state(topic, 0).isr, timeout=60,
            describe=lambda: f"node {victim} not back in the ISR: {cluster.partition_state(topic, 0)}",
        )  # fmt: skip
        values = [record.value for record in read_all(bootstrap, topic)]
        assert values == sent
    finally:
        asyncio.run(delete_topics_containing(bootstrap, topic))


async def _write_through_a_kill(
    cluster: LocalCluster, topic: str, victim: int, *, before: int, after: int
) -> tuple[list[bytes], list[bytes], float]:
    """Write ``before`` records, SIGKILL ``victim`` and write ``after`` more, while a
    read_committed consumer reads. Returns what was acknowledged, what was read and
    the longest wait for one acknowledgement after the kill."""
    tp = TopicPartition(topic, 0)
    total = before + after
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest",
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    seen: list[bytes] = []

    async def read() -> None:
        while len(seen) < total:
            batches = await consumer.getmany(tp, timeout_ms=500)
            seen.extend(record.value for record in batches.get(tp, []))

    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        reader = asyncio.create_task(read())
        sent = [f"r{i:05d}".encode() for i in range(total)]
        for value in sent[:before]:
            await (await producer.send(topic, value, partition=0))
        await asyncio.to_thread(cluster.kill, victim)
        stalled = 0.0
        for chunk in range(before, total, 20):
            started = time.monotonic()
            pending = [await producer.send(topic, value, partition=0) for value in sent[chunk : chunk + 20]]
            await asyncio.gather(*pending)
            stalled = max(stalled, time.monotonic() - started)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(reader, timeout=60)
        return sent, seen, stalled
    finally:
        await consumer.stop()
        await producer.stop()


# --- the pipeline on the cluster -------------------------------------------------------


def test_a_worker_processes_payments_on_the_cluster_with_replicated_changelogs(cluster_pipeline_factory) -> None:
    """The real worker, given BROKER_URL with the three hosts, charges every unique
    event once under exactly_once; every topic it made (changelogs, Faust's leader
    topic) has 3 replicas and min.insync.replicas=2 set on the topic."""
    pipeline = cluster_pipeline_factory("exactly_once")
    assert len(broker_hosts(pipeline.config.env("w1", web_port=1)["BROKER_URL"])) == CLUSTER_BROKERS
    worker = pipeline.worker()
    traffic = generate(300, duplicate_rate=0.2, bad_rate=0.05, seed=21, id_prefix=pipeline.config.run_id)
    pipeline.send(traffic)
    pipeline.drain()

    counts = asyncio.run(check(pipeline.config, traffic))
    assert counts.charged_unique == counts.unique_events == len(traffic.unique_events) > 0
    assert counts.duplicate_charges == 0 and counts.lost == 0
    assert counts.output_duplicates == 0 and counts.output_missing == 0
    assert counts.balance_mismatches == 0, counts.mismatch_examples
    assert worker.stats()["processing_guarantee"] == "exactly_once"

    bootstrap = pipeline.config.bootstrap
    made = asyncio.run(_topics_containing(bootstrap, pipeline.config.run_id))
    changelogs = [name for name in made if name.endswith("-changelog")]
    assert len(changelogs) == 3, made  # balances, seen-events, pipeline-counters
    replicas = asyncio.run(_replica_counts(bootstrap, made))
    assert {name: set(counts) for name, counts in replicas.items()} == {name: {3} for name in made}
    configs = asyncio.run(_topic_config(bootstrap, made, "min.insync.replicas"))
    assert configs == {name: ("2", DYNAMIC_TOPIC_CONFIG) for name in made}


#: The next test's worker waits this long for the answer to one Kafka request
#: (KAFKA_REQUEST_TIMEOUT; 30 s by default) ...
REQUEST_TIMEOUT_S = 10
#: ... and a partition leader hangs this long: several of its request timeouts, short of
#: Faust's own (90 s for a fetch, 1200 s for a produce).
HANG_S = 60.0


def test_a_leader_that_hangs_holds_the_pipeline_for_a_request_timeout_not_for_its_hang(
    cluster: LocalCluster, cluster_pipeline_factory,
) -> None:
    """bounded-kafka-requests: a broker that takes requests and answers none (SIGSTOP: a
    hung host, a long GC pause) while the cluster gives its partitions to other leaders.
    The worker's requests to it time out (KAFKA_REQUEST_TIMEOUT) and go to the new
    leaders, so the payments sent during the hang are charged before it ends, by every
    stage (dedup, apply, sink). Before (Faust's timeouts: 90 s for a fetch, 1200 s for a
    produce), none of 268 payments sent during the hang were charged 55 s into it. The
    node hung leads a partition of ``unique`` and is not the group's coordinator (the
    consumer's commits wait for Faust's 90 s request timeout there)."""
    pipeline = cluster_pipeline_factory("at_least_once", KAFKA_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT_S))
    config = pipeline.config
    worker = pipeline.worker()
    warm = generate(100, duplicate_rate=0.1, seed=31, id_prefix=f"{config.run_id}-a")
    pipeline.send(warm)
    pipeline.drain()
    node = asyncio.run(_leader_not_coordinating(config.bootstrap, config.topic("unique"), config.app_id))

    cluster.pause(node)
    hung_at = time.monotonic()
    try:
        during = generate(300, duplicate_rate=0.1, seed=32, id_prefix=f"{config.run_id}-b")
        asyncio.run(_send_around_a_hung_broker(config.bootstrap, config.topic("raw"), during.records))
        expected = set(during.unique_events)
        charged: set[str] = set()
        while time.monotonic() - hung_at < HANG_S - 5 and not expected <= charged:
            time.sleep(1.0)
            charged = set(charges_by_event(config.sink_db))
        charged_within = time.monotonic() - hung_at
    finally:
        cluster.resume(node)
    assert expected <= charged, (
        f"{len(expected - charged)} of {len(expected)} payments sent while node {node} hung were not charged "
        f"within {charged_within:.0f} s of the hang\n{worker.log_tail(30)}")
    print(f"charged within {charged_within:.0f} s of a {HANG_S:.0f} s hang")

    pipeline.drain()
    traffic = Traffic(records=warm.records + during.records,
                      unique_events={**warm.unique_events, **during.unique_events},
                      duplicates=warm.duplicates + during.duplicates)
    counts = asyncio.run(check(config, traffic))
    assert counts.duplicate_charges == 0 and counts.lost == 0
    assert counts.charged_unique == counts.unique_events == len(traffic.unique_events)
    assert counts.balance_mismatches == 0, counts.mismatch_examples


async def _leader_not_coordinating(bootstrap: str, topic: str, group: str) -> int:
    """A node leading a partition of ``topic`` that is not ``group``'s coordinator."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        coordinator = await admin.find_coordinator(group)
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    leaders = sorted({p["leader"] for p in described["partitions"]} - {coordinator})
    assert leaders, f"every partition of {topic} is led by the coordinator {coordinator}"
    return leaders[0]


async def _send_around_a_hung_broker(bootstrap: str, topic: str, records: list) -> None:
    """Send with a short request timeout: a request to the hung leader is sent again to
    the partition's new leader after 5 s (the lab's own sender waits 120 s)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                request_timeout_ms=5_000, metadata_max_age_ms=5_000)
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key) for key, value, *_ in records]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


# --- helpers ----------------------------------------------------------------------------


async def _describe_cluster(bootstrap: str) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return dict(await admin.describe_cluster())
    finally:
        await admin.close()


async def _topics_containing(bootstrap: str, fragment: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(name for name in await admin.list_topics() if fragment in name)
    finally:
        await admin.close()


async def _until_all_known(names: list[str], ask: Callable[[], Awaitable[dict[str, T]]]) -> dict[str, T]:
    """``ask()`` again until its answer has every topic of ``names`` (or 20 s passed).

    The client may ask another broker than the one that saw the topics made: in KRaft each
    broker learns new topics from the metadata log on its own, a moment later (CI once
    described them before that broker knew them)."""
    deadline = time.monotonic() + 20
    while True:
        answer = await ask()
        if set(names) <= set(answer) or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


async def _replica_counts(bootstrap: str, names: list[str]) -> dict[str, list[int]]:
    """Replicas of each partition of each topic in ``names`` (all topics described: no auto-creation)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async def described_topics() -> dict[str, Any]:
            return {entry["topic"]: entry for entry in await admin.describe_topics()}

        described = await _until_all_known(names, described_topics)
    finally:
        await admin.close()
    return {
        name: [len(p["replicas"]) for p in sorted(described[name]["partitions"], key=lambda p: p["partition"])]
        for name in names
    }


async def _topic_config(bootstrap: str, names: list[str], key: str) -> dict[str, tuple[str, int]]:
    """``key``'s (value, config source) for each topic in ``names``, from DescribeConfigs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()

    async def configs() -> dict[str, tuple[str, int]]:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, configs={key: None}) for name in names]
        )
        found: dict[str, tuple[str, int]] = {}
        for response in responses:
            for resource in response.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == key:
                        found[resource["resource_name"]] = (entry["config_value"], entry["config_source"])
        return found

    try:
        return await _until_all_known(names, configs)
    finally:
        await admin.close()
