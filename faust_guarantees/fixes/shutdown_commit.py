"""The shutdown-commit fix.

Every guarantee: on SIGTERM Faust's consumer makes a last commit
(Consumer.commit_and_end_transactions) before it stops its consumer thread. When that
commit raises (seen under exactly_once: aiokafka's IllegalOperation 'Not in the middle
of a transaction' for a producer whose transaction had already ended), the consumer's
on_stop aborts, the thread is never stopped and the process hangs after 'Closing event
loop' until SIGKILL (robinhood/faust#484, #684). Under exactly_once the stop also ends
every transaction while Faust's periodic commit task still runs: its next commit sends
offsets to a producer outside any transaction, raises the same IllegalOperation and
crashes the worker, which exits 1 on a graceful stop (measured at commit interval 0.1
s). Fix: a failed final commit is logged and the shutdown goes on, and under
exactly_once no commit is attempted once a stop has ended the transactions. Nothing is
lost: the uncommitted events are delivered again to the partitions' next owner, and
under exactly_once their open transactions are aborted.

Regression tests: test_faust_fixes_unit.py (stock and fixed) and
test_a_graceful_stop_under_exactly_once_exits_cleanly (stock crashed in 1 of 3 runs).
"""

from __future__ import annotations

import logging
from typing import Any

from .. import state
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "shutdown-commit"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:Consumer.commit_and_end_transactions": "892377824b11",
    "faust.transport.consumer:Consumer.commit": "a354437baaa0",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import Consumer

    stock = Consumer.commit_and_end_transactions
    stock_commit = Consumer.commit

    async def commit_and_end_transactions(self: Consumer) -> None:
        try:
            await stock(self)
        except Exception as exc:  # noqa: BLE001 - any failure here must not block the shutdown
            state.of(self.app).intervened(NAME, "stop-after-failed-commit")
            log.warning(
                "shutdown-commit: the final commit failed (%r); stopping anyway. The uncommitted "
                "events go to the partitions' next owner (open transactions are aborted).", exc,
            )
        finally:
            # A revocation also ends the transactions, and Faust begins new ones for the
            # partitions it is given; a stop begins none.
            if self.app.in_transaction and self.app.should_stop:
                self._transactions_ended_by_stop = True

    async def commit(self: Consumer, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if getattr(self, "_transactions_ended_by_stop", False):
            log.debug("shutdown-commit: no commit after the stop ended the transactions")
            return False  # not committed: the events go to the partitions' next owner
        return await stock_commit(self, topics, start_new_transaction=start_new_transaction)

    guarantees.classes.replace(Consumer, "commit_and_end_transactions", commit_and_end_transactions)
    guarantees.classes.replace(Consumer, "commit", commit)
