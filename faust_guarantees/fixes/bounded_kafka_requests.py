"""The bounded-kafka-requests fix.

Every guarantee (liveness): Faust gives its producers ``producer_request_timeout`` (1200 s
by default) as aiokafka's ``request_timeout_ms``, and aiokafka uses that one number for
three waits: how long a connection waits for the answer to any request, how long the
broker may hold a Produce request waiting for the in-sync replicas' acks (the request's
own timeout field), and how long a send may wait for room in a partition's buffer. Its
consumer's fetches and metadata requests wait ``broker_request_timeout`` (90 s), the
value its group requests need (a JoinGroup is held by the coordinator until the group's
members have joined). Kafka's own clients bound each request by ``request.timeout.ms``
(30 s) and only the delivery and the group's joins by minutes. A broker that takes
requests and answers none (a hung or paused leader whose partitions the cluster already
gave to other replicas, a connection whose packets are lost while it stays open) then
holds its partitions: the stage that sends to one of them stops when its buffer is full,
the commit waits for the flush, every stage of the worker stops with it, and nothing is
logged; the fetches of the partitions it led wait 90 s. Measured on the 3-node cluster
with a partition leader SIGSTOPped for 100 s: 261 of 268 payments sent during the hang
were not charged 95 s into it. An idempotent (or transactional) aiokafka producer never
expires a batch and sends a timed-out request again, so a shorter wait loses nothing and
repeats nothing (the broker drops a batch it already has by its sequence number). Fix:
the producers' requests and the consumer's fetch and metadata requests (not its group
coordinator's) wait at most ``request_timeout`` (of :func:`faust_guarantees.install`;
Kafka's 30 s by default) each; a request that times
out closes its connection, refreshes the metadata and goes again, to the partition's new
leader if it moved. The wait for buffer room stays ``producer_request_timeout``; a send's
wait for its topic's metadata becomes the request timeout too (Kafka's is 60 s). No
upstream report found. Regression test:
tests/integration/test_cluster.py::test_a_leader_that_hangs_holds_the_pipeline_for_a_request_timeout_not_for_its_hang
(after: every payment sent during the 100 s hang charged within ~45 s of it).

One request also held the others of its connection: Faust builds its consumer with
``fetch_max_wait_ms=1500``, and a broker answers a connection's requests in order, so
a request sent behind a fetch waiting for records (a ListOffsets, the offset reset of a
seek) waits for it. Every worker start that found a partition without a committed offset
spent 3 s in each of its two seeks (Faust's recovery and seek-after-queue-clear:
ListOffsets behind one fetch, the reset behind the next), in 46 of 58 worker logs of an
integration run. Fix: the consumer's fetches wait at most :data:`FETCH_MAX_WAIT_MS`
(500 ms, Kafka's and aiokafka's default) for records; a fetch still returns as soon as a
record arrives, so only an idle worker's fetches come more often.

Installed on the app's own Producer subclass (``_producer_type``, the class Faust's
transport builds every producer from, transactional ones included) and consumer thread
subclass (``_create_worker_consumer``: the consumer it builds, before it starts).
"""

from __future__ import annotations

from typing import Any

from ..state import Guarantees

NAME = "bounded-kafka-requests"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.drivers.aiokafka:Producer._producer_type": "311dc214fc43",
    "faust.transport.drivers.aiokafka:Producer._new_producer": "e72355c3430e",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": "c2701bfc3e6f",
    "aiokafka.producer.producer:AIOKafkaProducer.__init__": "fd6f2966fb3d",
    "aiokafka.producer.sender:SendProduceReqHandler.create_request": "807639a95205",
    "aiokafka.client:AIOKafkaClient._get_conn": "68ce5d839171",
    "aiokafka.client:AIOKafkaClient.send": "246b277687d7",
    "aiokafka.conn:AIOKafkaConnection.send": "5909ea32f4ef",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": "2f1ba7044332",
}

#: The longest a fetch waits at the broker for records (Faust: 1500 ms).
FETCH_MAX_WAIT_MS = 500


def bounded_requests_producer(per_request_s: float) -> type:
    """An aiokafka producer whose requests wait at most ``per_request_s`` for an answer;
    its ``request_timeout_ms`` still bounds the wait for buffer room."""
    from aiokafka import AIOKafkaProducer

    class BoundedRequestsProducer(AIOKafkaProducer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            per_request_ms = min(int(per_request_s * 1000), self._request_timeout_ms)
            self.client._request_timeout_ms = per_request_ms  # each connection's wait for an answer
            self._sender._request_timeout_ms = per_request_ms  # the broker's wait for the replicas' acks

    return BoundedRequestsProducer


def bound_default_requests(client: Any, per_request_s: float) -> None:
    """Requests ``client`` (an aiokafka client) sends on its default connections (fetches,
    metadata, offsets), and every connection's handshake, wait at most ``per_request_s``;
    requests to its group coordinator keep the client's timeout (a JoinGroup waits for
    the group's members)."""
    from aiokafka.client import ConnectionGroup

    group_s = client._request_timeout_ms / 1000
    client._request_timeout_ms = min(client._request_timeout_ms, int(per_request_s * 1000))
    stock = client._get_conn

    async def _get_conn(node_id: Any, *, group: Any = ConnectionGroup.DEFAULT, no_hint: bool = False) -> Any:
        conn = await stock(node_id, group=group, no_hint=no_hint)
        if conn is not None and group is ConnectionGroup.COORDINATION:
            conn._request_timeout = group_s
        return conn

    client._get_conn = _get_conn


def install(guarantees: Guarantees) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer

    per_request_s = guarantees.request_timeout
    producer_type = bounded_requests_producer(per_request_s)
    guarantees.classes.replace(Producer, "_producer_type", _Property(lambda self: producer_type))
    stock_create = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = stock_create(self, transport)
        bound_default_requests(consumer._client, per_request_s)
        consumer._fetch_max_wait_ms = min(consumer._fetch_max_wait_ms, FETCH_MAX_WAIT_MS)  # read at its start
        return consumer

    guarantees.classes.replace(AIOKafkaConsumerThread, "_create_worker_consumer", _create_worker_consumer)


class _Property(property):
    """A property that takes the marks of a fix (a plain property takes no attributes)."""
