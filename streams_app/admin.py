"""Topic administration and sending sample traffic, shared by commands, lab and tests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from .settings import Settings

log = logging.getLogger(__name__)

PIPELINE_TOPICS = ("raw", "dlq", "events", "unique", "applied")

#: A record to send: key, value and its headers ``[(name, bytes), ...]``.
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
TOPIC_READY_TIMEOUT_S = 15.0
async def ensure_topics(settings: Settings) -> list[str]:
    """Create the pipeline's topics with TOPIC_PARTITIONS partitions if missing.

    Run before producing: a topic auto-created by the broker on first send gets
    the broker's default partition count, and a source topic with fewer
    partitions than the others breaks the co-partitioning the tables rely on.
    Topics get REPLICATION_FACTOR replicas and MIN_INSYNC_REPLICAS, as the ones the
    worker creates. Returns the names it created.
    """
    names = [settings.topic(suffix) for suffix in PIPELINE_TOPICS]
    return await create_topics(
        settings.bootstrap, names, settings.partitions, settings.topic_configs,
        replication=settings.replication_factor,
    )  # fmt: skip


async def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int, configs: dict[str, str] | None = None,
    *, replication: int = 1, timeout: float = TOPIC_READY_TIMEOUT_S,
) -> list[str]:
    """Create the missing topics of ``names`` and wait until every partition has a leader.

    ``replication`` is the replication factor (1 by default: scratch topics of
    tests and benchmarks; the pipeline's come from :func:`ensure_topics`).

    Producing straight after a CreateTopics answer otherwise meets
    NotLeaderForPartition (retried, but logged as a warning per partition).
    Returns the names it created.
    """
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        missing = [n for n in names if n not in set(await admin.list_topics())]
        if missing:
            response = await admin.create_topics(
                [NewTopic(n, partitions, replication, topic_configs=configs or {}) for n in missing]
            )
            for topic, code, *_ in response.topic_errors:
                if code and code != TopicAlreadyExistsError.errno:  # a worker may create them meanwhile
                    raise for_code(code)(f"creating topic {topic}")
        deadline = time.monotonic() + timeout
        while not await _have_leaders(admin, names, partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics without leaders after {timeout} s: {names}")
            await asyncio.sleep(0.05)
        return missing
    finally:
        await admin.close()


async def _have_leaders(admin: AIOKafkaAdminClient, names: list[str], partitions: int) -> bool:
    # All topics: a Metadata request naming a missing topic would auto-create it.
    described = {entry["topic"]: entry for entry in await admin.describe_topics()}
    return all(
        n in described and not described[n]["error_code"]
        and len(described[n]["partitions"]) == partitions
        and all(p["leader"] >= 0 for p in described[n]["partitions"])
        for n in names
    )


def partition_rule(partitions: int) -> str:
    """The partition-count rule, as the start check and a worker assigned an added
    partition (application.partitions_added) both state it."""
    return (f"every pipeline topic and changelog must keep TOPIC_PARTITIONS={partitions} partitions: an "
            f"event id's dedup state and an account's balance live in the partition its key hashes to, "
            f"so with another count a key is looked up where its state is not and a payment charged twice")


async def partition_count_problems(settings: Settings) -> list[str]:
    """What is wrong with the partition counts of the pipeline topics that exist: each
    needs TOPIC_PARTITIONS (the dedup state of an event id lives in one partition of
    ``raw`` and ``events``, its balance in one of ``unique``, and Faust's tables in the
    same partition numbers). Missing topics are fine: the worker creates them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        described = {entry["topic"]: entry for entry in await admin.describe_topics()}
    finally:
        await admin.close()
    problems = []
    for suffix in PIPELINE_TOPICS:
        name = settings.topic(suffix)
        found = len(described[name]["partitions"]) if name in described else None
        if found is not None and found != settings.partitions:
            problems.append(
                f"topic {name} has {found} partitions but TOPIC_PARTITIONS={settings.partitions}: "
                f"{partition_rule(settings.partitions)}. Set TOPIC_PARTITIONS={found} if the others have it "
                f"too, or recreate {name} with {settings.partitions} partitions (or use another TOPIC_PREFIX)")
    return problems


async def delete_topics_containing(bootstrap: str, fragment: str) -> int:
    """Delete every topic whose name contains ``fragment``; return how many.

    A run's topics share its unique id (``TOPIC_PREFIX`` and ``APP_ID``), so this
    takes the changelogs and repartition topics Faust or Quix created along with
    the pipeline's own. Lab and benchmark runs call it when done: a broker keeping
    the partitions of hundreds of old runs starts slowly and wastes disk.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if fragment in t]
        if doomed:
            await admin.delete_topics(doomed)
        return len(doomed)
    finally:
        await admin.close()


#: How long :func:`send_records` waits for a broker's answer (aiokafka's default: 40 s).
SEND_TIMEOUT_MS = 120_000


async def send_records(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None] | Record],
    *, idempotent: bool = True, on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send ``(key, value)`` or ``(key, value, headers)`` records with acks=all; return
    how many were acknowledged. A value of None is a tombstone.

    ``idempotent=True`` makes the producer's own retries harmless (KIP-98
    sequence numbers), so the only duplicates in the topic are the ones the
    traffic generator wrote on purpose.
    """
    # A leader that hangs (the lab's broker-pause: SIGSTOP for 30 s) holds its partitions'
    # batches until its requests time out; aiokafka's default (40 s) then failed the send
    # (KafkaTimeoutError) before the cluster had moved the leadership. A producer that
    # waits longer gets its answer, or NotLeader and a retry to the new leader.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotent, linger_ms=5,
        request_timeout_ms=SEND_TIMEOUT_MS,
    )
    await producer.start()
    sent = 0
    try:
        pending: list[asyncio.Future] = []
        for key, value, *headers in records:
            pending.append(await producer.send(topic, value, key=key, headers=headers[0] if headers else None))
            if len(pending) >= 500:
                sent += await _settle(pending, on_sent)
        sent += await _settle(pending, on_sent)
    finally:
        await producer.stop()
    return sent


async def _settle(pending: list[asyncio.Future], on_sent: Callable[[int], None] | None) -> int:
    await asyncio.gather(*pending)
    done = len(pending)
    pending.clear()
    if on_sent:
        on_sent(done)
    return done
