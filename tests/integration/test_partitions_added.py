"""Partitions added to a pipeline topic while the worker runs: it stops, says why and what to
do, commits nothing of them, and a restart refuses the same way.

The start check refuses pipeline topics whose partition count is not TOPIC_PARTITIONS (an
event id's dedup state and an account's balance live in the partition its key hashes to);
a count raised while the worker ran was not checked at all. Kafka Streams stops a task
whose source topic changed its partition count, for the same reason.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from lab.checker import check
from lab.workers import WorkerProcess
from streams_app.traffic import generate

pytestmark = pytest.mark.integration


async def _add_partition(bootstrap: str, topic: str, total: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total_count=total)})
    finally:
        await admin.close()


def test_a_partition_added_while_running_stops_the_worker_with_what_to_do(pipeline_factory):
    pipeline = pipeline_factory("at_least_once")
    config = pipeline.config
    config.extra_env["CONSUMER_METADATA_MAX_AGE_MS"] = "2000"  # Faust's 5 minutes: the test's wait
    worker = pipeline.worker()
    traffic = generate(200, duplicate_rate=0.2, seed=61, id_prefix=config.run_id)
    pipeline.send(traffic)
    pipeline.drain()

    asyncio.run(_add_partition(config.bootstrap, config.topic("unique"), config.partitions + 1))
    code = worker.wait_exit(90)
    log = worker.log_path.read_text()
    assert code is not None, f"the worker went on with partition {config.partitions}:\n{worker.log_tail(40)}"
    assert code != 0
    assert f"partitions were added to {config.topic('unique')}" in log
    assert f"TOPIC_PARTITIONS={config.partitions}" in log and "another TOPIC_PREFIX" in log

    # What it processed before stays exact; a restart refuses with the start check's words.
    counts = asyncio.run(check(config, traffic))
    assert counts.charged_unique == counts.unique_events and counts.duplicate_charges == 0 and counts.lost == 0
    again = WorkerProcess(config, "w2")
    pipeline.workers.append(again)
    again.start()
    assert again.wait_exit(90) not in (None, 0), again.log_tail(40)
    assert f"has {config.partitions + 1} partitions but TOPIC_PARTITIONS={config.partitions}" in \
        again.log_path.read_text()
