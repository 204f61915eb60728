"""A table restore whose last changelog records are still on their way (verified-restore-end).

Under exactly_once a worker killed mid-run wipes its tables at the next start and restores
them from the changelogs. The lab's slow-restore fault holds the first changelog records
the restore fetches for 4 s between the consumer thread (whose position has moved past
them) and the recovery, as a loaded machine does now and then. Faust's end-of-restore check
(position at the high watermark, queue idle) then declares the restore done without them;
the dedup rows they carried are gone, and every id sent again is forwarded again. With the
fix the restore waits for them.
"""

from __future__ import annotations

import asyncio

import pytest

from faust_guarantees import FIXES
from lab.checker import check
from streams_app.traffic import generate

pytestmark = pytest.mark.integration

HOLD_S = "4"


def _run(pipeline_factory, fixes: str):
    pipeline = pipeline_factory("exactly_once", FAUST_FIXES=fixes, FAULT_SLOW_RESTORE_S=HOLD_S)
    worker = pipeline.worker()
    traffic = generate(300, duplicate_rate=0.2, bad_rate=0.0, seed=5, id_prefix=pipeline.config.run_id)
    pipeline.send(traffic)
    pipeline.drain()
    worker.kill()  # unclean: the next start wipes the tables and restores every row
    worker.start()
    worker.wait_ready()
    pipeline.send(traffic)  # every id again: the restored dedup rows must drop them all
    pipeline.drain()
    log = worker.log_path.read_text(errors="replace")
    assert "FAULT: holding" in log.split("==== start #2")[-1], "the fault did not fire on the restore"
    return asyncio.run(check(pipeline.config, traffic))


def test_a_restore_waits_for_changelog_records_still_on_their_way(pipeline_factory):
    counts = _run(pipeline_factory, "all")
    assert counts.unique_events == counts.charged_unique > 0
    assert counts.output_duplicates == 0, "ids forwarded again: their dedup rows were not restored"
    assert counts.balance_mismatches == 0, counts.mismatch_examples
    assert counts.duplicate_charges == 0 and counts.lost == 0


def test_without_the_fix_the_restore_ends_without_them(pipeline_factory):
    """Stock Faust's check (with every other fix of the kit): the held records are dropped."""
    counts = _run(pipeline_factory, ",".join(name for name in FIXES if name != "verified-restore-end"))
    assert counts.output_duplicates > 0 or counts.balance_mismatches > 0, (
        "expected the restore to end without the held records")
