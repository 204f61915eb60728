"""What one benchmark run measures, and the two presets, ``--quick`` and ``--full``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Guarantee = Literal["at_least_once", "exactly_once"]
GUARANTEES: tuple[Guarantee, ...] = ("at_least_once", "exactly_once")
SHORT = {"at_least_once": "alo", "exactly_once": "eos"}

#: Faust's defaults for the two knobs the benchmark turns (faust/types/settings). Quix and
#: the minimal Faust agent commit at Faust's interval; the pipeline at its own default
#: for the guarantee (streams_app.settings.DEFAULT_COMMIT_INTERVAL) unless a variant says.
FAUST_DEFAULT_COMMIT_INTERVAL = "2.8"
FAUST_DEFAULT_BUFFER = "4096"
#: A variant's commit interval that means "the pipeline's own default".
APP_DEFAULT = ""
#: The commit intervals of the throughput / latency curve (reports/bench.md).
COMMIT_INTERVAL_CURVE = ("0.05", "0.1", "0.25", "1", "2.8")
#: "Raised" stream buffer: the size Faust's documentation cites for >30,000 events/s.
FAUST_RAISED_BUFFER = "131072"


#: The stages (env STAGES) of a Faust run. The dedup stage alone does the work every other
#: system does (validate, dedup by event id in a changelogged table, forward): the headline
#: comparison. The whole pipeline adds apply (a second changelogged table, a second hop) and
#: the sink: the latency targets (produce to ``{prefix}.applied``) and the commit-interval curve.
SAME_WORK = "dedup"
PIPELINE = "all"


@dataclass(frozen=True)
class FaustVariant:
    """One Faust configuration: the env values of STAGES, BROKER_COMMIT_INTERVAL (empty: the
    pipeline's default) and STREAM_BUFFER_MAXSIZE, and how many worker processes (one
    consumer group) share the partitions."""

    commit_interval: str = APP_DEFAULT
    buffer_maxsize: str = FAUST_DEFAULT_BUFFER
    stages: str = SAME_WORK
    workers: int = 1

    @property
    def is_default(self) -> bool:
        return self == FaustVariant()

    @property
    def suffix(self) -> str:
        """'' for the defaults, else e.g. '_pipeline_ci0.1' or '_buf131072'."""
        parts = ["pipeline"] if self.stages == PIPELINE else []
        if self.commit_interval != APP_DEFAULT:
            parts.append(f"ci{self.commit_interval}")
        if self.buffer_maxsize != FAUST_DEFAULT_BUFFER:
            parts.append(f"buf{self.buffer_maxsize}")
        if self.workers != 1:
            parts.append(f"w{self.workers}")
        return "".join(f"_{part}" for part in parts)


FAUST_GRID = (
    FaustVariant(),
    FaustVariant(stages=PIPELINE),
    *(FaustVariant(ci, stages=PIPELINE) for ci in COMMIT_INTERVAL_CURVE),
    FaustVariant(buffer_maxsize=FAUST_RAISED_BUFFER),
    FaustVariant(workers=2),
)


@dataclass(frozen=True)
class BenchConfig:
    """Every size, duration and repetition count of a run; see :func:`preset`."""

    mode: str
    bootstrap: str = "127.0.0.1:9092"
    #: Backlog preloaded once per partition count (bad_rate=0): 80,000 gives a steady window of
    #: 3 s or more to every system (20,000 gave Quix about one second).
    records: int = 80_000
    duplicate_rate: float = 0.2
    #: Seed of streams_app.traffic.generate: the same records at every partition count.
    seed: int = 1
    #: A Faust run (the pipeline or the minimal agent) drains a copy of the backlog's
    #: first N records in its own input topic (the pipeline's is {prefix}.raw, named
    #: after its fresh TOPIC_PREFIX); None: all of them (since session 13's record batches
    #: the dedup stage is within 2x of the others, and a short input gave a steady window
    #: of well under a second).
    faust_records: int | None = None
    partition_counts: tuple[int, ...] = (4,)
    #: The partition count of the headline comparison, the Faust variants and the latency runs.
    headline_partitions: int = 4
    #: Runs of each system at the headline partition count, and of each latency measurement.
    runs: int = 1
    #: Runs at the other partition counts.
    scaling_runs: int = 1
    #: A run that has not drained its input after this long is stopped and flagged.
    max_run_s: float = 600.0
    #: Watermarks, CPU and RSS are sampled this often: at 1 s an 80,000-record run had 3-4
    #: samples in its steady window.
    sample_interval_s: float = 0.25
    faust_variants: tuple[FaustVariant, ...] = FAUST_GRID
    latency_warmup_s: float = 5.0
    latency_duration_s: float = 10.0
    broker_records: int = 300_000
    transaction_durations_ms: tuple[int, ...] = (10, 100, 1000)
    restore_keys: int = 50_000
    restart_events: int = 2_000
    horizons_s: tuple[float, ...] = (3600.0, 86400.0, 7 * 86400.0)
    #: Seconds of py-spy sampling of each Faust worker (0: no profile).
    profile_s: int = 10
    pin_cpus: bool = True
    workdir: Path = field(default_factory=lambda: Path("reports/tmp/bench"))

    def replace(self, **changes: object) -> BenchConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def runs_at(self, partitions: int) -> int:
        return self.runs if partitions == self.headline_partitions else self.scaling_runs


def preset(mode: str) -> BenchConfig:
    """``quick``: 80k records, 4 partitions, 1 run of everything.
    ``full``: 200k records at 1, 4, 8 and 16 partitions; 3 runs at 4 partitions
    (every system and variant, latency), 1 run at 1 and 8 partitions; 1M-key restore."""
    if mode == "quick":
        return BenchConfig(mode="quick")
    if mode == "full":
        return BenchConfig(
            mode="full", records=200_000, partition_counts=(1, 4, 8, 16), runs=3,
            broker_records=1_000_000, restore_keys=1_000_000, restart_events=10_000,
        )
    raise ValueError(f"unknown mode {mode!r}: use quick or full")
