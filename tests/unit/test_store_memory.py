"""The tables' RocksDB stores hold a bounded memory together (STORE_MEMORY_MB): each store's
memtable flushes to disk when its share is full, and they share one block cache; Faust's
defaults (3 x 64 MB memtables and a 2 GiB cache per store) kept every version in memory."""

from __future__ import annotations

import time
from pathlib import Path

import faust
import pytest
from faust.stores.rocksdb import RocksDBOptions

from streams_app.settings import Settings
from streams_app.stores import (
    MAX_WRITE_BUFFER_BYTES,
    MIN_WRITE_BUFFER_BYTES,
    WRITE_BUFFERS,
    StoreMemory,
    Table,
    UnloggedRocksDBOptions,
    stores_of,
)

MB = 2**20


def _bounded(budget_mb: int = 16, stores: int = 4) -> UnloggedRocksDBOptions:
    options = UnloggedRocksDBOptions()
    options.memory = StoreMemory(budget_mb * MB)
    options.stores = lambda: stores
    return options


def _overwrite(options: RocksDBOptions, path: Path, versions: int, wait_s: float = 10.0) -> tuple[int, int]:
    """Write ``versions`` versions of 500 balance-like rows as the app writes (no WAL); return
    the bytes on disk (once a flush shows, or after a wait) and the memtables' size."""
    db = options.open(path)
    try:
        if not isinstance(options, UnloggedRocksDBOptions):
            import rocksdict

            write = rocksdict.WriteOptions()
            write.disable_wal = True
            db.set_write_options(write)
        for i in range(versions):
            db[f"acct-{i % 500}".encode()] = b'{"EUR": %d, "USD": %d} ' % (i, i) * 3
        deadline = time.monotonic() + wait_s  # a flush runs in RocksDB's background thread
        while time.monotonic() < deadline and not any(path.glob("*.sst")):
            time.sleep(0.05)
        return (sum(f.stat().st_size for f in path.glob("*.sst")),
                db.property_int_value("rocksdb.cur-size-all-mem-tables"))
    finally:
        db.close()


def test_the_app_s_stores_flush_within_their_share_and_faust_s_defaults_keep_it_all(tmp_path):
    options = _bounded(budget_mb=16, stores=4)  # 12 MB of memtables over 4 stores x 2
    share = StoreMemory(16 * MB).write_buffer_bytes(4)
    assert share == int(1.5 * MB)
    on_disk, in_memory = _overwrite(options, tmp_path / "app.db", versions=8 * share // 100)
    assert on_disk > 0
    assert in_memory <= WRITE_BUFFERS * share * 1.2
    # Faust's defaults: 8 MB of versions stay in memory, nothing is flushed (the soak's
    # growing RSS, session 19).
    # (a 64 MB memtable cannot fill: a second is enough to see that none was flushed)
    on_disk, in_memory = _overwrite(RocksDBOptions(), tmp_path / "faust.db", versions=8 * share // 100,
                                    wait_s=1.0)
    assert on_disk == 0
    assert in_memory > 6 * share


def test_every_store_of_the_process_shares_one_block_cache_of_a_quarter_of_the_budget(tmp_path):
    dbs = [_bounded(budget_mb=64).open(tmp_path / f"seen-events-{p}.db") for p in range(3)]
    try:
        capacities = {db.property_int_value("rocksdb.block-cache-capacity") for db in dbs}
        assert capacities == {16 * MB}
        assert StoreMemory(64 * MB).block_cache() is StoreMemory(64 * MB).block_cache()
    finally:
        for db in dbs:
            db.close()


@pytest.mark.parametrize(("budget_mb", "stores", "expected"), [
    (128, 12, 4 * MB),  # the default budget, 3 tables x 4 partitions
    (16, 1000, MIN_WRITE_BUFFER_BYTES),  # never below 1 MB: a flush per few rows would stall
    (100_000, 1, MAX_WRITE_BUFFER_BYTES),  # never above Faust's own size
])
def test_a_store_s_share_of_the_budget(budget_mb, stores, expected):
    assert StoreMemory(budget_mb * MB).write_buffer_bytes(stores) == expected


def test_a_table_s_own_write_buffer_still_wins():
    options = UnloggedRocksDBOptions(write_buffer_size=64 * MB)
    options.memory = StoreMemory(16 * MB)
    options.as_options()
    assert options.write_buffer_size == 64 * MB


def test_the_app_s_tables_get_the_budget_split_over_all_their_partitions(tmp_path):
    class App(faust.App):
        store_memory = StoreMemory(Settings.from_env({"STORE_MEMORY_MB": "96"}).store_memory_mb * MB)

    app = App("store-memory-test", store="rocksdb://", datadir=str(tmp_path), topic_partitions=4,
              Table=Table)
    table = app.Table("balances", default=int, partitions=8)
    app.Table("counters", default=int)
    options = table.data.rocksdb_options
    assert type(options) is UnloggedRocksDBOptions and options.memory == app.store_memory
    assert stores_of(app) == options.stores() == 12
    options.as_options()
    assert options.write_buffer_size == 3 * MB  # 72 MB of memtables over 12 stores x 2


def test_a_budget_too_small_is_refused_with_what_to_change():
    with pytest.raises(Exception, match="STORE_MEMORY_MB.*at least 16"):
        Settings.from_env({"STORE_MEMORY_MB": "8"})
