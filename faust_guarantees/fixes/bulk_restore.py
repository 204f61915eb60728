"""The bulk-restore fix.

Every guarantee (speed): Faust restores a table one changelog record at a time through
its stream machinery, about 5,000 records/s here, so a 1,000,000-key dedup table took
over 3 minutes to restore when the local state was lost (a new machine, or the
exactly_once wipe after a crash). Fix: before Faust's recovery reads an active changelog
partition that is at least 10,000 records behind, a plain read_committed consumer reads
it in large fetches and writes each batch into RocksDB with one WriteBatch, raw bytes as
Faust's apply_changelog_batch writes them, then sets the persisted offset; Faust reads
only the rest (faust_guarantees/restore.py).

Regression tests: tests/integration/test_bulk_restore.py (the latest committed state,
starting after the persisted offset, a worker with empty state restoring the dedup table
in bulk).
"""

from __future__ import annotations

import logging
from typing import Any

from ..probe import bootstrap
from ..restore import BULK_MIN_RECORDS, bulk_restore
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "bulk-restore"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.recovery:Recovery._build_offsets": "27eec86be06c",
}


def install(guarantees: Guarantees) -> None:
    from faust.tables.recovery import Recovery

    stock = Recovery._build_offsets

    async def _build_offsets(self: Recovery, consumer: Any, tps: set[Any], destination: Any, title: str) -> None:
        if destination is self.active_offsets:
            for tp in sorted(tps):
                store = self.tp_to_table[tp].data
                through = self.active_highwaters.get(tp)
                after = destination.get(tp)
                after = -1 if after is None else after
                if not hasattr(store, "_db_for_partition") or through is None or through - after < BULK_MIN_RECORDS:
                    continue
                last = await bulk_restore(bootstrap(self.app), store, tp, after, through)
                if last is not None:
                    destination[tp] = last
        await stock(self, consumer, tps, destination, title)

    guarantees.classes.replace(Recovery, "_build_offsets", _build_offsets)
