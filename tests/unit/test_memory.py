"""The worker's memory by part (/metrics ``payments_memory_bytes``): RocksDB's memtables as
they fill, and a store dropped by its table but still open (held elsewhere) counted."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
from faust.stores.rocksdb import RocksDBOptions

from streams_app import memory, metrics


def test_the_breakdown_reads_the_process_and_the_stores_memtables(tmp_path):
    db = RocksDBOptions().open(tmp_path / "balances-0.db")
    empty = memory.breakdown([db], store_dir=tmp_path)
    for i in range(20_000):
        db[f"acct-{i % 500}".encode()] = b"x" * 200
    written = memory.breakdown([db], store_dir=tmp_path)
    assert written["rocksdb_memtables"] - empty["rocksdb_memtables"] > 20_000 * 200 * 0.9
    assert written["rss"] > written["rss_anon"] > 0
    assert written["malloc_in_use"] > written["rocksdb_memtables"]


def test_a_store_its_table_dropped_but_something_still_holds_is_counted_open(tmp_path):
    held = [RocksDBOptions().open(tmp_path / f"seen-events-{p}.db") for p in range(3)]
    leaked = held.pop()  # revoked: Faust pops it from the table's stores
    parts = memory.breakdown(held, store_dir=tmp_path)
    assert (parts["table_stores"], parts["open_stores"]) == (2, 3)
    del leaked
    gc.collect()
    assert memory.breakdown(held, store_dir=tmp_path)["open_stores"] == 2


def test_the_parts_are_exported():
    metrics.set_memory({"rss": 1e8, "rocksdb_memtables": 5e6, "table_stores": 4, "open_stores": 5})
    text = metrics.generate_latest(metrics.REGISTRY).decode()
    assert 'payments_memory_bytes{part="rocksdb_memtables"} 5e+06' in text
    assert 'payments_table_stores{held="process"} 5.0' in text
    assert "process_resident_memory_bytes " in text  # the standard process metrics beside them


def test_a_tables_databases_are_read_through_one_accessor(tmp_path):
    class Data:
        _dbs = {0: "db-0", 3: "db-3"}

    class Table:
        data = Data()

    class MemoryTable:
        data = object()  # memory:// stores hold no databases

    assert memory.table_stores([Table(), MemoryTable()]) == ["db-0", "db-3"]


def test_a_block_cache_all_stores_share_is_counted_once(tmp_path):
    from streams_app.stores import StoreMemory, UnloggedRocksDBOptions

    options = UnloggedRocksDBOptions()
    options.memory = StoreMemory(64 * 2**20)
    dbs = [options.open(tmp_path / f"balances-{p}.db") for p in range(4)]
    for db in dbs:
        for i in range(5_000):
            db[f"acct-{i}".encode()] = b"x" * 100
        db.flush()
        for i in range(5_000):
            assert db[f"acct-{i}".encode()]  # read back: blocks into the shared cache
    cache = options.memory.block_cache()
    parts = memory.breakdown(dbs, shared_cache=cache)
    assert 0 < parts["rocksdb_block_cache"] == cache.get_usage() <= 16 * 2**20
    assert memory.breakdown(dbs)["rocksdb_block_cache"] == 4 * cache.get_usage()  # the sum: 4 times


def test_the_python_heap_is_shown_by_where_it_was_allocated_while_traced():
    import tracemalloc

    assert memory.python_heap_top()["tracing"] is False  # says how to turn it on
    tracemalloc.start(5)
    try:
        held = [bytearray(1000) for _ in range(2000)]  # ~2 MB from one line
        top = memory.python_heap_top(5)
        assert top["tracing"] and top["traced_bytes"] >= 2_000_000
        assert top["top"][0]["bytes"] >= 2_000_000 and "test_memory.py" in top["top"][0]["where"][-1]
        del held
    finally:
        tracemalloc.stop()


def test_python_arenas_count_a_burst_of_small_objects_and_keep_the_arenas_its_survivors_pin():
    before = memory.pymalloc()
    burst = [(i, str(i)) for i in range(300_000)]  # small objects: tuples, ints, short strs
    during = memory.pymalloc()
    assert during["python_allocated"] - before["python_allocated"] > 300_000 * 48
    assert during["python_arenas"] >= during["python_allocated"]
    survivors = burst[::64]  # one object in 64 kept: about one per pool
    del burst
    gc.collect()
    after = memory.pymalloc()
    grown = during["python_allocated"] - before["python_allocated"]
    assert after["python_allocated"] - before["python_allocated"] < grown / 4  # the objects are gone ...
    assert after["python_arenas"] - before["python_arenas"] > grown / 2  # ... not their arenas
    assert after["python_arenas_highwater"] >= during["python_arenas"]
    assert survivors


def test_the_allocator_report_is_parsed_as_cpython_prints_it():
    text = ("# arenas allocated total           =                  105\n"
            "# arenas highwater mark            =                  105\n"
            "# arenas allocated current         =                   78\n"
            "78 arenas * 1048576 bytes/arena    =           81,788,928\n\n"
            "# bytes in allocated blocks        =           39,471,904\n")
    assert memory.pymalloc(text) == {
        "python_arenas": 81_788_928, "python_allocated": 39_471_904, "python_arenas_highwater": 105 * 1_048_576}
    assert memory.pymalloc("") == {}


#: In a fresh interpreter: free a mapped 8 MiB block (under glibc's own threshold this raises
#: the threshold to 8 MiB), allocate 64 x 1 MiB and malloc blocks after them, free the 64.
_FREE_AFTER_A_LARGE_BLOCK = """
import json, sys
from streams_app import memory
if sys.argv[1] == "fixed":
    assert memory.fix_mmap_threshold(128 * 1024)
large = bytearray(8 * 2**20)
del large
before = memory.breakdown([])
blocks = [bytearray(1024 * 1024) for _ in range(64)]
between = [bytearray(1000) for _ in range(100)]
held = memory.breakdown([])
del blocks
freed = memory.breakdown([])
print(json.dumps({"kept": freed["malloc_free_held"] - before["malloc_free_held"],
                  "released": held["malloc_in_use"] - freed["malloc_in_use"]}))
"""


def _free_after_a_large_block(mode: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", _FREE_AFTER_A_LARGE_BLOCK, mode], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(done.stdout)


def test_a_fixed_mmap_threshold_gives_large_blocks_back_when_freed():
    fixed = _free_after_a_large_block("fixed")
    assert fixed["released"] >= 64 * 2**20
    assert fixed["kept"] < 2**20  # each block a mapping of its own, unmapped when freed
    # glibc's own threshold (the reason for the fix): the blocks came from the heap and
    # malloc keeps their space when they are freed.
    assert _free_after_a_large_block("glibc")["kept"] >= 32 * 2**20


def test_the_mmap_threshold_is_bounded_as_glibc_bounds_it():
    with pytest.raises(ValueError, match="mmap threshold"):
        memory.fix_mmap_threshold(64 * 2**20)
