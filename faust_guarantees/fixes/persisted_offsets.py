"""The persisted-offsets fix.

Each RocksDB table partition keeps the offset of the last changelog record it holds, so a
restart replays the changelog only from there. exactly_once: Table._on_changelog_sent
registers the offset to persist under the CHANGELOG partition, TableManager.on_commit
looks it up under the SOURCE partitions, so the persisted offset is never written and
every restart replays the whole changelog. at_least_once: the offset is written with a
RocksDB put of its own for every changelog record (one per table write: 5 % of the dedup
stage's time in py-spy, session 13). Fix: under every guarantee the offset of the latest
changelog record acknowledged is kept in memory and persisted when its partition's
source offsets are committed (the partition numbers are the same: tables are
co-partitioned with their streams). A persisted offset can only lag the rows in the
store (they are written before their changelog record is sent), so a crash before the
commit costs a longer replay, never a lost row.

Regression test: test_persisted_offsets_under_exactly_once; under at_least_once,
test_kit.py's persisted offset written at the commit, not per record.

Installed on the app's own TableManager subclass (App setting TableManager) and table
classes (faust_guarantees/classes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "persisted-offsets"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.manager:TableManager.on_commit": "2aef0784a10f",
    "faust.tables.base:Collection._on_changelog_sent": "60122c86a120",
}


def install(guarantees: Guarantees) -> None:
    from faust.tables.base import Collection
    from faust.tables.manager import TableManager

    def on_commit(self: Any, offsets: Mapping[Any, int]) -> None:
        committed = {tp.partition for tp in offsets}
        pending = self._pending_persisted_offsets
        for changelog_tp in [tp for tp in pending if tp.partition in committed]:
            store, offset = pending.pop(changelog_tp)
            store.set_persisted_offset(changelog_tp, offset)

    def _on_changelog_sent(self: Any, fut: Any) -> None:
        res = fut.result()
        self.app.tables.persist_offset_on_commit(self.data, res.topic_partition, res.offset)

    guarantees.classes.replace(TableManager, "on_commit", on_commit)
    guarantees.classes.replace(Collection, "_on_changelog_sent", _on_changelog_sent)
