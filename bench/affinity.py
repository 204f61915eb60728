"""Keep the broker and the system under test off each other's cores.

On a small machine the broker and the measured process otherwise steal each
other's CPU, and the steal varies from run to run. With two or more cores the
benchmark gives the broker's JVM (every thread) and the benchmark's own process
the first half of the CPUs and starts each system under test on the other
half. Children inherit the CPU set of the thread that forks them, so a system
is pinned by forking it from a thread that is pinned to the SUT cores for the
moment of the fork. The broker's previous affinity is restored at the end:
other people's tests use it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pinning:
    """Whether pinning is in force, and how; written into the report."""

    enabled: bool
    broker_cpus: tuple[int, ...] = ()
    sut_cpus: tuple[int, ...] = ()
    note: str = ""

    @contextmanager
    def for_child(self) -> Iterator[None]:
        """While inside, processes forked by this thread run on the SUT cores."""
        if not self.enabled:
            yield
            return
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, self.sut_cpus)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    def describe(self) -> str:
        if not self.enabled:
            return f"not pinned: {self.note}"
        return (f"pinned: broker JVM (all threads) and the benchmark driver on CPU "
                f"{_cpus(self.broker_cpus)}, each system under test on CPU {_cpus(self.sut_cpus)}")


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(map(str, cpus))


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


@contextmanager
def pinned(broker_pid: int | None, want: bool = True) -> Iterator[Pinning]:
    """Pin the broker and this process for the duration; yield what was done."""
    available = sorted(os.sched_getaffinity(0))
    if not want:
        yield Pinning(False, note="disabled (--no-pin)")
        return
    if len(available) < 2:
        yield Pinning(False, note=f"only {len(available)} CPU available")
        return
    if broker_pid is None or not Path(f"/proc/{broker_pid}").exists():
        yield Pinning(False, note="the broker is not a local process (no pid)")
        return
    half = len(available) // 2
    plan = Pinning(True, tuple(available[:half]), tuple(available[half:]))
    saved: dict[int, set[int]] = {}
    own = os.sched_getaffinity(0)
    try:
        for tid in _threads(broker_pid):
            try:
                cpus = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, plan.broker_cpus)
                saved[tid] = cpus
            except (ProcessLookupError, PermissionError):
                continue
        if not saved:
            yield Pinning(False, note=f"could not set the affinity of broker pid {broker_pid}")
            return
        os.sched_setaffinity(0, plan.broker_cpus)
        yield plan
    finally:
        os.sched_setaffinity(0, own)
        for tid, cpus in saved.items():
            try:
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError):
                pass
