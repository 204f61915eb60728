"""The source-partition-transactions fix.

exactly_once: stock TransactionManager.send (transport/consumer.py) picks the
transactional producer by the partition of the OUTPUT record, while the source offset is
committed by the producer of the SOURCE partition. An event read from partition 2 whose
output hashes to partition 1 is split over two transactions committed one after the
other: a crash between them duplicates or loses it. Outputs to a topic the app does not
consume get no transactional producer at all (faust-streaming#177), and outputs to a
partition owned by another worker fail with 'No transaction producer found'. Fix: every
send made while processing an event uses the transactional producer of that event's
source partition, the one that commits its offset. Changelog writes sent later by the
ProducerBuffer keep Faust's routing, except when the group leader's metadata missed a
just-created changelog: stock send then raises KeyError in
PartitionAssignor.group_for_topic and crashes the worker; when every other topic is in
one group (topics are grouped by partition count; this app has one count) that group is
used. And a changelog write names its partition, but stock asks the consumer's metadata
for it, which lacks a just-created changelog: the answer is None and stock sends the
record outside any transaction (a table row that survives an abort), while a
transactional id built from it ('<app>-1-None') names no producer (ProducerSendError,
then a worker that hangs with its web server answering: 1 of 7 fresh exactly_once
starts). The partition given is used.

Also faust-streaming#323. Regression test: test_dead_letters_are_inside_the_transaction.
"""

from __future__ import annotations

import logging
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "source-partition-transactions"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:TransactionManager.send": "b8d126be9f10",
}


def install(guarantees: Guarantees) -> None:
    from faust.streams import current_event
    from faust.transport.consumer import TransactionManager

    stock_send = TransactionManager.send

    async def send(
        self: TransactionManager, topic: str, key: bytes | None, value: bytes | None,
        partition: int | None, timestamp: float | None, headers: Any,
        *, transactional_id: str | None = None,
    ) -> Any:
        event = current_event()
        if event is None:  # changelog writes from the ProducerBuffer: partition = source
            groups = self.app.assignor._topic_groups
            group = groups.get(topic)
            if group is None:
                # Faust groups topics by partition count; its single-partition leader topic
                # aside, this app has one group. If the leader's metadata missed a just-created
                # changelog, stock send raises KeyError here and crashes the ProducerBuffer.
                candidates = {g for t, g in groups.items() if not t.endswith("__assignor-__leader")}
                if len(candidates) != 1:
                    return await stock_send(self, topic, key, value, partition, timestamp, headers)
                group = candidates.pop()
            # A changelog write names its partition. Stock asks the consumer's metadata first,
            # which lacks a just-created changelog: None, and the record is sent OUTSIDE the
            # transaction (stock) or to a producer "<app>-<group>-None" that does not exist.
            p = partition if partition is not None else self.consumer.key_partition(topic, key, None)
            if p is None:
                return await stock_send(self, topic, key, value, partition, timestamp, headers)
            return await self.producer.send(topic, key, value, p, timestamp, headers,
                                            transactional_id=f"{self.app.conf.id}-{group}-{p}")
        source = event.message.tp
        group = self.app.assignor.group_for_topic(source.topic)
        return await self.producer.send(
            topic, key, value, self.consumer.key_partition(topic, key, partition),
            timestamp, headers,
            transactional_id=f"{self.app.conf.id}-{group}-{source.partition}",
        )

    guarantees.classes.replace(TransactionManager, "send", send)
