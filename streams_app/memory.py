"""Where a worker's memory is: the parts /metrics exports as ``payments_memory_bytes``.

A worker's resident memory is mostly not Python's: the tables' RocksDB stores (their
memtables, block caches and index readers) and glibc's malloc, which keeps memory freed
by C code (RocksDB, the Kafka client's buffers) for reuse instead of returning it. A
growing RSS is read by comparing these parts over time (the soak samples them from each
worker's ``/metrics``, lab/soak.py), and a store that should be closed but is still open
shows as ``open_stores`` above ``table_stores``.

Everything here is read from the running process at scrape time, cheaply: RocksDB's
properties, ``mallinfo2()`` (glibc 2.33 and later; absent elsewhere), CPython's own
account of its small-object allocator (``_PyObject_DebugMallocStats``: 0.03 ms), and
``/proc/self``. Nothing is imported that the worker does not already have.

Python's small objects (512 bytes and less) live in 1 MiB arenas of their own, outside
malloc; an arena goes back to the system only once every object in it is freed, so a
burst of objects (a rebalance, a backlog) can leave arenas that a few survivors pin.
``python_arenas`` against ``python_allocated`` tells that apart from live objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from streams_app.stores import open_databases

#: RocksDB's own account of a store's memory, by part.
ROCKSDB_PROPERTIES = {
    "rocksdb_memtables": "rocksdb.cur-size-all-mem-tables",
    "rocksdb_block_cache": "rocksdb.block-cache-usage",
    "rocksdb_table_readers": "rocksdb.estimate-table-readers-mem",
}


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _libc() -> Any:
    """The C library, on a handle of this module's own (its functions' argtypes set here
    touch no other code's). Raises OSError where there is none to load."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _mallinfo2() -> Any | None:
    """glibc's ``mallinfo2``, or None where there is none (musl, macOS, glibc < 2.33)."""
    try:
        libc = _libc()
        call = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    call.restype = _MallInfo2
    return call


_MALLINFO2 = _mallinfo2()

#: glibc's mallopt parameter for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
#: The largest threshold glibc takes (HEAP_MAX_SIZE / 2 on 64-bit builds).
MMAP_THRESHOLD_MAX = 32 * 2**20


def fix_mmap_threshold(size: int) -> bool:
    """Make glibc's malloc serve every block of ``size`` bytes or more with a mapping of its
    own, returned to the system when freed; True when set (glibc), False elsewhere.

    glibc's threshold is dynamic by default: it starts at 128 KiB and rises to the size of
    the largest mapped block freed (up to 32 MiB), after which the Kafka client's fetch
    buffers (up to CONSUMER_MAX_FETCH_SIZE each) come from the heap, where the small blocks
    allocated between them keep the freed space from going back. Fixing the threshold
    (which also turns the rise off) kept malloc's freed-but-held memory at 1-5 MB through a
    soak's restarts, against 13-32 MB (decision 0053)."""
    if not 0 < size <= MMAP_THRESHOLD_MAX:
        raise ValueError(f"an mmap threshold from 1 byte to {MMAP_THRESHOLD_MAX} bytes, not {size}")
    try:
        mallopt = _libc().mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


#: The lines of CPython's allocator report read, and the part each one gives.
_PYMALLOC_LINES = {
    "python_arenas": re.compile(r"^\d+ arenas \* \d+ bytes/arena\s*=\s*([\d,]+)", re.M),
    "python_allocated": re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)", re.M),
    "python_arenas_highwater": re.compile(r"^# arenas highwater mark\s*=\s*([\d,]+)", re.M),
}
#: CPython's arena size (1 MiB on 64-bit builds since 3.10), to turn the high-water count into bytes.
_ARENA_BYTES = re.compile(r"^\d+ arenas \* (\d+) bytes/arena", re.M)


@functools.cache
def _pymalloc_report() -> Any | None:
    """A function returning CPython's small-object allocator report as text (what
    ``sys._debugmallocstats()`` prints to stderr, here into memory), or None where there
    is none (another interpreter, no ``open_memstream``). Built at the first call, on
    handles of its own (not on ``ctypes.pythonapi``, which other code shares)."""
    try:
        libc = _libc()
        open_memstream, fclose, free = libc.open_memstream, libc.fclose, libc.free
        report = ctypes.PyDLL(None)._PyObject_DebugMallocStats
    except (OSError, AttributeError):
        return None
    open_memstream.restype = ctypes.c_void_p
    open_memstream.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
    fclose.argtypes = [ctypes.c_void_p]
    free.argtypes = [ctypes.c_void_p]
    report.argtypes = [ctypes.c_void_p]
    report.restype = ctypes.c_int

    def read() -> str:
        buffer, size = ctypes.c_void_p(), ctypes.c_size_t()
        stream = open_memstream(ctypes.byref(buffer), ctypes.byref(size))
        if not stream:
            return ""
        try:
            report(stream)  # 0 and nothing written when pymalloc is off (PYTHONMALLOC=malloc)
        finally:
            fclose(stream)  # sets buffer and size
        try:
            return ctypes.string_at(buffer, size.value).decode("ascii", "replace") if buffer else ""
        finally:
            free(buffer)

    return read


def pymalloc(text: str | None = None) -> dict[str, float]:
    """``python_arenas`` (bytes of arenas held now), ``python_allocated`` (bytes of live
    small objects in them) and ``python_arenas_highwater`` (the most arenas ever held, in
    bytes), read from ``text`` (the allocator's report; this process's when None); empty
    where the report is not available."""
    if text is None:
        read = _pymalloc_report()
        text = read() if read is not None else ""
    out: dict[str, float] = {}
    for part, pattern in _PYMALLOC_LINES.items():
        found = pattern.search(text)
        if found:
            out[part] = float(found.group(1).replace(",", ""))
    arena = _ARENA_BYTES.search(text)
    if "python_arenas_highwater" in out and arena:
        out["python_arenas_highwater"] *= int(arena.group(1))
    return out


def table_stores(tables: Iterable[Any]) -> list[Any]:
    """The RocksDB databases Faust holds open for ``tables``: one per table and partition."""
    return [db for table in tables for db in open_databases(table).values()]


def breakdown(stores: list[Any], *, store_dir: Path | None = None, shared_cache: Any = None) -> dict[str, float]:
    """This process's memory by part, in bytes, and its open stores (counts).

    ``rss``, ``rss_anon`` (the heap: what a leak grows), ``malloc_in_use`` (live blocks of
    glibc's malloc, RocksDB's included), ``malloc_free_held`` (freed, kept by malloc),
    Python's small-object arenas (:func:`pymalloc`: they are part of ``rss_anon``, not of
    malloc's account), the RocksDB parts of :data:`ROCKSDB_PROPERTIES` summed over ``stores``; counts
    ``table_stores`` (``len(stores)``) and ``open_stores`` (RocksDB ``LOCK`` files this
    process holds under ``store_dir``: a store dropped by Faust but still referenced
    stays open, with its memtables). With ``shared_cache`` (the one block cache all the
    stores use, streams_app/stores.py ``StoreMemory``) the block cache is its usage: each
    store reports the shared cache's whole usage, which a sum would count once per store."""
    out: dict[str, float] = {}
    out.update(_proc_status())
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        out["malloc_in_use"] = float(info.uordblks + info.hblkhd)
        out["malloc_free_held"] = float(info.fordblks)
    out.update(pymalloc())
    for part, name in ROCKSDB_PROPERTIES.items():
        out[part] = float(sum(_int_property(db, name) for db in stores))
    if shared_cache is not None:
        out["rocksdb_block_cache"] = float(shared_cache.get_usage())
    out["table_stores"] = float(len(stores))
    if store_dir is not None:
        out["open_stores"] = float(_open_locks(store_dir))
    return out


def _int_property(db: Any, name: str) -> int:
    try:
        return int(db.property_int_value(name) or 0)
    except Exception:  # noqa: BLE001 - a closed or non-RocksDB store: nothing to count
        return 0


def _proc_status() -> dict[str, float]:
    """VmRSS and RssAnon of /proc/self/status, in bytes; empty where there is no /proc.

    VmRSS is also ``process_resident_memory_bytes`` (prometheus_client's ProcessCollector,
    streams_app/metrics.py); it is read here again, in the same read as RssAnon, so that
    the parts of one breakdown are of one instant."""
    fields = {"VmRSS:": "rss", "RssAnon:": "rss_anon"}
    out = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                words = line.split()  # "VmRSS:", "91234", "kB"
                if len(words) == 3 and words[0] in fields:
                    out[fields[words[0]]] = float(int(words[1]) * 1024)
    except OSError:
        pass
    return out


def _open_locks(store_dir: Path) -> int:
    """RocksDB LOCK files under ``store_dir`` this process holds open (one per open store)."""
    root = str(store_dir.resolve())
    count = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith("/LOCK") and target.startswith(root):
            count += 1
    return count


def python_heap_top(limit: int = 25, *, by: str = "lineno") -> dict[str, Any]:
    """Where the live Python heap was allocated, largest first (``/debug/memory``).

    Only while tracemalloc traces (start the worker with ``PYTHONTRACEMALLOC=4``: each
    allocation is slower, so on one worker and for a while). To tell live objects from
    arenas a few survivors pin, read ``python_allocated`` against ``python_arenas`` of
    :func:`breakdown` instead: free, and it leaves the heap as it was. A snapshot here is a
    burst of its own (an object per traced block: a soak worker's heap rose by some 25 MB
    around one call, and by 6 MB at a takeover without one), and holds the event loop for
    as long as it takes: seconds on a large heap, 71 s for a soak worker traced 25 frames
    deep, so keep tracebacks short."""
    if not tracemalloc.is_tracing():
        return {"tracing": False, "how": "start the worker with PYTHONTRACEMALLOC=4 (allocations get slower) "
                                          "to see where its Python heap was allocated"}
    traced, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    ))
    top = snapshot.statistics("traceback" if by == "traceback" else "lineno")[:limit]
    return {
        "tracing": True, "traced_bytes": traced, "peak_bytes": peak,
        "top": [{"bytes": stat.size, "blocks": stat.count,
                 "where": [f"{frame.filename}:{frame.lineno}" for frame in stat.traceback]} for stat in top],
    }
