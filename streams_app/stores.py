"""The local table stores' format: what a worker must fix before its tables open."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def drop_ttl_stores(tabledir: Path) -> list[Path]:
    """Delete local table stores written as RocksDB TTL databases; return them.

    Not a switchable fix: the format of this project's own state. The seen-events
    table was opened with Faust's ``ttl`` option, whose rocksdict TTL database loses
    every row written before a reopen at the next compaction (tables/seen_events.py).
    Its values carry a 4-byte timestamp suffix that a plain open would misread, so
    such a store is deleted and the table restores from its changelog.
    """
    dropped = []
    for store in sorted(tabledir.glob("*.db")) if tabledir.exists() else []:
        options = sorted(store.glob("OPTIONS-*"))
        if options and "TtlCompactionFilterFactory" in options[-1].read_text(errors="replace"):
            log.warning("deleting %s: written as a RocksDB TTL database, which loses rows at "
                        "compaction; the table restores from its changelog", store)
            shutil.rmtree(store)
            dropped.append(store)
    return dropped
