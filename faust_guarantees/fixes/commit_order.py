"""The commit-order fix.

at_most_once (this project's mode; Faust has none): a partition has two committers, each
stage's commit BEFORE it processes an event (faust_guarantees/processing.py Processing._commit_first)
and Faust's periodic commit of acked offsets. Faust computes its offsets, then flushes
the producer, then commits (Consumer._commit_offsets), and the consumer thread runs two
calls at once: a commit computed before later pre-commits can reach the broker after
them and move the committed offset BACK, so a crash then delivers again events already
processed. Seen on the broker: the group's commits in __consumer_offsets of one
at_most_once random-kills run (1,000 events, 6 kills) went 92 then 91 and 115 then 114
on unique-1, 150 then 149 on unique-3, 200 then 199 on applied-2. Fix: commits go to the
broker one at a time, and an offset at or below one already committed for its partition
is not sent.

7 of 10 runs had such a regression before the fix, 0 of 6 after. Regression test:
tests/unit/test_commit_order.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "commit-order"
#: The guarantee it is for; None: every one.
ONLY = "at_most_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:ThreadDelegateConsumer._commit": "a20eec84e4b2",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import ThreadDelegateConsumer

    stock = ThreadDelegateConsumer._commit

    async def _commit(self: ThreadDelegateConsumer, offsets: Mapping[Any, int]) -> bool:
        lock = self.__dict__.setdefault("_commit_order_lock", asyncio.Lock())
        highest: dict[Any, int] = self.__dict__.setdefault("_commit_order_highest", {})
        async with lock:
            ahead = {tp: offset for tp, offset in offsets.items() if offset > highest.get(_key(tp), -1)}
            if not ahead:
                return True  # a later offset of each partition is committed already
            done = await stock(self, ahead)
            if done:
                highest.update({_key(tp): offset for tp, offset in ahead.items()})
            return done

    guarantees.classes.replace(ThreadDelegateConsumer, "_commit", _commit)


def _key(tp: Any) -> tuple[str, int]:
    """Faust's TP and aiokafka's TopicPartition name a partition alike."""
    return tp.topic, tp.partition
