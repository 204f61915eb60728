"""How this app's agents process events: the kit's processing discipline, wired to the app.

The discipline itself (acks after the work, records delivered again skipped, dead letters
instead of lost records, the exactly_once commit gate, batches) is
:mod:`faust_guarantees.processing`; its docstring says what each of its four guarantees
repairs in stock Faust. This module gives it what is this app's: the dead-letter topic
(``{prefix}.dlq``), the batch size (``BATCH_MAX``), the ``{stage}.after_commit`` crash
points of at_most_once, DSN masking in dead letters, and the counters (dashboard and
``/metrics``) of dead letters and of each batch, written once per batch inside the gate.

Agents write (``work`` being this module's :class:`AppProcessing`)::

    stream = stream.noack()                       # acks are the discipline's
    async for events in work.batches(stream):
        async with work.processing_batch(stream, events, stage="dedup") as batch:
            for event in events:
                with batch.record(event):
                    ...                           # one record's work
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from faust.types import EventT, Message, StreamT

from common.redact import mask_url
from faust_guarantees.batching import RecordBatches
from faust_guarantees.processing import Batch, Processing
from faust_guarantees.processing import publish as _publish
from streams_app import metrics
from streams_app.faults import crashpoint
from tables.counters import Counters, batched_counts

__all__ = ["AppProcessing", "Batch"]


class AppProcessing:
    """The kit's discipline wired to one app: its dead-letter topic, ``BATCH_MAX``, the
    ``{stage}.after_commit`` crash points, DSN masking and the counters."""

    def __init__(self, app: Any, *, dead_letters: Any, counters: Counters) -> None:
        self.app = app
        self.counters = counters
        sink_db = app.settings.sink_db

        def redact(text: str) -> str:
            """An error's text may quote the sink's DSN: never with its password."""
            return mask_url(text, sink_db)

        #: The discipline of this app's agents.
        self.discipline = Processing(
            app.guarantees, dead_letters=dead_letters, batch_max=app.settings.batch_max,
            after_commit=lambda stage: crashpoint(f"{stage}.after_commit"),
            redact=redact, on_dead_letter=self._dead_lettered,
        )
        #: What this process processed (faust_guarantees/memory.py).
        self.memory = app.guarantees.memory
        self.first_deliveries = self.discipline.first_deliveries
        self.batches = self.discipline.batches
        self.processing = self.discipline.processing
        self.holdings = self.discipline.holdings
        self.sends_only_dead_letters = self.discipline.sends_only_dead_letters

    def _dead_lettered(self, message: Message, stage: str, code: str, reference: bool) -> None:
        if reference:
            self.counters.count("dlq.references")
        self.counters.count(f"{stage}.dead_lettered")
        metrics.dead_lettered(stage, code)

    @asynccontextmanager
    async def processing_batch(self, stream: StreamT, events: list[EventT], *,
                               stage: str | Callable[[Message], str]) -> AsyncIterator[Batch]:
        """The kit's ``processing_batch`` with the batch's counts collected and written once
        per counter and partition, inside the commit gate, before the acks."""
        write_counts = self.counters.write_counts
        with batched_counts() as pending:
            async with self.discipline.processing_batch(stream, events, stage=stage,
                                                        before_ack=lambda: write_counts(pending)) as work:
                yield work

    def record_batches(self) -> RecordBatches:
        """Records of a batch for this app's producer, sent together (faust_guarantees/batching.py)."""
        return RecordBatches(self.app)

    async def publish(self, topic: Any, *, key: bytes | None, value: bytes | None, partition: int | None = None,
                      headers: Any = None) -> Awaitable[Any]:
        """One output through this app's producer (:func:`faust_guarantees.processing.publish`)."""
        return await _publish(self.app, topic, key=key, value=value, partition=partition, headers=headers)
