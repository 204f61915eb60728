"""The persisted-offsets fix.

exactly_once: Table._on_changelog_sent registers the offset to persist under the
CHANGELOG partition, TableManager.on_commit looks it up under the SOURCE partitions, so
RocksDB's persisted offset is never written and every restart replays the whole
changelog. Fix: on commit, persist the pending changelog offsets of the committed
partition numbers (tables are co-partitioned).

Regression test: test_persisted_offsets_under_exactly_once.

Installed per app: a subclass of the app's TableManager (App setting TableManager),
unless the app declared tables before the kit was installed (then on Faust's class, with
a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .._patch import override
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
    def on_commit(self: Any, offsets: Mapping[Any, int]) -> None:
        committed = {tp.partition for tp in offsets}
        pending = self._pending_persisted_offsets
        for changelog_tp in [tp for tp in pending if tp.partition in committed]:
            store, offset = pending.pop(changelog_tp)
            store.set_persisted_offset(changelog_tp, offset)

    if not override(guarantees.app, "TableManager", "tables", "on_commit", on_commit):
        log.warning("persisted-offsets: the app's tables were declared before the kit was installed: "
                    "fixed on Faust's TableManager class instead (every app of this process)")
