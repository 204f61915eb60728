"""The persisted-offsets fix.

exactly_once: Table._on_changelog_sent registers the offset to persist under the
CHANGELOG partition, TableManager.on_commit looks it up under the SOURCE partitions, so
RocksDB's persisted offset is never written and every restart replays the whole
changelog. Fix: on commit, persist the pending changelog offsets of the committed
partition numbers (tables are co-partitioned).

Regression test: test_persisted_offsets_under_exactly_once.

Installed on the app's own TableManager subclass (App setting TableManager;
faust_guarantees/classes.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "persisted-offsets"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.manager:TableManager.on_commit": "2aef0784a10f",
}


def install(guarantees: Guarantees) -> None:
    from faust.tables.manager import TableManager

    def on_commit(self: Any, offsets: Mapping[Any, int]) -> None:
        committed = {tp.partition for tp in offsets}
        pending = self._pending_persisted_offsets
        for changelog_tp in [tp for tp in pending if tp.partition in committed]:
            store, offset = pending.pop(changelog_tp)
            store.set_persisted_offset(changelog_tp, offset)

    guarantees.classes.replace(TableManager, "on_commit", on_commit)
