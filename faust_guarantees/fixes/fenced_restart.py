"""The fenced-restart fix.

exactly_once: a worker paused past its session timeout (a GC pause, a stopped VM) comes
back a zombie: another worker owns its partitions and has fenced its transactional
producers. Stock TransactionManager.commit (transport/consumer.py) catches the
ProducerFenced of its next commit and crashes the app (exit 1), and its shutdown marks
the stop clean: the restart keeps local table rows written by the aborted transactions
(a dedup row of an event whose output was rolled back loses that event). Fix: the fenced
commit is not retried, events in progress are neither acked as done nor dead-lettered
(faust_guarantees/processing.py), /health says 'fenced', and the worker stops with its stop
marked unclean, so the supervisor's restart wipes the local state and restores it from
the committed changelog (wipe-unclean-state). Rejoining in the same process (Kafka
Streams' 'task migrated') was tried: after an in-process wipe and recovery the restored
balances came out short (19-24 output duplicates, balances off) for reasons not yet
found; a restart is exact.

Regression test: test_fenced_worker.py (SIGSTOP past the session timeout mid-stream with
a second worker, SIGCONT, restart: exact).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..fencing import fenced, on_fenced
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "fenced-restart"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:TransactionManager.commit": "fbb29c3467ac",
}


def install(guarantees: Guarantees) -> None:
    from aiokafka.errors import ProducerFenced
    from faust.transport.consumer import TransactionManager

    async def commit(self: TransactionManager, offsets: Mapping[Any, int],
                     start_new_transaction: bool = True) -> bool:
        app = self.app
        if fenced(app):
            return False
        try:
            # Stock catches ProducerFenced around the same call and crashes the app.
            await self.producer.commit_transactions(
                _by_transactional_id(app, offsets), app.conf.id, start_new_transaction=start_new_transaction,
            )
        except ProducerFenced as exc:
            await on_fenced(app, exc)
            return False
        return True

    guarantees.classes.replace(TransactionManager, "commit", commit)


def _by_transactional_id(app: Any, offsets: Mapping[Any, int]) -> dict[str, dict[Any, int]]:
    """Offsets grouped by the transactional producer that commits them (as stock)."""
    grouped: dict[str, dict[Any, int]] = {}
    for tp, offset in offsets.items():
        group = app.assignor.group_for_topic(tp.topic)
        grouped.setdefault(f"{app.conf.id}-{group}-{tp.partition}", {})[tp] = offset
    return grouped
