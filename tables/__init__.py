"""The pipeline's state: changelog-backed Faust tables, one module each.

Each table is co-partitioned with the stream that writes it: Faust writes a
table's changelog to the partition of the event being processed, so every key
must arrive on one partition (dedup keys by event id, balances by account).
"""

from .balances import balances
from .counters import counters
from .seen_events import is_duplicate, mark_all_seen, seen_events

__all__ = ["balances", "counters", "is_duplicate", "mark_all_seen", "seen_events"]
