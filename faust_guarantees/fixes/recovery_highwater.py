"""The recovery-highwater fix.

exactly_once: table recovery reads each changelog partition up to its highwater, which
Faust takes from AIOKafkaConsumerThread._highwaters: under transactions the consumer's
cached last stable offset (AIOKafkaConsumer.last_stable_offset), known only once a fetch
of that partition has answered. For a partition not fetched since it was assigned it is
None, Faust turns None into -1, and recovery reads nothing: the table starts from
whatever the local store holds. Seen when a fenced worker rejoined with its local state
wiped: 'Highwater - Active' -1 for every active changelog partition, every balance of
those partitions restarted from 0 and 24 events were forwarded twice (their dedup rows
gone). Fix: ask the broker (ListOffsets with the consumer's read_committed isolation
level: the last stable offset) as Faust does outside transactions.

Regression test: test_faust_fixes_unit.py, stock and fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "recovery-highwater"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": "a7f4f97d9f32",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def _highwaters(self: AIOKafkaConsumerThread, partitions: list[Any]) -> Mapping[Any, int]:
        # The consumer reads read_committed under exactly_once, so ListOffsets answers the
        # last stable offset, from the broker, fetched or not.
        return await self._ensure_consumer().end_offsets(partitions)

    guarantees.classes.replace(AIOKafkaConsumerThread, "_highwaters", _highwaters)
