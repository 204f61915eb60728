"""Benchmarks: what exactly_once costs, and whether Faust is fast enough.

Measured side by side in one run on one machine, never with a timed test:

- the broker's own limit (Kafka's ProducerPerformance / ConsumerPerformance);
- a raw aiokafka consume -> dedup -> produce loop (:mod:`bench.raw_loop`);
- the same dedup pipeline in Quix Streams (:mod:`bench.quix_pipeline`);
- this project's Faust pipeline, started as the lab starts it;

each under at_least_once and exactly_once, plus the dedup table's restore and
restart behaviour. ``python -m bench run --quick|--full`` writes
reports/bench.md, bench.json and bench.png; :func:`run_benchmark` is the same
from Python (for ``make bench`` or a Faust command).

This module imports nothing heavy: the raw loop and the Quix pipeline run as
``python -m bench.<module>`` and must not load Faust by importing the package.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from .config import BenchConfig


def run_benchmark(
    config: BenchConfig | str = "quick", out: Path | str = Path("reports"),
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the benchmark (a preset name or a :class:`~bench.config.BenchConfig`),
    write bench.json/.md/.png into ``out`` and return the JSON document."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from . import report, runner
    from .config import preset

    if isinstance(config, str):
        config = preset(config)
    # aiokafka warns on every retried produce, e.g. NotLeaderForPartition on a topic
    # created a moment ago: harmless, retried, and noise in the progress display.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    console = console or Console()
    columns = (TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{config.mode} runs", total=runner.planned_steps(config))
        results = runner.run(config, say=progress.console.print, advance=lambda: progress.advance(task))
    doc, paths = report.write(results, Path(out))
    for path in paths:
        console.print(f"wrote {path}")
    return doc


__all__ = ["run_benchmark"]
