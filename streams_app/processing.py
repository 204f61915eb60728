"""How every agent processes one event: acks, the commit gate, and dead letters.

Agents write::

    stream = stream.noack()                       # acks are ours, see below
    async for event in stream.events():
        async with processing(stream, event, stage="dedup"):
            ...                                   # the stage's work

and get three guarantees that stock Faust does not give:

1. **An event is acked only when its work is done.** Faust's own loop acks in
   a ``finally`` block, even when the body raised (the event is then lost
   without a trace), and it acks an event only when the *next* one is asked
   for. Here the ack is the last step of the body.

2. **No record disappears.** An unexpected exception in the body does not
   crash the agent: the event goes to ``{prefix}.dlq`` with its stage, its
   place and the error as headers, and is then acked. (The sink never gets
   here for a database outage: it retries; see agents/sink.py.)

3. **Under exactly_once, a commit never splits an event.** Faust commits from
   a timer task while agents keep processing. An event processed during the
   commit would have its outputs in transaction N but its offset in N+1; a
   crash between the two commits replays it and duplicates its outputs. The
   :class:`CommitGate` pauses new events while a commit runs and makes the
   commit wait for events in progress (streams_app/faust_fixes.py installs
   the commit side).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager, nullcontext
from typing import AsyncIterator

from faust.types import EventT, StreamT

from .app import app, settings
from .faults import crashpoint
from .topics import dead_letters, place

log = logging.getLogger(__name__)


class CommitGate:
    """A writer-preferring readers/writer gate: many events, or one commit.

    ``processing()`` is entered per event; ``committing()`` by the commit. A
    waiting commit closes the gate to new events (so it cannot starve), waits
    for the events in progress to finish, commits, and reopens.
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


#: The one gate of this process; the commit side is installed by faust_fixes.
gate = CommitGate()

GATED = settings.faust_guarantee == "exactly_once" and settings.fix_enabled("commit-gate")


#: at_most_once: every stage commits an event's offset BEFORE working on it.
COMMIT_FIRST = settings.processing_guarantee == "at_most_once"


@asynccontextmanager
async def processing(stream: StreamT, event: EventT, *, stage: str) -> AsyncIterator[None]:
    """Run one event's work; dead-letter it on an unexpected error; ack it after.

    Under at_most_once the ack and a synchronous offset commit come first
    instead: a crash during the work then loses the event and never repeats it
    (crash point ``{stage}.after_commit``).
    """
    async with gate.processing() if GATED else nullcontext():
        if COMMIT_FIRST:
            await stream.ack(event)
            await app.consumer.commit({event.message.tp})
            crashpoint(f"{stage}.after_commit")
        try:
            yield
        except Exception as exc:
            log.exception("%s: failed on %s; dead-lettering it", stage, place(event.message))
            await dead_letter(event, stage=stage, code="processing_error",
                              reason=f"{type(exc).__name__}: {exc}")
        if not COMMIT_FIRST:
            await stream.ack(event)


async def dead_letter(event: EventT, *, stage: str, code: str, reason: str) -> None:
    """Send the event's original bytes to the DLQ with why and where from."""
    message = event.message
    value = message.value if isinstance(message.value, bytes) else _as_bytes(event.value)
    key = message.key if isinstance(message.key, (bytes, type(None))) else str(message.key).encode()
    await dead_letters.send(key=key, value=value, headers=[
        ("x-dlq-code", code.encode()),
        ("x-dlq-reason", reason.encode()[:1024]),
        ("x-dlq-source", place(message).encode()),
        ("x-dlq-stage", stage.encode()),
    ])


def _as_bytes(value: object) -> bytes:
    if hasattr(value, "dumps"):
        return value.dumps()  # a faust.Record
    return json.dumps(value, default=str).encode()
