"""The pipeline's state: changelog-backed Faust tables, one module each.

Each table is co-partitioned with the stream that writes it: Faust writes a
table's changelog to the partition of the event being processed, so every key
must arrive on one partition (dedup keys by event id, balances by account).
Importing declares nothing: :func:`declare_tables` declares them on an app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .balances import Balances
from .counters import Counters
from .seen_events import SeenEvents

__all__ = ["Balances", "Counters", "SeenEvents", "Tables", "declare_tables"]


@dataclass(frozen=True)
class Tables:
    seen_events: SeenEvents
    balances: Balances
    counters: Counters


def declare_tables(app: Any) -> Tables:
    """Declare the pipeline's tables (and the seen-events sweep's timer) on ``app``."""
    return Tables(seen_events=SeenEvents(app), balances=Balances(app), counters=Counters(app))
