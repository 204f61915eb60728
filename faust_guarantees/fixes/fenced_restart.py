"""The fenced-restart fix.

exactly_once: a worker paused past its session timeout (a GC pause, a stopped VM) comes
back a zombie: another worker owns its partitions and has fenced its transactional
producers. Stock TransactionManager.commit (transport/consumer.py) catches the
ProducerFenced of its next commit and crashes the app (exit 1; when aiokafka's sender met
the fence first, the commit fails with an AssertionError from aiokafka's fatal transaction
state instead, and the crash does not even say "fenced"), and its shutdown marks
the stop clean: the restart keeps local table rows written by the aborted transactions
(a dedup row of an event whose output was rolled back loses that event). Fix: a commit
that fails on a fence (ProducerFenced, or any error once a producer of the commit died of
one) is not retried, events in progress are neither acked as done nor dead-lettered
(faust_guarantees/processing.py), /health says 'fenced', and the worker stops with its stop
marked unclean; then, as Kafka Streams rejoins after 'task migrated', the process starts
again as a new worker (faust_guarantees/fencing.py restart_process: the same command line,
pid and output, once Faust's shutdown is complete), which wipes the local state and
restores it from the committed changelog (wipe-unclean-state). With
install(after_fence="exit") the worker exits instead and its supervisor restarts it.
Rejoining without a new process (wiping and recovering tables inside the running app) was
tried: the restored balances came out short (19-24 output duplicates) for reasons not
found; a fresh process is exact.

Regression test: test_fenced_worker.py (SIGSTOP past the session timeout mid-stream with
a second worker, SIGCONT, restart: exact).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..fencing import fenced, is_fenced, on_fenced
from ..state import Guarantees
from ..transactions import transactional_id

log = logging.getLogger(__name__)

NAME = "fenced-restart"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:TransactionManager.commit": "fbb29c3467ac",
    "aiokafka.producer.transaction_manager:TransactionManager.fatal_error": "8e9fd08dc500",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import TransactionManager

    async def commit(self: TransactionManager, offsets: Mapping[Any, int],
                     start_new_transaction: bool = True) -> bool:
        app = self.app
        if fenced(app):
            return False
        by_id = _by_transactional_id(app, offsets)
        try:
            # Stock catches ProducerFenced around the same call and crashes the app.
            await self.producer.commit_transactions(by_id, app.conf.id, start_new_transaction=start_new_transaction)
        except Exception as exc:
            fence = exc if is_fenced(exc) else fence_behind(self.producer, by_id)
            if fence is None:
                raise
            await on_fenced(app, fence)
            return False
        return True

    guarantees.classes.replace(TransactionManager, "commit", commit)


def fence_behind(producer: Any, transactional_ids: Iterable[str]) -> BaseException | None:
    """The fence that killed one of these transactional producers, if one did.

    When a produce or AddPartitionsToTxn response says the producer was fenced, aiokafka's
    sender task dies with ProducerFenced and puts the transaction manager in its fatal
    state; the commit that comes next then fails with whatever that state makes of it (an
    AssertionError "Invalid state transition" from committing_transaction), not with
    ProducerFenced. Seen in CI on a913dd7: the fenced worker crashed without saying it was
    fenced (test_fenced_worker.py)."""
    for tid in transactional_ids:
        aio = producer._transaction_producers.get(tid)
        manager = getattr(aio, "_txn_manager", None)
        if manager is None or not manager.is_fatal_error():
            continue
        waiter = manager._transaction_waiter
        if waiter is not None and waiter.done() and not waiter.cancelled():
            cause = waiter.exception()
            if cause is not None and is_fenced(cause):
                return cause
    return None


def _by_transactional_id(app: Any, offsets: Mapping[Any, int]) -> dict[str, dict[Any, int]]:
    """Offsets grouped by the transactional producer that commits them (as stock)."""
    grouped: dict[str, dict[Any, int]] = {}
    for tp, offset in offsets.items():
        grouped.setdefault(transactional_id(app, tp), {})[tp] = offset
    return grouped
