"""The local table stores: their format, and how they are written.

Kafka holds the tables' state: every row goes to its changelog, and a worker restores
a partition from the changelog, from the offset persisted in the store itself. A store
is a cache of that, rebuilt when lost. So the app's RocksDB stores are written without
RocksDB's write-ahead log, as Kafka Streams writes its stores (:class:`Table`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import faust
import rocksdict
from faust.stores.rocksdb import RocksDBOptions

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


class UnloggedRocksDBOptions(RocksDBOptions):
    """Faust's RocksDB options, the databases opened without the write-ahead log.

    Faust writes each row with RocksDB's WAL on: 2 of the 2.5 us a put took, and 10 % of
    the dedup stage's time (py-spy, ``bench one faust_alo``, 80,000 records, session 15).
    Without the WAL a process that dies loses the rows written since RocksDB last flushed
    its memtable (a clean close flushes); the rows and the persisted offset live in the
    same database and are lost together, newest first, so what is left is an older state
    with an older offset, and the restore replays the changelog from there (at worst all
    of it: a start-up after a crash takes longer). Under exactly_once an unclean stop
    wipes the stores anyway (faust_guarantees' wipe-unclean-state fix). Both or neither:
    a row written without the WAL and an offset written with it could outlive the row.
    """

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        db = super().open(path, read_only=read_only)
        if self.use_rocksdict:
            options = rocksdict.WriteOptions()
            options.disable_wal = True
            db.set_write_options(options)
        return db


class Table(faust.Table):
    """The app's tables: Faust's, their RocksDB stores opened by :class:`UnloggedRocksDBOptions`."""

    def _new_store_by_url(self, url: Any) -> Any:
        store = super()._new_store_by_url(url)
        if type(getattr(store, "rocksdb_options", None)) is RocksDBOptions:
            store.rocksdb_options.__class__ = UnloggedRocksDBOptions  # a subclass adds no state
        return store
