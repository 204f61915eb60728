"""The whole-transactions fix.

exactly_once: Faust commits a partition's offsets only up to its first hole (an offset
neither processed nor a known gap: a record never delivered, or transaction markers
nobody registered yet), but it commits the partition's TRANSACTION whole, with the
outputs and changelog rows of every record processed past the hole. Outputs then
commit without their offsets: if the partition moves or the worker dies before the hole
is resolved, its next owner processes those records again from the committed offset and
their outputs commit twice. Seen in CI (test_fenced_worker.py, f894b32): a rebalance
came while the surviving worker had processed 804 records of `unique` past a hole of 4
offsets; the revocation committed its transactions with offsets at the hole, the next
owner applied the 804 again (804 duplicates in `applied`, 16 balances over by up to
27 %). Stock Faust has the same hole (its commit also stops at the first unacked
offset, faust-streaming#606 on gaps; its transaction commit covers everything sent).
Fix: a commit leaves out every transaction one of whose partitions has a hole (the
transactional producer of a source partition commits the offsets of every topic's
partition of that number); it stays open until the stall heal resolves the hole, and
then commits whole. A hole in a topic whose stage sends nothing to Kafka but dead letters
(declared by the app: ``Processing.sends_only_dead_letters``, e.g. a sink whose effects are
idempotent) holds no transaction: what commits past it is at most a dead letter that a
redelivery sends again (a record held while its dependency fails leaves such a hole,
held-records-released). Where a transaction must end (a revocation, a stop), each hole is
probed first with a read_committed reader: one that holds no committed record is a gap
and the commit goes on. A transaction that still cannot commit whole is left to be
aborted (the next owner's producer, or the broker's transaction timeout, aborts it);
its rows are in the local store already, so the stop is marked unclean, and at a
revocation the worker stops as a fenced one does (fenced-restart: it rejoins, its tables
restored from the changelog).

Regression tests: tests/unit/test_whole_transactions.py (a hole holds its transaction and
no other, the probe at a revocation, the unclean stop), stock and fixed;
tests/integration/test_fenced_worker.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container, Iterable
from typing import Any

from ..fencing import stop_uncommitted
from ..holes import first_hole, held_partitions
from ..probe import bootstrap, first_committed_record
from ..state import Guarantees
from ..transactions import transactional_id

log = logging.getLogger(__name__)

NAME = "whole-transactions"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:Consumer._commit_tps": "a20e230b05ae",
}

#: How long the holes of the partitions whose transactions end may take to probe.
SETTLE_TIMEOUT_S = 5.0


def held_transactions(consumer: Any, exempt: Container[str] = ()) -> dict[str, dict[Any, tuple[int, int]]]:
    """The transactions that cannot commit whole: by transactional id, their partitions
    with a hole and the first hole of each; a hole in an ``exempt`` topic (whose stage sends
    only dead letters to Kafka) holds none."""
    held: dict[str, dict[Any, tuple[int, int]]] = {}
    for tp, hole in held_partitions(consumer).items():
        if tp.topic not in exempt:
            held.setdefault(transactional_id(consumer.app, tp), {})[tp] = hole
    return held


async def settle(consumer: Any, exempt: Container[str] = (), timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Probe the holes of every assigned partition (but ``exempt`` topics'), registering
    each that holds no committed record as a gap, until a hole holds one or ``timeout`` runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for tp in [tp for tp in held_partitions(consumer) if tp.topic not in exempt]:
        while (hole := first_hole(consumer._acked.get(tp) or (), consumer._gap.get(tp),
                                  consumer._committed_offset.get(tp))) is not None:
            left = deadline - loop.time()
            if left <= 0:
                return
            start, end = hole
            try:
                record = await first_committed_record(bootstrap(consumer.app), tp, start, end, timeout=left)
            except TimeoutError:
                return  # an open transaction keeps the range unread: the hole stays
            if record is not None:
                break  # a record to deliver: this partition cannot commit past it here
            log.info("whole-transactions: %s offsets %d-%d hold no committed record; registering "
                     "them as a gap so the transaction commits whole", tp, start, end - 1)
            await consumer._add_gap(tp, start, end - 1)


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import Consumer

    stock_commit_tps = Consumer._commit_tps

    async def _commit_tps(self: Consumer, tps: Iterable[Any], start_new_transaction: bool) -> bool:
        exempt = guarantees.dead_letters_only
        if not start_new_transaction:  # the transactions end here (a revocation or a stop)
            await settle(self, exempt)
        held = held_transactions(self, exempt)
        if held:
            guarantees.intervened(NAME, "held")
            tps = [tp for tp in tps if transactional_id(self.app, tp) not in held]
        committed = await stock_commit_tps(self, tps, start_new_transaction)
        if held and not start_new_transaction:
            await _unfinished(guarantees, self.app, held)
        return committed

    guarantees.classes.replace(Consumer, "_commit_tps", _commit_tps)


async def _unfinished(guarantees: Guarantees, app: Any, held: dict[str, dict[Any, tuple[int, int]]]) -> None:
    """Transactions that end without committing: their outputs are aborted, but their rows
    are in this worker's store. Mark the stop unclean; at a revocation, stop now (the
    worker may be given the partition back and would read those rows)."""
    guarantees.intervened(NAME, "unfinished")
    holes = "; ".join(f"{tp.topic}[{tp.partition}] {start}-{end - 1}"
                      for partitions in held.values() for tp, (start, end) in partitions.items())
    reason = (f"whole-transactions: {len(held)} transactions ended with records processed past a "
              f"hole that holds a record not yet delivered ({holes})")
    guarantees.unclean_stop = reason
    if app.should_stop:
        log.warning("%s: they are left to be aborted; the stop is marked unclean", reason)
        return
    await stop_uncommitted(app, RuntimeError(reason), f"{reason}: they are left to be aborted")
