"""The four figures of merit, and how each is computed from what was sampled.

- **Steady throughput** (events/s): the high watermarks of the output topic and
  of the topic the system's first stage writes are sampled once a second while
  it drains its input. The window opens when the first stage's output reaches
  10 % of its final count and closes when the output reaches 90 % of its own
  (times interpolated between samples): that drops the warm-up (start-up, group
  join, restore, first fetches) and the tail (the last, partly filled second).
  For a one-hop system both are the output topic. For the Faust pipeline the
  first stage is ingest, which runs ahead of dedup on a backlog, so the window
  covers the whole pipeline at work, not just dedup catching up afterwards.
  Under exactly-once a high watermark also counts transaction markers, so the
  rate is scaled by the share of data records in the topic (records read with
  read_committed / final high watermark).
- **CPU-seconds per million events**: user + system CPU of the process tree
  (psutil), over the same window, per million output events.
- **Peak RSS**: the largest resident set of the process tree seen by any sample.
- **Latency p50/p99**: computed in :mod:`bench.latency`; percentiles here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Sample:
    """One tick: seconds since start, output and first-hop HWs, CPU-seconds, RSS bytes."""

    t: float
    output: int
    first_hop: int
    cpu_s: float
    rss: int


class TreeProbe:
    """CPU time and resident memory of processes (a system's workers) and all their descendants."""

    def __init__(self, *pids: int) -> None:
        self._roots = [psutil.Process(pid) for pid in pids]
        # Last CPU time seen per process: a child that exits keeps its share.
        self._cpu_by_pid: dict[int, float] = {}

    def _tree(self) -> list[psutil.Process]:
        tree: list[psutil.Process] = []
        for root in self._roots:
            try:
                tree += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return tree

    def read(self) -> tuple[float, int]:
        """(CPU-seconds so far, current RSS bytes) over the tree."""
        rss = 0
        for process in self._tree():
            try:
                times = process.cpu_times()
                self._cpu_by_pid[process.pid] = times.user + times.system
                rss += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return sum(self._cpu_by_pid.values()), rss


@dataclass(frozen=True)
class Steady:
    """The steady window of one run and what was measured over it."""

    throughput_eps: float
    cpu_s_per_million: float
    window_s: float


def _crossing(samples: Sequence[Sample], field: str, level: float) -> Sample:
    """The (interpolated) sample at which ``field`` first reaches ``level``."""
    after = next(i for i, s in enumerate(samples) if getattr(s, field) >= level)
    if after == 0:
        return samples[0]
    a, b = samples[after - 1], samples[after]
    share = (level - getattr(a, field)) / (getattr(b, field) - getattr(a, field))

    def mix(x: float, y: float) -> float:
        return x + share * (y - x)

    return Sample(mix(a.t, b.t), round(mix(a.output, b.output)), round(mix(a.first_hop, b.first_hop)),
                  mix(a.cpu_s, b.cpu_s), b.rss)


def steady(samples: Sequence[Sample], data_share: float = 1.0) -> Steady | None:
    """Throughput and CPU cost from 10 % of the first hop to 90 % of the output;
    None if there is too little output to tell."""
    if len(samples) < 2 or samples[-1].output < 10:
        return None
    start = _crossing(samples, "first_hop", 0.1 * samples[-1].first_hop)
    end = _crossing(samples, "output", 0.9 * samples[-1].output)
    events = (end.output - start.output) * data_share
    if end.t <= start.t or events <= 0:
        return None
    return Steady(events / (end.t - start.t), (end.cpu_s - start.cpu_s) / events * 1e6, end.t - start.t)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank: a value that was observed."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over repeated runs."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread | None:
        known = [v for v in values if v is not None]
        if not known:
            return None
        return cls(statistics.median(known), min(known), max(known), len(known))
