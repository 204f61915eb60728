"""Reading a partition from outside the group: what the stall heal asks the broker."""

from __future__ import annotations

from typing import Any


def bootstrap(app: Any) -> str:
    """The app's brokers as a bootstrap list for a plain aiokafka client."""
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


async def first_committed_record(bootstrap: str, tp: Any, start: int, end: int,
                                 timeout: float = 10.0) -> int | None:
    """The offset of the first committed record of ``tp`` in [start, end), or None if
    there is none (only transaction markers or aborted records). Read with a fresh
    read_committed consumer outside any group. Raises TimeoutError while an open
    transaction keeps the range from being read."""
    return (await first_committed_records(bootstrap, {tp: (start, end)}, timeout=timeout))[tp]


async def first_committed_records(bootstrap: str, ranges: dict[Any, tuple[int, int]],
                                  timeout: float = 10.0) -> dict[Any, int | None]:
    """:func:`first_committed_record` for several partitions at once (one client): for each
    ``tp`` of ``ranges``, the offset of its first committed record in ``[start, end)``, or
    None. Raises TimeoutError while any range cannot be read."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    if not ranges:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        pending = {TopicPartition(tp.topic, tp.partition): tp for tp in ranges}
        consumer.assign(list(pending))
        for partition, tp in pending.items():
            consumer.seek(partition, ranges[tp][0])
        found: dict[Any, int | None] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            fetched = await consumer.getmany(*pending, timeout_ms=200)
            for partition, records in fetched.items():
                if partition in pending and records:
                    tp = pending.pop(partition)
                    found[tp] = records[0].offset if records[0].offset < ranges[tp][1] else None
            for partition in list(pending):
                if await consumer.position(partition) >= ranges[pending[partition]][1]:
                    found[pending.pop(partition)] = None
        if pending:
            raise TimeoutError(f"{sorted(map(str, pending.values()))}: not readable with read_committed in {timeout} s")
        return found
    finally:
        await consumer.stop()
