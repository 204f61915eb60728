"""How this app's agents process events: the kit's processing discipline, wired to the app.

The discipline itself (acks after the work, records delivered again skipped, dead letters
instead of lost records, the exactly_once commit gate, batches) is
:mod:`faust_guarantees.processing`; its docstring says what each of its four guarantees
repairs in stock Faust. This module gives it what is this app's: the dead-letter topic
(``{prefix}.dlq``), the batch size (``BATCH_MAX``), the ``{stage}.after_commit`` crash
points of at_most_once, DSN masking in dead letters, and the counters (dashboard and
``/metrics``) of dead letters and of each batch, written once per batch inside the gate.

Agents write::

    stream = stream.noack()                       # acks are the discipline's
    async for events in batches(stream):
        async with processing_batch(stream, events, stage="dedup") as batch:
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
from faust_guarantees.processing import Batch, Processing, as_current
from faust_guarantees.batching import RecordBatches
from faust_guarantees.processing import publish as _publish
from tables.counters import batched_counts, count, write_counts

from streams_app import metrics
from streams_app.application import current_app
from streams_app.faults import crashpoint
from streams_app.topics import dead_letters


app = current_app()
guarantees = app.guarantees
settings = app.settings

__all__ = ["Batch", "as_current", "batches", "discipline", "first_deliveries", "processing",
           "processing_batch", "publish", "record_batches"]


def _redact(text: str) -> str:
    """An error's text may quote the sink's DSN: never with its password."""
    return mask_url(text, settings.sink_db)


def _dead_lettered(message: Message, stage: str, code: str, reference: bool) -> None:
    if reference:
        count("dlq.references")
    count(f"{stage}.dead_lettered")
    metrics.dead_lettered(stage, code)


#: The discipline of this app's agents.
discipline = Processing(
    guarantees, dead_letters=dead_letters, batch_max=settings.batch_max,
    after_commit=lambda stage: crashpoint(f"{stage}.after_commit"),
    redact=_redact, on_dead_letter=_dead_lettered,
)

#: What this process processed (faust_guarantees/memory.py).
memory = guarantees.memory
first_deliveries = discipline.first_deliveries
batches = discipline.batches
processing = discipline.processing


@asynccontextmanager
async def processing_batch(stream: StreamT, events: list[EventT], *,
                           stage: str | Callable[[Message], str]) -> AsyncIterator[Batch]:
    """The kit's ``processing_batch`` with the batch's counts collected and written once
    per counter and partition, inside the commit gate, before the acks."""
    with batched_counts() as pending:
        async with discipline.processing_batch(stream, events, stage=stage,
                                               before_ack=lambda: write_counts(pending)) as work:
            yield work


def record_batches() -> RecordBatches:
    """Records of a batch for this app's producer, sent together (faust_guarantees/batching.py)."""
    return RecordBatches(app)


async def publish(topic: Any, *, key: bytes | None, value: bytes | None, partition: int | None = None,
                  headers: Any = None) -> Awaitable[Any]:
    """One output through this app's producer (:func:`faust_guarantees.processing.publish`)."""
    return await _publish(app, topic, key=key, value=value, partition=partition, headers=headers)
