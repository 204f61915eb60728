"""Records a stage holds, unacked, while something it depends on is down.

A stage that waits out its database's outage keeps its batch unacked (neither done nor
dead-lettered: the effect is delayed, never skipped), and a stage may set aside a record
its target keeps failing while it goes on with the others. Faust's revocation waits,
without a bound, until every delivered record is acked (Consumer.wait_empty): those
records would hold the whole group's rebalance for as long as the outage lasts. A stage
registers what it holds (:meth:`Holdings.hold`); at a revocation or a stop the kit
releases it (fix held-records-released): the stage's try in progress, if any, ends first,
then its waits end with :class:`Released`, and its records leave the consumer's unacked
set WITHOUT an ack. No commit passes them (exact-gaps commits up to the first offset not
acked), so they come again from the committed offset, to the partitions' next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

log = logging.getLogger(__name__)

#: How long a release waits for a try in progress (one try is bounded by its stage).
RELEASE_WAIT_S = 10.0


class Released(Exception):
    """The records a stage held were released (a revocation or a stop): the stage drops
    them, unacked; they come again from the committed offset."""


class Held:
    """Records one stage holds, unacked, while it waits for a dependency: its tries go
    through :meth:`attempt`, its waits between them through :meth:`sleep` (a
    :class:`Released` ends both once the records are released)."""

    def __init__(self, events: list[Any]) -> None:
        #: the events held (the stage may change the list while it holds them)
        self.events = events
        self.released = asyncio.Event()
        self._trying = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """One try at the held records' work; a release waits for it to end."""
        async with self._trying:
            if self.released.is_set():
                raise Released("released at a revocation or a stop")
            yield

    async def sleep(self, seconds: float) -> None:
        """A wait between tries, ended by a release (raises :class:`Released`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), seconds)
        if self.released.is_set():
            raise Released("released at a revocation or a stop")

    async def release(self, consumer: Any, timeout: float = RELEASE_WAIT_S) -> int:
        """End the stage's hold: wait for its try in progress (``timeout`` at most), then
        take its records out of ``consumer``'s unacked set, unacked; how many were."""
        self.released.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._trying.acquire()
                self._trying.release()
        unacked = consumer._unacked_messages
        released = 0
        for event in self.events:
            message = event.message
            if not message.acked and message in unacked:
                unacked.discard(message)
                released += 1
        return released


class Holdings:
    """Every :class:`Held` of one app's stages, for the kit to release."""

    def __init__(self) -> None:
        self._held: list[Held] = []

    def __len__(self) -> int:
        return len(self._held)

    @contextlib.contextmanager
    def hold(self, events: list[Any]) -> Iterator[Held]:
        """Hold ``events`` for the block (a batch waiting out an outage)."""
        held = self.open(events)
        try:
            yield held
        finally:
            self.close(held)

    def open(self, events: list[Any]) -> Held:
        """Hold ``events`` until :meth:`close` or a release (records set aside across batches)."""
        held = Held(events)
        self._held.append(held)
        return held

    def close(self, held: Held) -> None:
        with contextlib.suppress(ValueError):
            self._held.remove(held)

    async def release_all(self, consumer: Any) -> int:
        """Release every hold (a revocation or a stop); how many records left the unacked set."""
        held, self._held = self._held, []
        released = 0
        for one in held:
            released += await one.release(consumer)
        return released
