"""A worker started while Kafka does not answer waits for it, then runs: the pipeline's
output is exact once Kafka is there.

Stock Faust's producer tries Kafka once at start and the worker exits
(``KafkaConnectionError: Unable to bootstrap``, exit status 1): a cluster restarting, a deploy
that starts the workers first, a DNS name not yet resolvable, or a worker restarting after a
dependency failure (decision 0049) while Kafka is still away, each stopped the pipeline until
someone restarted it. Here Kafka "is away" because the worker's BROKER_URL is the broker's
proxied address and nothing listens there until the test starts the proxy.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from lab import apps
from lab.checker import check
from lab.proxy import FaultProxy
from lab.workers import WorkerProcess
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.integration

AWAY_S = 8.0  # long enough for several tries (0.5 s doubling, with jitter)


def test_a_worker_started_before_kafka_waits_for_it_then_processes_everything(pipeline_factory, local_kafka):
    pipeline = pipeline_factory("exactly_once")
    config = pipeline.config
    config.extra_env["BROKER_URL"] = f"kafka://{local_kafka.proxied_bootstrap}"  # the worker's only
    traffic = generate(300, duplicate_rate=0.2, seed=31, id_prefix=config.run_id)
    pipeline.send(traffic)  # straight to the broker: only the worker finds Kafka away

    worker = WorkerProcess(config, "w1")
    pipeline.workers.append(worker)
    worker.start()
    wait_for(lambda: "does not answer" in worker.log_path.read_text(), 30,
             lambda: f"expected the worker to say it waits for Kafka:\n{worker.log_tail(20)}")
    time.sleep(AWAY_S)
    assert worker.running, f"the worker exited while Kafka was away:\n{worker.log_tail(40)}"
    assert "Unable to bootstrap" in worker.log_path.read_text()

    with FaultProxy(listen_port=local_kafka.proxied_advertised_port,
                    target_port=local_kafka.proxied_listener_port, drop_rate=0.0):
        worker.wait_ready()
        pipeline.drain()
        counts = asyncio.run(check(config, traffic))
        worker.stop(timeout=30)  # before the proxy goes: a clean stop
    assert counts.output_duplicates == 0 and counts.output_missing == 0, counts
    assert counts.charged_unique == counts.unique_events == len(traffic.unique_events)
    assert counts.duplicate_charges == 0 and counts.lost == 0 and counts.dead_lettered == 0


def test_the_kit_s_example_app_started_before_kafka_waits_for_it(local_kafka, tmp_path):
    """The kit's kafka-wait-at-start in someone else's app (examples/order_dedup.py, exactly
    once): its worker starts while its Kafka address answers nothing, stays up, and once
    Kafka is there forwards every order once. Stock Faust exits (Unable to bootstrap)."""
    prefix = f"ex-{uuid.uuid4().hex[:8]}"
    app_run = apps.AppRun(
        app="examples.order_dedup", input_topic=prefix, output_topics=[f"{prefix}.unique"], group=f"{prefix}-dedup",
        bootstrap=local_kafka.bootstrap, workdir=tmp_path / "kit", guarantee="exactly_once",
        env={"ORDERS_PREFIX": prefix, "BROKER_URL": f"kafka://{local_kafka.proxied_bootstrap}"},  # the worker's
    )
    proxy = FaultProxy(listen_port=local_kafka.proxied_advertised_port,
                       target_port=local_kafka.proxied_listener_port, drop_rate=0.0)
    opening = threading.Timer(AWAY_S + 10.0, proxy.start)  # the worker starts in the meantime
    opening.start()
    try:
        result = apps.run(app_run, apps.order_records(300, seed=21), apps.each_key_once, kills=0)
    finally:
        opening.cancel()
        proxy.stop()
    log = (app_run.workdir / "w1.log").read_text()
    assert "does not answer" in log and "Unable to bootstrap" in log, log[-3000:]
    assert result.restarts == 0, result.summary()  # never exited
    assert result.inputs == 300 and result.holds, result.summary()
