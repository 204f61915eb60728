"""The commit gate: under exactly_once a commit never splits an event.

Faust commits from a timer task while agents keep processing. An event processed during
the commit would have its outputs in transaction N but its offset in N+1; a crash between
the two commits replays it and duplicates its outputs (faust-streaming#517). Agents enter
:meth:`CommitGate.processing` per event (or batch); the commit-gate fix makes Faust's
commit enter :meth:`CommitGate.committing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class CommitGate:
    """A writer-preferring readers/writer gate: many events, or one commit.

    A waiting commit closes the gate to new events (so it cannot starve), waits for the
    events in progress to finish, commits, and reopens.
    """

    def __init__(self) -> None:
        self._in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()

    @asynccontextmanager
    async def processing(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._in_progress += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_progress -= 1
            if self._in_progress == 0:
                self._idle.set()

    @asynccontextmanager
    async def committing(self) -> AsyncIterator[None]:
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()
