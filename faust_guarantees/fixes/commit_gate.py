"""The commit-gate fix.

exactly_once: Faust commits from a timer while agents keep processing, so an event
processed during a commit has its outputs in transaction N and its offset in N+1
(faust-streaming#517: duplicates in read_committed output after kill -9). Table
changelog records still in Faust's ProducerBuffer at commit time land in the next
transaction too. Fix: commits take the CommitGate (faust_guarantees/gate.py), which
waits for events in progress and holds new ones, and drain the ProducerBuffer before
sending offsets.

Regression tests:
test_faust_fixes_unit.py::test_the_gated_commit_gives_up_on_a_buffer_that_will_never_drain;
the lab's exactly_once cells (crash-mid-transaction, random-kills).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import state
from ..fencing import fenced
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "commit-gate"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:Consumer.force_commit": "cc094614d22c",
    "faust.transport.producer:ProducerBuffer._send_pending": "4a9d5f932b56",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer

    stock_force_commit = Consumer.force_commit
    stock_send_pending = ProducerBuffer._send_pending

    async def send_pending(self: ProducerBuffer, fut: Any) -> None:
        self._in_flight = getattr(self, "_in_flight", 0) + 1
        try:
            await stock_send_pending(self, fut)
        finally:
            self._in_flight -= 1

    async def force_commit(self: Consumer, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with state.of(self.app).gate.committing():
            if not await _drain(self.app.producer.buffer, self.app):
                return False  # changelog records not in their transactions: commit nothing
            return await stock_force_commit(self, topics, start_new_transaction=start_new_transaction)

    guarantees.classes.replace(ProducerBuffer, "_send_pending", send_pending)
    guarantees.classes.replace(Consumer, "force_commit", force_commit)


async def _drain(buffer: Any, app: Any) -> bool:
    """Wait until every buffered message has been handed to its producer; False if it
    never will be: the buffer's task crashed or stopped (seen once the worker was fenced:
    'Can't send messages while not in transaction'), or the app is crashed or fenced. A
    commit waiting here forever held up the revocation's commit and the worker's stop
    (the fence test's worker never exited at commit interval 0.1 s)."""
    while buffer.size or getattr(buffer, "_in_flight", 0):
        if buffer._crashed.is_set() or buffer.should_stop or app._crashed.is_set() or fenced(app):
            return False
        buffer.message_sent.clear()  # no await between the check and clear(): no race
        try:
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            continue
    return True
