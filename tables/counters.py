"""``pipeline-counters``: "{stage}.{counter}@{partition}" -> count.

What the dashboard shows (consumed, dead-lettered, duplicates dropped,
applied). One key per source partition because Faust stores a table per
partition: two partitions incrementing one key would overwrite each other.
A worker sums the keys it holds (active and standby partitions).

The counts follow the guarantee in force: under exactly_once they commit with
the events; under at_least_once an event redelivered after a crash is counted
again, so they count processing, not unique events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from faust.streams import current_event

from faust_guarantees.processing import as_current, current_event_kept
from streams_app import metrics

from .changelog import COMPACTED_CHANGELOG

#: The counts of the batch in progress in this task (agents.processing sets it),
#: written once per key when the batch is done: one table write (and changelog
#: record) per counter and partition per batch instead of one per record.
_pending: ContextVar[dict[str, list[Any]] | None] = ContextVar("pending_counts", default=None)


class Counters:
    """The ``pipeline-counters`` table of one app, and how stages count into it."""

    def __init__(self, app: Any) -> None:
        self.table = app.Table(
            "pipeline-counters",
            key_type=str,
            value_type=int,
            default=int,
            partitions=app.settings.partitions,
            extra_topic_configs=COMPACTED_CHANGELOG,
            help="stage.counter@partition -> count",
        )

    def count(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name`` for the partition of the current event."""
        event = current_event()
        assert event is not None, "counters are written from agents only"
        key = f"{name}@{event.message.partition}"
        pending = _pending.get()
        if pending is None:
            self.table[key] += by
            metrics.counted(name, by)  # the same name in /metrics (payments_stage_records_total)
            return
        entry = pending.get(key)
        if entry is None:
            pending[key] = [by, event, name]  # an event of the partition: the write's context
        else:
            entry[0] += by

    def count_each(self, name: str, events: list[Any]) -> None:
        """:meth:`count` once for each of ``events``, as each would count with it current: one
        call per partition."""
        by_partition: dict[int, list[Any]] = {}
        for event in events:
            entry = by_partition.get(event.message.partition)
            if entry is None:
                by_partition[event.message.partition] = [1, event]
            else:
                entry[0] += 1
        with current_event_kept():
            for by, event in by_partition.values():
                as_current(event)
                self.count(name, by)

    def write_counts(self, pending: dict[str, list[Any]]) -> None:
        """Add the collected counts to the table (each in its partition) and to /metrics."""
        for key, (by, event, name) in pending.items():
            as_current(event)
            self.table[key] += by
            metrics.counted(name, by)
        pending.clear()

    def totals(self) -> dict[str, int]:
        """Every counter summed over the partitions this worker holds."""
        summed: dict[str, int] = defaultdict(int)
        for key, value in self.table.items():
            name, _, _ = key.rpartition("@")
            summed[name] += value
        return dict(summed)


@contextmanager
def batched_counts() -> Iterator[dict[str, list[Any]]]:
    """Collect this task's counts until :meth:`Counters.write_counts` is given them."""
    pending: dict[str, list[Any]] = {}
    token = _pending.set(pending)
    try:
        yield pending
    finally:
        _pending.reset(token)
