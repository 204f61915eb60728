"""The revoked-producers fix.

exactly_once (liveness): Faust keeps one transactional producer per source partition it
is assigned and is meant to stop those of the partitions a rebalance takes away
(TransactionManager.on_rebalance, 'Stopping N transactional producers'). It maps the
revoked partitions to producers through _tps_to_active_tpgs, which skips the partitions
the NEW assignment makes standbys of this worker; a partition a worker loses stays with it
as a standby (with one standby replica and two workers, every one), so its producer is
never stopped (no worker log of any run has the 'Stopping' line). When such a partition
comes back after another worker
used it, Faust begins a transaction on the old producer, whose epoch the other worker's
InitProducerId has bumped: the first send or commit fails as fenced ('Invalid state
transition IN_TRANSACTION -> IN_TRANSACTION' at the assignment, then ProducerFenced or
'not in transaction'), and the worker stops as a fenced one, though nothing was wrong: a
partition moving away and back costs a restart and a full table restore. Fix: after
Faust's own handling, every transactional producer whose partition this worker is not
assigned is stopped, so a partition that comes back gets a new producer (its
InitProducerId fences the previous owner, as it must).

Regression test: tests/unit/test_faust_fixes_unit.py, stock (the revoked partitions'
producers kept) and fixed (stopped).
"""

from __future__ import annotations

import logging
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "revoked-producers"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:TransactionManager.on_rebalance": "2c190b35003a",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import TransactionManager

    stock_on_rebalance = TransactionManager.on_rebalance

    async def on_rebalance(self: TransactionManager, assigned: set[Any], revoked: set[Any],
                           newly_assigned: set[Any]) -> None:
        await stock_on_rebalance(self, assigned, revoked, newly_assigned)
        kept = self._tps_to_transactional_ids(assigned)
        stale = sorted(set(getattr(self.producer, "_transaction_producers", ())) - kept)
        if stale:
            guarantees.intervened(NAME, "stopped")
            log.info("revoked-producers: stopping %d transactional producers of partitions no longer "
                     "assigned (%s)", len(stale), ", ".join(stale))
            await self._stop_transactions(stale)

    guarantees.classes.replace(TransactionManager, "on_rebalance", on_rebalance)
