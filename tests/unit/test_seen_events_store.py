"""The dedup table's local RocksDB store: what survives a restart, and how old ids go.

Real rocksdict databases in a temporary directory, opened the way Faust opens a
table's partition store (faust.stores.rocksdb.RocksDBOptions).
"""

from __future__ import annotations

import json
from pathlib import Path

import rocksdict
from faust.stores.rocksdb import RocksDBOptions

from streams_app.stores import drop_ttl_stores
from tables.seen_events import STORE_OPTIONS, expired, expired_keys

NOW = 1_800_000_000.0


def _restart_and_compact(path: Path, options: dict | None) -> int:
    """Write rows in two process lifetimes (open, write, close, twice), let a
    compaction merge them, and count the rows left."""
    for round_ in range(2):
        db = RocksDBOptions(**(options or {})).open(path)
        for i in range(5):
            db.put(f'"r{round_}-{i}"'.encode(), json.dumps(NOW).encode())
        db.flush()
        db.close()
    db = RocksDBOptions(**(options or {})).open(path)
    db.compact_range(None, None)
    rows = sum(1 for _ in db.keys())
    db.close()
    return rows


def test_rocksdb_ttl_databases_lose_the_rows_written_before_a_reopen(tmp_path):
    """Why the table does not use Faust's ``ttl`` option (rocksdict 0.3.29): the rows
    are seconds old and the TTL a week, yet the compaction after a reopen keeps
    none of them. If this starts failing, rocksdict fixed it."""
    assert _restart_and_compact(tmp_path / "ttl.db", {"ttl": 7 * 86400}) == 0


def test_the_dedup_store_keeps_every_row_across_restarts_and_compactions(tmp_path):
    assert _restart_and_compact(tmp_path / "seen-events-0.db", STORE_OPTIONS) == 10


def test_expired_ids_are_found_in_bounded_batches_that_resume(tmp_path):
    db = RocksDBOptions().open(tmp_path / "seen-events-0.db")
    for i in range(10):
        first_seen = NOW - 100 if i % 2 else NOW  # odd ids are old
        db.put(f'"id-{i}"'.encode(), json.dumps(first_seen).encode())
    db.put(b"__faust\0offset__", b"41")  # Faust's persisted offset is never an id

    found, after = expired_keys(db, now=NOW, budget=4, horizon=50)
    assert found == [b'"id-1"', b'"id-3"'] and after == b'"id-3"'
    more, after = expired_keys(db, now=NOW, budget=100, after=after, horizon=50)
    assert more == [b'"id-5"', b'"id-7"', b'"id-9"'] and after is None
    db.close()


def test_reads_and_the_sweep_forget_an_id_at_the_same_moment(tmp_path):
    """One rule: an id exactly DEDUP_HORIZON old is still a duplicate, and the sweep keeps it."""
    assert not expired(NOW - 50, NOW, horizon=50) and expired(NOW - 50.5, NOW, horizon=50)
    db = RocksDBOptions().open(tmp_path / "seen-events-0.db")
    db.put(b'"at-horizon"', json.dumps(NOW - 50).encode())
    db.put(b'"past-horizon"', json.dumps(NOW - 50.5).encode())
    assert expired_keys(db, now=NOW, budget=10, horizon=50) == ([b'"past-horizon"'], None)
    db.close()


def test_stores_written_as_ttl_databases_are_dropped_at_start(tmp_path):
    RocksDBOptions(ttl=3600).open(tmp_path / "seen-events-0.db").close()
    RocksDBOptions().open(tmp_path / "balances-0.db").close()
    assert drop_ttl_stores(tmp_path) == [tmp_path / "seen-events-0.db"]
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["balances-0.db"]
    assert drop_ttl_stores(tmp_path / "absent") == []


def test_the_sweep_deletes_the_expired_ids_in_one_write(tmp_path):
    """delete_keys removes exactly the keys the scan found, in one RocksDB write batch."""
    from tables.seen_events import delete_keys

    db = rocksdict.Rdict(str(tmp_path / "seen-events-0.db"), options=rocksdict.Options(raw_mode=True))
    for name in ("a", "b", "c"):
        db[json.dumps(name).encode()] = b"1.0"
    delete_keys(db, [b'"a"', b'"c"'])
    delete_keys(db, [])
    assert list(db.keys()) == [b'"b"']
    db.close()


_WRITE_AND_DIE = """
import os, sys
from faust.stores.rocksdb import RocksDBOptions
from streams_app.stores import UnloggedRocksDBOptions
options = UnloggedRocksDBOptions() if sys.argv[2] == "unlogged" else RocksDBOptions()
db = options.open(sys.argv[1])
db.put(b"closed", b"1")
del db  # a store Faust drops (Store.stop) is closed: RocksDB flushes it
db = options.open(sys.argv[1])
db.put(b"killed", b"1")
os._exit(9)  # as SIGKILL: no close
"""


def _after_a_crash(path: Path, kind: str) -> dict[bytes, bytes]:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, str(path), kind], check=False)
    db = RocksDBOptions().open(path)
    rows = dict(db.items())
    db.close()
    return rows


def test_the_app_s_stores_skip_the_write_ahead_log_so_a_crash_loses_the_unflushed_rows(tmp_path):
    """The app's tables open their stores without RocksDB's WAL (streams_app/stores.py): a
    closed store keeps its rows, a crashed one loses those written since the last flush,
    offsets and rows alike (the changelog restores them). Faust's own stores keep both."""
    assert _after_a_crash(tmp_path / "stock", "stock") == {b"closed": b"1", b"killed": b"1"}
    assert _after_a_crash(tmp_path / "unlogged", "unlogged") == {b"closed": b"1"}


def test_the_app_builds_its_tables_from_the_unlogged_table_class():
    from streams_app import app, pipeline
    from streams_app.stores import Table, UnloggedRocksDBOptions

    assert issubclass(app.conf.Table, Table)
    store = pipeline.tables.seen_events.table._new_store_by_url("rocksdb://")  # the tests' own tables are in memory
    assert isinstance(store.rocksdb_options, UnloggedRocksDBOptions)


def test_the_fast_codec_writes_the_bytes_faust_s_store_writes():
    """tables.seen_events.encode stands in for the store's own encoding of the table's
    keys (str) and values (float): the changelog and other readers must see the same bytes."""
    from hypothesis import given
    from hypothesis import settings as hsettings
    from hypothesis import strategies as st

    from streams_app import pipeline
    from tables.seen_events import encode

    store = pipeline.tables.seen_events.table._new_store_by_url("rocksdb://")

    @hsettings(max_examples=300, deadline=None)
    @given(st.text(), st.floats(allow_nan=False, allow_infinity=False))
    def same(event_id: str, first_seen: float) -> None:
        assert encode(event_id) == store._encode_key(event_id)
        assert encode(first_seen) == store._encode_value(first_seen)
        assert store._decode_value(encode(first_seen)) == first_seen

    same()
