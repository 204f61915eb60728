"""The verified-restore-end fix.

exactly_once: a changelog written in transactions ends with a commit marker, so table
recovery never reads a record at its high watermark. Faust decides that the rest of a
partition is markers only when its changelog queue stayed empty through two waits and the
reader's position (Consumer.position, the next offset the client will hand over) has
reached the high watermark (tables/recovery.py _slurp_changelogs, detect_aborted_tx); it
then sets the partition's restored offset to the high watermark. But the position moves
when the consumer thread hands records over, before the delivery loop has put them into
the changelog queue, and the count of empty waits is not reset when a restore begins
(waits from before it count). A record on its way when the check runs arrives below the
offset just set and is dropped: the table starts without it. Seen in the full lab matrix
(exactly_once / transactional / random-kills, 5,000 events, 20 kills, with benchmarks
loading the machine): one restart's restore ended 1.5 s after it began (the others took
3.6 s); at the end balances were a third of what they should be and 60 events had been
applied and charged twice (their dedup rows lost with the records). The
recovery-idle-wait fix's 1 s waits (Faust: 5 s) make the window wider. No upstream
report found (cf. faust-streaming#47, which added the check).

Fix: before recovery declares a partition done, the broker is asked: a read_committed
reader outside the group looks for a committed record between the last one applied and the
high watermark (faust_guarantees/probe.py, one client for every partition in the check).
If there is one, or the range cannot be read, the position recovery sees is reported short
of the high watermark, and the check waits for the record; if there is none, the partition
is done as Faust decides.

Regression tests: tests/integration/test_restore_race.py (the lab's slow-restore fault holds
the first changelog records of a restore for 4 s: with the fix every id sent again is
dropped; without it the restore ends without them and ids are forwarded again);
test_faust_fixes_unit.py::test_recovery_waits_for_a_changelog_record_still_on_its_way.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from ..probe import bootstrap, first_committed_records
from ..state import Guarantees, of

log = logging.getLogger(__name__)

NAME = "verified-restore-end"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:ThreadDelegateConsumer.position": "a7f22b78f21d",
    "faust.tables.recovery": "e6cada29f7af",
}

#: How long one round of verdicts stays good: detect_aborted_tx asks for every partition
#: in one go; the next round (after the next empty wait) asks the broker again.
VERDICTS_FOR_S = 0.5


class _Verdicts:
    """The broker's answers of one check round: tp -> (start, end, first committed offset
    or None; ``unreadable`` when the range could not be read)."""

    unreadable = -1

    def __init__(self) -> None:
        self.at = 0.0
        self.by_tp: dict[Any, tuple[int, int, int | None]] = {}


def ranges_to_verify(recovery: Any) -> dict[Any, tuple[int, int]]:
    """The partitions detect_aborted_tx may declare done, each with the offsets between
    its last applied record and its high watermark (both included)."""
    ranges = {}
    for tp, highwater in recovery.active_highwaters.items():
        applied = recovery.active_offsets.get(tp)
        if highwater is None or highwater < 0 or applied is None or applied >= highwater:
            continue
        ranges[tp] = (max(applied + 1, 0), highwater + 1)
    return ranges


#: How long the broker is asked before a range counts as unreadable (the check asks again).
PROBE_TIMEOUT_S = 5.0
_PROBE = functools.partial(first_committed_records, timeout=PROBE_TIMEOUT_S)


async def verified_position(app: Any, recovery: Any, tp: Any, position: int | None,
                            probe: Any = _PROBE) -> int | None:
    """``position`` as Faust's check should see it (see the module's docstring)."""
    highwater = recovery.active_highwaters.get(tp)
    if position is None or highwater is None or position < highwater or not recovery.in_recovery:
        return position
    ranges = ranges_to_verify(recovery)
    if tp not in ranges:
        return position
    verdicts: _Verdicts = recovery.__dict__.setdefault("_kit_restore_verdicts", _Verdicts())
    known = verdicts.by_tp.get(tp)
    if known is None or known[:2] != ranges[tp] or time.monotonic() - verdicts.at > VERDICTS_FOR_S:
        try:
            found = await probe(bootstrap(app), ranges)
        except Exception as exc:  # noqa: BLE001 -- TimeoutError (an open transaction), a broker error
            log.warning("restore of %s: could not verify the end of the changelog (%r); reading on", tp, exc)
            found = {other: _Verdicts.unreadable for other in ranges}
        verdicts.at = time.monotonic()
        verdicts.by_tp = {other: (*ranges[other], found.get(other)) for other in ranges}
        known = verdicts.by_tp[tp]
    first = known[2]
    if first is None:
        return position  # markers and aborted records only: done, as Faust decides
    log.info("restore of %s: committed record at %s not applied yet (applied through %s); waiting for it",
             tp, "?" if first == _Verdicts.unreadable else first, ranges[tp][0] - 1)
    of(app).intervened(NAME, "waited")
    return highwater - 1


def install(guarantees: Guarantees) -> None:
    from faust.transport.consumer import ThreadDelegateConsumer

    stock_position = ThreadDelegateConsumer.position

    async def position(self: ThreadDelegateConsumer, tp: Any) -> int | None:
        found = await stock_position(self, tp)
        recovery = getattr(self.app.tables, "_recovery", None)
        if recovery is None:
            return found
        return await verified_position(self.app, recovery, tp, found)

    guarantees.classes.replace(ThreadDelegateConsumer, "position", position)
