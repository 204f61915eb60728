"""The recovery-idle-wait fix.

exactly_once: a changelog written in transactions ends with a commit marker, so its high
watermark is one past the last record and table recovery never sees it reached. Faust
then decides the rest is transaction markers only after its changelog queue stayed empty
for two 5-second waits (tables/recovery.py _slurp_changelogs, the aborted-transaction
check added for faust-streaming#47): every exactly_once start and every rebalance
stalled 10 to 15 s with nothing left to read (lab logs: 'Still fetching changelog topics
... remaining=769' for 14 s, then 'Aborted tx until highwater'). Fix: the same check
after two 1-second waits; the check itself (the reader's position has passed the high
watermark, twice in a row with an empty queue) is Faust's.

Cf. faust-streaming#47. A kill-and-restart cycle in the lab went from ~18 s to ~9 s.

Regression test:
test_faust_fixes_unit.py::test_recovery_idle_wait_caps_only_the_changelog_queue_wait.
"""

from __future__ import annotations

import asyncio
import logging
import types
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "recovery-idle-wait"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.recovery": "e6cada29f7af",
}


#: How long the changelog queue must stay empty, twice, before recovery checks whether
#: only transaction markers are left (Faust: 5 s).
RECOVERY_IDLE_S = 1.0


class _RecoveryAsyncio(types.ModuleType):
    """``asyncio`` as tables/recovery.py sees it: its one ``wait_for`` (the changelog
    queue's idle wait) is capped at :data:`RECOVERY_IDLE_S`; all else is asyncio's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(awaitable: Any, timeout: float | None) -> Any:
        if timeout is not None:
            timeout = min(timeout, RECOVERY_IDLE_S)
        return await asyncio.wait_for(awaitable, timeout=timeout)


def install(guarantees: Guarantees) -> None:
    from faust.tables import recovery

    if isinstance(recovery.asyncio, _RecoveryAsyncio):
        return
    recovery.asyncio = _RecoveryAsyncio("asyncio")
