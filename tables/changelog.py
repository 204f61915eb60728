"""How the tables' compacted changelogs are kept (balances, pipeline counters).

Kafka never compacts a partition's active segment, and its default ``segment.ms`` is 7 days:
within a week every update of a balance stays in the changelog, and a worker that restores
(a restart under exactly_once wipes its state) reads all of them. Measured in the soak
(decision 0051): a restarted worker's Python heap grew with the time of the restart (71 MB
at 6 minutes, 91 MB at 14). Rolling a segment every 10 minutes lets the log cleaner keep the
latest value per key of everything older, so a restore reads at most 10 minutes of updates
plus one row per key. Faust creates missing changelogs only: an existing one keeps its
configuration (``kafka-configs --alter --entity-type topics --add-config segment.ms=600000``).
"""

from __future__ import annotations

#: How often a compacted changelog's active segment rolls (ms): what a restore reads beyond
#: the latest value per key.
SEGMENT_MS = 10 * 60 * 1000

COMPACTED_CHANGELOG = {"segment.ms": str(SEGMENT_MS)}
