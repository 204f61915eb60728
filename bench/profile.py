"""Where a system's time goes: py-spy samples of a running process, summarised.

Sampled with ``--gil``: only stacks of the thread holding the GIL are kept, so
the samples are the Python work the process does, and

    busy share = GIL samples / (seconds x rate)

says how much of the wall time it spent computing. A stream processor far
below its throughput target with a low busy share is waiting (for broker
round trips, commits, timers), not computing, and a faster CPU or leaner code
would not help it; one near 100 % is CPU-bound.

The summary groups the samples by where the innermost frame's code lives
(project package, library, standard library) and lists the functions with the
largest inclusive share, the event loop's own scaffolding left out.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PROJECT_PACKAGES = ("agents", "streams_app", "tables", "bench")
RATE = 100
#: Frames of the entry point and the event loop, present in most samples, say nothing.
SCAFFOLDING = ("<frozen runpy>", "click/", "faust/__main__.py", "faust/cli/", "mode/worker.py",
               "asyncio/base_events.py", "asyncio/events.py", "threading.py", "mode/threads.py")
#: Which thread a stack ran on, by a frame only that thread has (first match wins).
THREADS = (("mode/threads.py", "consumer thread"), ("concurrent/futures", "executor threads"),
           ("<frozen runpy>", "event loop"))


@dataclass(frozen=True)
class Profile:
    seconds: float
    samples: int
    busy_share: float
    by_thread: list[tuple[str, float]]
    by_origin: list[tuple[str, float]]
    hot: list[tuple[str, float]]


def record(pid: int, seconds: int, out: Path) -> Profile:
    """Sample ``pid`` for ``seconds`` with py-spy (raw collapsed stacks into ``out``).

    py-spy pauses the process for each sample (no ``--nonblocking``): slower for the
    target, but whole stacks, which the per-thread split needs."""
    py_spy = Path(sys.executable).with_name("py-spy")
    subprocess.run(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE),
         "--gil", "--format", "raw", "--output", str(out)],
        check=True, capture_output=True,
    )
    return summarise(out.read_text(), seconds)


def _origin(frame: str) -> str:
    """'Stream._c_aiter (faust/streams.py:1180)' -> 'faust'; project code -> 'project: agents'."""
    location = frame.rpartition(" (")[2].rstrip(")")
    path = location.split(":")[0]
    top = path.split("/")[0] if "/" in path else path.removesuffix(".py")
    if top in PROJECT_PACKAGES:
        return f"project: {top}"
    return top if "/" in path else f"stdlib: {top}"


def _function(frame: str) -> str:
    name, _, location = frame.rpartition(" (")
    return f"{name} ({location.rstrip(')').rsplit(':', 1)[0]})"


def _thread(stack: str) -> str:
    return next((name for marker, name in THREADS if marker in stack), "other")


def summarise(collapsed: str, seconds: float) -> Profile:
    inclusive: Counter[str] = Counter()
    origin: Counter[str] = Counter()
    thread: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        origin[_origin(frames[-1])] += n
        thread[_thread(stack)] += n
        for function in {_function(f) for f in frames if not any(m in f for m in SCAFFOLDING)}:
            inclusive[function] += n
    if not total:
        return Profile(seconds, 0, 0.0, [], [], [])
    return Profile(
        seconds=seconds, samples=total, busy_share=min(1.0, total / (seconds * RATE)),
        by_thread=[(t, n / total) for t, n in thread.most_common()],
        by_origin=[(o, n / total) for o, n in origin.most_common(10)],
        hot=[(f, n / total) for f, n in inclusive.most_common(15)],
    )
