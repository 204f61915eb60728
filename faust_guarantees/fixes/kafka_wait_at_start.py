"""The kafka-wait-at-start fix.

Every guarantee (liveness): Faust's producer, the first part of a worker to reach Kafka,
tries once when the worker starts (aiokafka's bootstrap). A worker started while no broker
answers (a cluster restarting, a deploy that starts the workers first, a DNS name not yet
resolvable, a supervisor restarting the worker during an outage) exits at once with
``KafkaConnectionError: Unable to bootstrap`` (exit status 1), and the pipeline stays down
until someone starts it again. Kafka Streams' and Quix's clients keep trying. No upstream
report found. Fix: before the producer starts, a metadata request is tried until a broker
answers, 0.5 s apart at first and at most 30 s apart with jitter, each try logged
(faust_guarantees/brokers.py); a stop (SIGTERM) ends the wait.

Regression tests: tests/integration/test_kafka_down_at_start.py (the payments worker, and the
kit's example app started before its Kafka).
"""

from __future__ import annotations

from ..brokers import wait_for_brokers
from ..state import Guarantees

NAME = "kafka-wait-at-start"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.drivers.aiokafka:Producer.on_start": "219c9a7a785d",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.drivers.aiokafka import Producer, server_list

    async def on_start(self: Producer) -> None:
        transport = self.transport
        await wait_for_brokers(server_list(transport.url, transport.default_port))
        await Producer.on_start(self)  # stock: creates and starts aiokafka's producer

    guarantees.classes.replace(Producer, "on_start", on_start)
