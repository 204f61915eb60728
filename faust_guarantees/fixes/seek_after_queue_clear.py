"""The seek-after-queue-clear fix.

Every guarantee: when recovery completes, Faust seeks the stream partitions to their
committed offsets and only THEN resumes flow control, which clears the stream queues
(tables/recovery.py on_recovery_completed and _resume_streams). With the fetcher already
running, records fetched between the seek and the clear are dropped from the queues
while the fetcher's read offset has moved past them: they are never delivered. Faust's
commit guard tolerates a head gap of one offset (Consumer._new_offset: min(acked) -
committed > 1), so a single dropped record is committed past and lost for good; 2 of 4
exactly_once crash-mid-transaction lab runs (seed 11) lost an event, 0 of 4 with the
fix. Fix: the stream partitions are sought to their committed offsets once more after
Faust's clear; what was already processed is skipped on re-delivery
(faust_guarantees/memory.py).

Regression: the lab cell --guarantee exactly_once --fault crash-mid-transaction --seed
11.
"""

from __future__ import annotations

import logging
from typing import Any

from ..seeking import quiescent_seek
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "seek-after-queue-clear"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.recovery:Recovery.on_recovery_completed": "6ef567acf072",
    "faust.tables.recovery:Recovery._resume_streams": "d986a6710c1a",
}


def install(guarantees: Guarantees) -> None:
    from faust.tables.recovery import Recovery

    def seek_again_after(stock: Any) -> Any:
        async def resume(self: Recovery, generation_id: int = 0) -> None:
            await stock(self, generation_id)
            consumer = self.app.consumer
            if self.app.consumer_generation_id != generation_id or not consumer.assignment():
                return  # another rebalance is under way: it seeks again itself
            await quiescent_seek(consumer, consumer.perform_seek)
            log.info("seek-after-queue-clear: stream partitions sought to their committed offsets "
                     "again after Faust cleared its stream queues")

        return resume

    for name in ("on_recovery_completed", "_resume_streams"):
        guarantees.classes.replace(Recovery, name, seek_again_after(getattr(Recovery, name)))
