"""Is this worker alive, and can it make progress? ``/health``, ``/health/live``, ``/health/ready``.

A worker whose agent crashed, or whose partition stopped committing, still
answers HTTP: its pid is alive, ``/api/stats`` answers, and a supervisor that
only checks the process would leave it stuck. So readiness is judged from what
the worker does, sampled every :data:`SAMPLE_S`:

- **starting**: Faust has not finished recovering the tables and seeking the
  streams (nothing is processed yet);
- **agent crashed**: an agent raised out of its loop (anything ``processing()``
  did not turn into a dead letter) within the last :data:`CRASH_WINDOW_S`;
  Faust restarts it, and a crash loop stays visible;
- **restarting**: the worker is stopping without committing, to start again: under
  exactly_once another worker took its partitions while it was paused (faust_guarantees
  ``fenced-restart``), or a dependency failed in the middle of a batch
  (``faust_guarantees.dependencies``); the reason says which;
- **partition stuck**: a stream partition with records not yet committed
  whose committed offset has not moved for :data:`STUCK_AFTER_S`. Under
  exactly_once a drained partition ends with transaction markers, one per
  transactional producer that wrote to it (four on ``events`` and ``unique``
  at 4 partitions): the worker passes the true lag (streams_app/metrics.py
  ``true_lag``), and without it one offset of slack is assumed.

``/health/live`` is 200 whenever the event loop answers (for a liveness probe:
restart only a process that no longer answers); ``/health/ready`` and
``/health`` are 200 when ready and 503 with the reasons otherwise (for a
readiness probe, the dashboard, and people).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SAMPLE_S = 5.0
CRASH_WINDOW_S = 60.0
STUCK_AFTER_S = 60.0


@dataclass
class PartitionWatch:
    committed: int | None
    since: float


@dataclass
class Health:
    """What the last sample found."""

    started: bool = False
    crashes: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # agent -> (when, error)
    stuck: dict[str, dict[str, Any]] = field(default_factory=dict)  # "topic[p]" -> details
    fenced: str | None = None  # why, from the fence until the rejoin's assignment
    sampled_at: float | None = None

    def reasons(self, now: float) -> list[str]:
        found = [] if self.started else ["starting: tables are recovering or streams not yet sought"]
        if self.fenced:
            found.append(f"restarting: stopping without committing, then starting again ({self.fenced})")
        for agent, crashes in sorted(self.crashes.items()):
            recent = [error for when, error in crashes if now - when <= CRASH_WINDOW_S]
            if recent:
                found.append(f"agent {agent} crashed {len(recent)} time(s) in the last "
                             f"{CRASH_WINDOW_S:.0f} s: {recent[-1]}")
        for place, info in sorted(self.stuck.items()):
            found.append(f"partition {place} stuck: committed {info['committed']} of "
                         f"{info['highwater']} for {info['for_s']:.0f} s")
        return found

    def report(self, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of ``/health/ready``."""
        now = time.time() if now is None else now
        reasons = self.reasons(now)
        return (200 if not reasons else 503), {
            "status": "ready" if not reasons else "not ready", "reasons": reasons,
            "sampled_at": self.sampled_at,
        }


class HealthMonitor:
    """Samples a worker's state; pure apart from the reads of Faust's consumer."""

    def __init__(self, *, exactly_once: bool) -> None:
        self.health = Health()
        self._slack = 1 if exactly_once else 0
        self._watch: dict[Any, PartitionWatch] = {}

    def report(self, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """HTTP status and body of ``/health/ready``, from the last sample."""
        return self.health.report(now)

    def fenced(self, reason: str) -> None:
        self.health.fenced = reason

    def agent_crashed(self, agent: str, error: BaseException, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.health.crashes.setdefault(agent, []).append((now, f"{type(error).__name__}: {error}"))
        self.health.crashes[agent] = self.health.crashes[agent][-20:]

    def sample(self, *, started: bool, positions: Iterable[tuple[Any, int | None, int | None]],
               now: float | None = None, lags: Mapping[Any, int | None] | None = None) -> Health:
        """``positions``: (stream partition, committed offset, high watermark) of each
        stream partition assigned to this worker; ``lags``: records not yet committed per
        partition where known (markers not counted), which decide "behind" instead."""
        now = time.time() if now is None else now
        stuck: dict[str, dict[str, Any]] = {}
        seen = set()
        for tp, committed, highwater in positions:
            seen.add(tp)
            watch = self._watch.get(tp)
            if watch is None or watch.committed != committed:
                watch = self._watch[tp] = PartitionWatch(committed, now)
            lag = None if lags is None else lags.get(tp)
            if lag is not None:
                behind = lag > 0
            else:
                behind = highwater is not None and highwater - (committed or 0) > self._slack
            if behind and now - watch.since >= STUCK_AFTER_S:
                stuck[f"{tp.topic}[{tp.partition}]"] = {
                    "committed": committed, "highwater": highwater, "for_s": now - watch.since,
                }
            elif not behind:
                watch.since = now  # idle at the end: not waiting for anything
        for tp in set(self._watch) - seen:
            del self._watch[tp]  # revoked
        self.health.started = started
        self.health.stuck = stuck
        self.health.sampled_at = now
        return self.health


def stream_positions(app: Any) -> list[tuple[Any, int | None, int | None]]:
    """(partition, committed, high watermark) of the stream partitions this worker holds."""
    consumer = app.consumer
    acks_enabled_for = app.topics.acks_enabled_for
    committed: Mapping[Any, int | None] = consumer._committed_offset
    return [(tp, committed.get(tp), consumer.highwater(tp))
            for tp in sorted(consumer.assignment()) if acks_enabled_for(tp.topic)]


def started(app: Any) -> bool:
    """Faust has recovered the tables and resumed the streams of this assignment."""
    return app.tables.recovery.completed.is_set() and not app.rebalancing
