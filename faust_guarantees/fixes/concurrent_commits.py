"""The concurrent-commits fix.

exactly_once (speed): Faust keeps one transactional producer per source partition and
commits them one after another (aiokafka driver Producer.commit_transactions: send
offsets, commit, begin, ~6.5-7 ms each here), so a commit takes ~27 ms at 4 partitions
and grows with every partition a worker holds; the commit gate holds the stages for all
of it, and at a 100 ms commit interval that is a quarter of the time. The transactions
are independent (one per partition, each under its own lock). Fix: the same three steps
for every producer at once; a failure of any raises as before, after the others
finished.

Regression test: test_faust_fixes_unit.py, stock (one transaction after the other) and
fixed (all at once, every step of each).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "concurrent-commits"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.drivers.aiokafka:Producer.commit_transactions": "70091e6f4319",
}


#: A transaction commit slower than this logs how long each of its steps took.
SLOW_COMMIT_S = 2.0


def install(guarantees: Guarantees) -> None:
    from faust.transport.drivers.aiokafka import Producer

    async def commit_transactions(self: Producer, tid_to_offset_map: Mapping[str, Mapping[Any, int]],
                                  group_id: str, start_new_transaction: bool = True) -> None:
        async def commit_one(transactional_id: str, offsets: Mapping[Any, int]) -> None:
            loop = asyncio.get_running_loop()
            steps = [("lock", loop.time())]
            async with self._trn_locks[transactional_id]:
                producer = self._transaction_producers.get(transactional_id)
                if producer is None:
                    log.warning("Commit invoked for unknown transaction %s", transactional_id)
                    return
                steps.append(("send_offsets", loop.time()))
                await producer.send_offsets_to_transaction(offsets, group_id)
                steps.append(("commit", loop.time()))
                await producer.commit_transaction()
                if start_new_transaction:
                    steps.append(("begin", loop.time()))
                    await producer.begin_transaction()
            steps.append(("end", loop.time()))
            if steps[-1][1] - steps[0][1] > SLOW_COMMIT_S:  # where a slow commit waited
                log.warning("concurrent-commits: the commit of %s took %.1f s (%s)", transactional_id,
                            steps[-1][1] - steps[0][1], ", ".join(
                                f"{name} {end - start:.2f} s" for (name, start), (_, end) in itertools.pairwise(steps)))

        results = await asyncio.gather(
            *(commit_one(tid, offsets) for tid, offsets in tid_to_offset_map.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    guarantees.classes.replace(Producer, "commit_transactions", commit_transactions)
