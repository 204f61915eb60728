"""``seen-events``: event id -> epoch seconds when the id was first forwarded.

The dedup state. Written by the dedup agent on partitions of ``{prefix}.events``
(keyed by event id, so every copy of an id lands on one partition).

Bounded by ``DEDUP_HORIZON`` in three places, so state does not grow forever:
- reads treat an entry older than the horizon as absent (deterministic, even
  before any cleanup ran);
- the changelog is ``compact,delete`` with ``retention.ms`` = horizon and
  segments rolled at a tenth of it, so the broker drops old ids;
- the RocksDB store opens with a TTL of the horizon, so compaction drops them
  locally too (Faust's ``ttl`` store option writes no tombstone: the changelog
  retention above is what keeps a restore from bringing them back).

A re-send older than the horizon is therefore applied again: pick the horizon
longer than any producer's retry window.
"""

from __future__ import annotations

import time

from streams_app.app import app, settings

_HORIZON_MS = int(settings.dedup_horizon * 1000)

seen_events = app.Table(
    "seen-events",
    key_type=str,
    value_type=float,
    partitions=settings.partitions,
    extra_topic_configs={
        "cleanup.policy": "compact,delete",
        "retention.ms": str(_HORIZON_MS),
        "segment.ms": str(max(_HORIZON_MS // 10, 60_000)),
    },
    options={"ttl": max(int(settings.dedup_horizon), 1)} if settings.store == "rocksdb://" else None,
    help="event id -> first seen (epoch s); bounded by DEDUP_HORIZON",
)


def is_duplicate(event_id: str, now: float | None = None) -> bool:
    """True when ``event_id`` was forwarded within the dedup horizon."""
    first_seen = seen_events.get(event_id)
    if first_seen is None:
        return False
    now = time.time() if now is None else now
    return now - first_seen <= settings.dedup_horizon


def mark_seen(event_id: str, now: float | None = None) -> None:
    """Remember ``event_id``; call only once its output can no longer be lost."""
    seen_events[event_id] = time.time() if now is None else now
