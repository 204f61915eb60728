"""The livelock-position fix.

Every guarantee: Faust's livelock detector (Consumer._commit_livelock_detector, every
2.5 commit intervals) reads aiokafka's TopicPartitionState.position of every assigned
partition (AIOKafkaConsumerThread.verify_event_path), and aiokafka ASSERTS that a
position exists. A partition just assigned or sought, waiting for its offset, has none:
the AssertionError crashes the consumer service and the worker stops (seen 200 ms after
'Worker ready' at commit interval 0.1 s, in 1 of 6 runs of the exactly_once
graceful-stop test; the benchmark's 0.1 s runs exited 1 too). No upstream report found.
Fix: a partition without a position is skipped by that check; there is nothing to verify
until it has one.

Regression test: test_faust_fixes_unit.py (stock raises, fixed returns).
"""

from __future__ import annotations

import logging
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "livelock-position"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.verify_event_path": "b983e7735f64",
}


def install(guarantees: Guarantees) -> None:
    from aiokafka import TopicPartition
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    stock = AIOKafkaConsumerThread.verify_event_path

    def verify_event_path(self: AIOKafkaConsumerThread, now: float, tp: Any) -> None:
        try:
            assignment = self._ensure_consumer()._fetcher._subscriptions.subscription.assignment
            state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        except AttributeError:  # no subscription or assignment yet: stock reports that itself
            state = None
        if state is not None and not state.has_valid_position:
            return None  # being sought or reset: nothing to verify yet
        return stock(self, now, tp)

    guarantees.classes.replace(AIOKafkaConsumerThread, "verify_event_path", verify_event_path)
