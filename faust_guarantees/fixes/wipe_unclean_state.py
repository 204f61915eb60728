"""The wipe-unclean-state fix.

exactly_once: RocksDB rows written by a transaction that was later aborted (the worker
was killed) stay in the local store, because recovery only replays committed changelog
records on top of it (robinhood/faust#340: a table loses events after kill -9). A dedup
table would then drop an event whose effects were rolled back. Fix, as Kafka Streams
does under EOS: a worker that did not stop cleanly deletes its local table state and
restores it from the committed changelog.

Regression tests: tests/unit/test_kit.py (the marker, the wipe, this app only); the
lab's exactly_once crash cells.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "wipe-unclean-state"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM: dict[str, str] = {}


#: Written next to the table directory while a worker runs; removed on a clean stop.
CLEAN_STOP_MARKER = "RUNNING"


def install(guarantees: Guarantees) -> None:
    """Wrap this app's start and stop (the instance's, not Faust's class): before tables
    open, wipe state left by a crash and mark "running"; after a clean stop, unmark."""
    app = guarantees.app
    first_start, shutdown = app.on_first_start, app.on_shutdown

    async def on_first_start() -> None:
        on_worker_start(Path(app.conf.tabledir))
        await first_start()

    async def on_shutdown() -> None:
        await shutdown()
        # A fenced or crashed worker's state, or one stopped with records in progress, may hold
        # rows of transactions the broker aborts.
        if not guarantees.fenced and not app._crashed.is_set() and guarantees.unclean_stop is None:
            on_worker_stopped(Path(app.conf.tabledir))

    app.on_first_start = on_first_start
    app.on_shutdown = on_shutdown


def on_worker_start(tabledir: Path) -> None:
    """Before tables open: wipe state left by a worker that did not stop cleanly, then
    mark "running"."""
    marker = tabledir.parent / CLEAN_STOP_MARKER
    if marker.exists() and tabledir.exists():
        log.warning(
            "the previous worker did not stop cleanly: deleting local table state in %s "
            "(it may hold rows of aborted transactions); tables restore from the changelog",
            tabledir,
        )
        shutil.rmtree(tabledir)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("a worker is running; this file is removed on a clean stop\n")


def on_worker_stopped(tabledir: Path) -> None:
    (tabledir.parent / CLEAN_STOP_MARKER).unlink(missing_ok=True)
