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

from faust.streams import current_event

from streams_app import metrics
from streams_app.app import app, settings

counters = app.Table(
    "pipeline-counters",
    key_type=str,
    value_type=int,
    default=int,
    partitions=settings.partitions,
    help="stage.counter@partition -> count",
)


def count(name: str, by: int = 1) -> None:
    """Add ``by`` to counter ``name`` for the partition of the current event."""
    event = current_event()
    assert event is not None, "counters are written from agents only"
    key = f"{name}@{event.message.partition}"
    counters[key] += by
    metrics.counted(name, by)  # the same name in /metrics (payments_stage_records_total)


def totals() -> dict[str, int]:
    """Every counter summed over the partitions this worker holds."""
    summed: dict[str, int] = defaultdict(int)
    for key, value in counters.items():
        name, _, _ = key.rpartition("@")
        summed[name] += value
    return dict(summed)
