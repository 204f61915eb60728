"""The dedup table's state: restore time, restart after a graceful stop, size vs horizon.

Three questions about ``seen-events`` (tables/seen_events.py), each answered
from the broker and the worker's own log, never from the worker's counters:

1. **How long does a cold restore take?** The changelog
   ``{app_id}-seen-events-changelog`` is filled with N keys, written as Faust
   writes them (JSON string key, JSON float value, partition = murmur2 of the
   key), and a worker with an empty state directory is started. Restore time is
   the time between Faust's "Restoring state from changelog topics..." and
   "Done reading from changelog topics" log lines; the time until the worker
   answers HTTP is reported too. The restored RocksDB is opened afterwards and
   its keys counted.
2. **Does a restart after a graceful stop replay the whole changelog?** A
   worker processes traffic, is stopped with SIGTERM and started again on the
   same state directory. Its log tables "Highwater - Active" and "Reading
   Starts At - Active" say, per changelog partition, where the changelog ends
   and where reading starts (the offset persisted in RocksDB, -1 for none): the
   difference is what it replays. Under exactly_once this relies on the
   project's ``persisted-offsets`` fix (faust_guarantees).
3. **How big is the state for a given DEDUP_HORIZON?** Every id forwarded
   within the horizon is kept, so in steady state the table holds
   unique-rate x horizon keys. The bytes per key of the local RocksDB and of
   the changelog on the broker's disk are measured on the restored table; the
   size at each horizon follows from them.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from infra import kafka
from streams_app.admin import send_records
from streams_app.traffic import generate

from .affinity import Pinning
from .config import Guarantee
from .kafka_io import Watermarks, create_topics
from .systems import FaustDeployment

SEEN_EVENTS = "seen-events"
READY_TIMEOUT_S = 900.0
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|")


def changelog_of(deployment: FaustDeployment, table: str = SEEN_EVENTS) -> str:
    return f"{deployment.group}-{table}-changelog"


# -- reading the worker's log ---------------------------------------------------------


def last_start(log_path: Path) -> list[str]:
    """The log lines of the worker's most recent start (lab.workers marks each start)."""
    lines = log_path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("==== start #")]
    return lines[starts[-1]:] if starts else lines


def offsets_table(lines: list[str], title: str, topic: str) -> dict[int, int]:
    """partition -> offset of Faust's "+{title}---" log table, rows of ``topic`` only."""
    rows: dict[int, int] = {}
    inside, current = False, ""
    for line in lines:
        if line.startswith(f"+{title}"):
            inside, rows = True, {}
        elif inside and not line.startswith(("|", "+")):
            inside = False  # the table is the block of lines drawn with | and +
        elif inside and (match := _ROW.match(line)):
            current = current if match[1] == "〃" else match[1]
            if current == topic:
                rows[int(match[2])] = int(match[3])
    return rows


def logged_at(lines: list[str], message: str) -> float | None:
    """Epoch seconds of the first line containing ``message``."""
    for line in lines:
        if message in line:
            stamp = _LOG_TIME.match(line)
            if stamp:
                return datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def restore_seconds(lines: list[str]) -> float | None:
    """From Faust's query of the changelogs' high watermarks to "Recovery complete":
    everything a restore does, the bulk restore (faust_guarantees
    ``bulk-restore``, before Faust's own reading) included."""
    begun = logged_at(lines, "Highwater for active changelog partitions")
    ended = logged_at(lines, "Recovery complete")
    return None if begun is None or ended is None else ended - begun


# -- sizes --------------------------------------------------------------------------------


def count_keys(table_dir: Path, table: str = SEEN_EVENTS) -> tuple[int, int]:
    """(keys, bytes) of the table's RocksDB partitions, Faust's own offset keys excluded."""
    keys, size = 0, 0
    for db in sorted(table_dir.glob(f"v*/tables/{table}-*.db")):
        size += sum(f.stat().st_size for f in db.rglob("*") if f.is_file())
        store = Rdict(str(db), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            # Rdict is not iterable over its keys, hence .keys(); raw mode gives bytes.
            owned = (k for k in store.keys() if isinstance(k, bytes) and not k.startswith(b"__faust"))  # noqa: SIM118
            keys += sum(1 for _ in owned)
        finally:
            store.close()
    return keys, size


def broker_bytes(topic: str) -> int | None:
    """Bytes of ``topic``'s log segments on the local broker's disk (indexes, which
    Kafka preallocates, left out)."""
    info = kafka.status()
    if info is None:
        return None
    return sum(f.stat().st_size for f in (info.data_dir / "data").glob(f"{topic}-*/*.log"))


# -- 1. cold restore ----------------------------------------------------------------------


@dataclass(frozen=True)
class Restore:
    keys_written: int
    keys_restored: int
    restore_s: float | None
    ready_s: float
    rocksdb_bytes_per_key: float
    changelog_bytes_per_key: float | None


def seconds_to_ready(deployment: FaustDeployment, pinning: Pinning) -> float:
    """Start the worker, return how long it took to be ready, stop it (SIGTERM)."""
    started = time.monotonic()
    deployment.start(pinning)
    try:
        deployment.worker.wait_ready(timeout=READY_TIMEOUT_S)
        return time.monotonic() - started
    finally:
        deployment.stop()


def measure_restore(deployment: FaustDeployment, keys: int, pinning: Pinning) -> Restore:
    """Fill the dedup changelog with ``keys`` ids, start a worker on empty state, time it."""
    asyncio.run(deployment.prepare())
    changelog = changelog_of(deployment)
    asyncio.run(create_topics(deployment.bootstrap, [changelog], deployment.partitions,
                              {"cleanup.policy": "compact,delete"}))
    now = time.time()
    rows = ((json.dumps(f"{deployment.run_id}-{i}").encode(), json.dumps(now).encode()) for i in range(keys))
    asyncio.run(send_records(deployment.bootstrap, changelog, rows))
    changelog_size = broker_bytes(changelog)
    ready_s = seconds_to_ready(deployment, pinning)
    restored, size = count_keys(deployment.table_dir)
    return Restore(
        keys_written=keys, keys_restored=restored,
        restore_s=restore_seconds(last_start(deployment.log_path)), ready_s=ready_s,
        rocksdb_bytes_per_key=size / max(restored, 1),
        changelog_bytes_per_key=None if changelog_size is None else changelog_size / keys,
    )


# -- 2. restart after a graceful stop ------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    guarantee: Guarantee
    changelog_records: int
    replayed: int
    ready_s: float
    restore_s: float | None
    first_stop_s: float
    #: Set when the "graceful" stop was not: SIGTERM ignored, the worker killed.
    first_stop_problem: str | None

    @property
    def replayed_whole_changelog(self) -> bool:
        return self.changelog_records > 0 and self.replayed >= self.changelog_records


async def _wait_output(bootstrap: str, topic: str, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with Watermarks(bootstrap) as marks:
        while await marks.total(topic) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: fewer than {expected} records after {timeout} s")
            await asyncio.sleep(0.5)


def measure_restart(deployment: FaustDeployment, events: int, pinning: Pinning, timeout: float) -> Restart:
    """Process ``events`` records, stop with SIGTERM, start again: what is replayed?"""
    asyncio.run(deployment.prepare())
    traffic = generate(events, duplicate_rate=0.2, seed=3, id_prefix=deployment.run_id)
    asyncio.run(send_records(deployment.bootstrap, deployment.input_topic, traffic.records))
    deployment.start(pinning)
    try:
        asyncio.run(_wait_output(deployment.bootstrap, deployment.output_topic,
                                 len(traffic.unique_events), timeout))
    finally:
        first_stop_s = deployment.stop()
    first_stop_problem = deployment.stop_problem
    ready_s = seconds_to_ready(deployment, pinning)
    lines = last_start(deployment.log_path)
    changelog = changelog_of(deployment)
    highwater = offsets_table(lines, "Highwater - Active", changelog)
    starts = offsets_table(lines, "Reading Starts At - Active", changelog)
    return Restart(
        guarantee=deployment.spec.guarantee,
        changelog_records=sum(h + 1 for h in highwater.values()),
        replayed=sum(max(0, h - starts.get(p, -1)) for p, h in highwater.items()),
        ready_s=ready_s, restore_s=restore_seconds(lines), first_stop_s=first_stop_s,
        first_stop_problem=first_stop_problem,
    )


# -- 3. size as a function of the horizon ------------------------------------------------


def size_by_horizon(restore: Restore, unique_rate: float, horizons_s: tuple[float, ...]) -> list[dict[str, float | None]]:
    """Steady-state keys and bytes of the dedup state at ``unique_rate`` ids/s per horizon."""
    rows = []
    for horizon in horizons_s:
        keys = unique_rate * horizon
        rows.append({
            "horizon_s": horizon,
            "unique_per_s": unique_rate,
            "keys": keys,
            "rocksdb_gb": keys * restore.rocksdb_bytes_per_key / 1e9,
            "changelog_gb": (None if restore.changelog_bytes_per_key is None
                             else keys * restore.changelog_bytes_per_key / 1e9),
        })
    return rows
