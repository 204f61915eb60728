"""The local table stores: their format, and how they are written.

Kafka holds the tables' state: every row goes to its changelog, and a worker restores
a partition from the changelog, from the offset persisted in the store itself. A store
is a cache of that, rebuilt when lost. So the app's RocksDB stores are written without
RocksDB's write-ahead log, as Kafka Streams writes its stores (:class:`Table`).
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import rocksdict
from faust.stores.rocksdb import RocksDBOptions

log = logging.getLogger(__name__)


def open_databases(table: Any) -> dict[int, Any]:
    """The RocksDB databases Faust holds open for ``table``, by partition; empty for a
    store that is not RocksDB (``memory://`` in tests).

    Faust's RocksDB store keeps them in its private ``_dbs``; this is the one place that
    reads it (the dedup sweep, the memory parts and the dedup-keys gauge go through here).
    """
    return dict(getattr(table.data, "_dbs", None) or {})


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


#: Memtables per store: one written, one flushing (Faust's: 3).
WRITE_BUFFERS = 2
#: A store's memtable flushes at a size between these (Faust's: always 64 MB).
MIN_WRITE_BUFFER_BYTES = 1 * 2**20
MAX_WRITE_BUFFER_BYTES = 64 * 2**20


@dataclass(frozen=True)
class StoreMemory:
    """What all the table stores of one worker hold in memory together (``STORE_MEMORY_MB``).

    Faust's defaults give EVERY store (one per table and partition, standbys included) 3 x
    64 MB memtables and its own 2 GiB block cache. The stores are written without the WAL,
    and a memtable keeps every version of a row (each balance update, each dedup id and its
    sweep's tombstone) until it flushes at 64 MB: a worker's RSS grew with every row it
    wrote and nothing reached the disk, and a restore put the whole changelog it read into
    memory (the soak, session 19: +30 MB per 10 minutes and per restart; 12 stores could
    hold 2.3 GB before a first flush). Here three quarters of the budget are the memtables,
    split evenly over every store the worker can open, and a quarter one block cache they
    all share. Not RocksDB's WriteBufferManager: it flushes only the store being written,
    so stores gone idle with full memtables (standbys, revoked partitions' neighbours) would
    keep the total over the budget and make every write flush a nearly empty memtable."""

    budget_bytes: int

    def write_buffer_bytes(self, stores: int) -> int:
        """Each memtable's size when the worker can open ``stores`` stores."""
        share = self.budget_bytes * 3 // 4 // (max(1, stores) * WRITE_BUFFERS)
        return max(MIN_WRITE_BUFFER_BYTES, min(MAX_WRITE_BUFFER_BYTES, share))

    def block_cache(self) -> Any:
        """The process's one block cache of this size (created on first use)."""
        return _shared_block_cache(self.budget_bytes // 4)


@functools.cache
def _shared_block_cache(size: int) -> Any:
    return rocksdict.Cache(size)


def stores_of(app: Any) -> int:
    """How many stores a worker of ``app`` can open: a partition of every table (standbys too)."""
    return sum(table.partitions or app.conf.topic_partitions for table in app.tables.values())


class UnloggedRocksDBOptions(RocksDBOptions):
    """Faust's RocksDB options, the databases opened without the write-ahead log, their
    memory bounded by :class:`StoreMemory` when given one (a table's own options win).

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

    #: Set by :class:`Table` for the app's stores; None: Faust's memory per store.
    memory: StoreMemory | None = None
    #: How many stores the worker can open (:func:`stores_of`), asked when a store opens.
    stores: Callable[[], int] = staticmethod(lambda: 1)

    def as_options(self) -> Any:
        memory = self.memory if self.use_rocksdict else None
        if memory is not None and "write_buffer_size" not in vars(self):  # not the table's own
            self.write_buffer_size = memory.write_buffer_bytes(self.stores())
            self.max_write_buffer_number = WRITE_BUFFERS
        options = super().as_options()
        if memory is not None:
            table_format = rocksdict.BlockBasedOptions()  # Faust's, with the shared cache
            table_format.set_bloom_filter(self.bloom_filter_size, block_based=True)
            table_format.set_block_cache(memory.block_cache())
            table_format.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            options.set_block_based_table_factory(table_format)
        return options

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        db = super().open(path, read_only=read_only)
        if self.use_rocksdict:
            options = rocksdict.WriteOptions()
            options.disable_wal = True
            db.set_write_options(options)
        return db


class Table(faust.Table):
    """The app's tables: Faust's, their RocksDB stores opened by :class:`UnloggedRocksDBOptions`
    within the app's ``store_memory`` (a :class:`StoreMemory`; none: Faust's per store)."""

    def _new_store_by_url(self, url: Any) -> Any:
        store = super()._new_store_by_url(url)
        options = getattr(store, "rocksdb_options", None)
        if type(options) is RocksDBOptions:
            options.__class__ = UnloggedRocksDBOptions  # its state: the two attributes below
            options.memory = getattr(self.app, "store_memory", None)
            options.stores = functools.partial(stores_of, self.app)
        return store
