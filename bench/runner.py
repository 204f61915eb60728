"""One benchmark run, phase by phase, in one process on one machine.

1. **Broker limit**: Kafka's own perf tools (:mod:`bench.broker_perf`).
2. **Throughput**: per partition count, the backlog is generated and preloaded
   once; then, round after round, every system drains it under a fresh group
   and state directory, one after another, so no load generator competes.
   Rounds interleave the systems (run 1 of every system, then run 2...), so a
   slow drift of the shared machine spreads over all of them.
3. **Latency** at half of each system's own throughput (:mod:`bench.latency`).
4. **State**: restore, restart, size by horizon (:mod:`bench.state`).
5. **Profile** of the Faust pipeline with py-spy (:mod:`bench.profile`).

Every run is checked against the traffic generator's ground truth: a drained
run must have output exactly the unique events of its input, no duplicates.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from streams_app.admin import delete_topics_containing
from streams_app.traffic import generate

from . import broker_perf, latency, machine, profile, state
from .affinity import Pinning, pinned
from .config import FAUST_DEFAULT_BUFFER, GUARANTEES, PIPELINE, BenchConfig, FaustVariant
from .kafka_io import create_topics
from .metrics import Spread
from .runs import (
    Backlog,
    Context,
    Report,
    RunResult,
    latency_run,
    preload,
    profile_run,
    throughput_run,
)
from .systems import FaustDeployment, SystemSpec

T = TypeVar("T")
#: An upper bound of the Faust worker's input rate, to size the profiling input.
PROFILE_RECORDS_PER_S = 15_000


def headline_systems() -> list[SystemSpec]:
    """Raw loop, Quix and Faust (default settings) under each guarantee."""
    return [SystemSpec(kind, g) for kind in ("raw", "quix", "faust") for g in GUARANTEES]


def systems_for(config: BenchConfig, partitions: int) -> list[SystemSpec]:
    """The headline six everywhere; at the headline partition count also the minimal
    Faust agent (what Faust costs without the pipeline) and the Faust variants."""
    specs = headline_systems()
    if partitions == config.headline_partitions:
        specs += [SystemSpec("faust_min", g) for g in GUARANTEES]
        specs += [SystemSpec("faust", g, v) for g in GUARANTEES for v in config.faust_variants
                  if not v.is_default]
    return specs


# -- the whole run ------------------------------------------------------------------------


@dataclass
class Results:
    """Everything measured, before it is turned into the report's JSON."""

    config: BenchConfig
    run_id: str
    pinning: Pinning
    versions: dict[str, str]
    machine: dict[str, object]
    started: float
    finished: float = 0.0
    broker: dict[str, list[broker_perf.ToolRun]] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    specs: dict[str, SystemSpec] = field(default_factory=dict)
    latencies: dict[str, list[latency.Latency]] = field(default_factory=dict)
    restore: state.Restore | None = None
    restarts: list[state.Restart] = field(default_factory=list)
    horizon_sizes: list[dict[str, float | None]] = field(default_factory=list)
    profiles: dict[str, profile.Profile] = field(default_factory=dict)
    #: Measurements that raised: the run goes on without them, the report lists them.
    errors: list[str] = field(default_factory=list)
    #: Failures that were measured again successfully (a system that crashed once).
    notes: list[str] = field(default_factory=list)

    def throughput(self, key: str, partitions: int | None = None) -> Spread | None:
        partitions = partitions or self.config.headline_partitions
        return Spread.of([r.throughput_eps for r in self.runs if r.key == key and r.partitions == partitions])


def _attempt(ctx: Context, results: Results, what: str, measure: Callable[[], T],
             retries: int = 0) -> T | None:
    """Run one measurement; if it raises, note it and go on: one failure (a crashed
    worker, a tool that exits early) must not throw away an hour of other figures.
    With ``retries``, a failure is noted and the measurement made again."""
    for attempt in range(retries + 1):
        try:
            return measure()
        except Exception as exc:  # noqa: BLE001 (recorded in the report, then the run goes on)
            message = f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            retrying = attempt < retries
            (results.notes if retrying else results.errors).append(
                message + ("; measured again" if retrying else ""))
            ctx.say(f"[red]{what} failed:[/red] {type(exc).__name__}: {exc}"
                    + (" (measuring again)" if retrying else ""))
    return None


def _broker_phase(ctx: Context, results: Results) -> None:
    config = ctx.config
    topic = f"{ctx.run_id}-kafka-perf"
    asyncio.run(create_topics(config.bootstrap, [topic], config.headline_partitions))
    n = config.broker_records
    for run in range(config.runs):
        top = broker_perf.produce(config.bootstrap, topic, n, ctx.pinning, name="kafka_producer")
        half = broker_perf.produce(config.bootstrap, topic, n // 2, ctx.pinning, name="kafka_producer",
                                   throughput=top.throughput_eps / 2)
        # The ceiling, with the latency measured at half of it like every system's.
        results.broker.setdefault("kafka_producer", []).append(
            broker_perf.ToolRun("kafka_producer", top.throughput_eps, top.events, top.cpu_s_per_million,
                                top.peak_rss_mb, half.p50_ms, half.p99_ms))
        for ms in config.transaction_durations_ms:
            name = f"kafka_producer_tx{ms}ms"
            results.broker.setdefault(name, []).append(
                broker_perf.produce(config.bootstrap, topic, n, ctx.pinning, name=name, transaction_ms=ms))
        results.broker.setdefault("kafka_consumer", []).append(
            broker_perf.consume(config.bootstrap, topic, n, ctx.pinning, name="kafka_consumer"))
        ctx.say(f"broker limit, run {run + 1}: produce {top.throughput_eps:,.0f}/s, "
                f"consume {results.broker['kafka_consumer'][-1].throughput_eps:,.0f}/s")


def _throughput_phase(ctx: Context, results: Results, advance: Callable[[], None]) -> None:
    config = ctx.config
    for partitions in config.partition_counts:
        backlog = preload(ctx, partitions)
        for run in range(config.runs_at(partitions)):
            for spec in systems_for(config, partitions):
                results.specs[spec.key] = spec
                result = _attempt(ctx, results, f"{spec.key} p{partitions} run {run + 1}",
                                  lambda: throughput_run(ctx, spec, backlog, run))  # noqa: B023
                advance()
                if result is None:
                    continue
                results.runs.append(result)
                rate = f"{result.throughput_eps:,.0f} ev/s" if result.throughput_eps else "no steady window"
                mark = "" if result.correct else "  [red]OUTPUT WRONG[/red]"
                if result.exit_code or result.problem:
                    mark += f"  [yellow]exit {result.exit_code}; {result.problem or 'not a clean stop'}[/yellow]"
                ctx.say(f"{spec.key:<28} p{partitions} run {run + 1}: {rate}, "
                        f"{result.events_out:,}/{result.expected_out:,} out"
                        f"{'' if result.drained else ' (NOT drained)'}{mark}")
        asyncio.run(delete_topics_containing(config.bootstrap, f"{ctx.run_id}-p{partitions}"))


def _on_curve(variant: FaustVariant) -> bool:
    """The whole pipeline at its default stream buffer: the latency targets and the
    commit-interval curve (produce to a read_committed read of {prefix}.applied)."""
    return variant.stages == PIPELINE and variant.buffer_maxsize == FAUST_DEFAULT_BUFFER


def _latency_phase(ctx: Context, results: Results, advance: Callable[[], None]) -> None:
    config = ctx.config
    share = config.duplicate_rate  # input records per output event = 1 / (1 - share)
    # The headline six, and the whole pipeline at its default and at each commit interval of
    # the curve.
    curve = [SystemSpec("faust", g, v) for g in GUARANTEES for v in config.faust_variants if _on_curve(v)]
    for run in range(config.runs):
        for spec in headline_systems() + curve:
            spread = results.throughput(spec.key)
            if spread is None:
                continue
            rate = 0.5 * spread.median / (1 - share)
            measured = _attempt(ctx, results, f"{spec.key} latency run {run + 1}",
                                lambda: latency_run(ctx, spec, rate, run), retries=1)  # noqa: B023
            advance()
            if measured is None:
                continue
            results.latencies.setdefault(spec.key, []).append(measured)
            ctx.say(f"{spec.key:<28} latency at {rate:,.0f} rec/s in, run {run + 1}: "
                    f"p50 {measured.p50_ms or float('nan'):,.0f} ms, p99 {measured.p99_ms or float('nan'):,.0f} ms "
                    f"({measured.measured}/{measured.expected} events timed)")


def _state_phase(ctx: Context, results: Results) -> None:
    config = ctx.config
    partitions = config.headline_partitions
    restore_dep = FaustDeployment(SystemSpec("faust", "at_least_once"), f"{ctx.run_id}-restore",
                                  ctx.workdir, config.bootstrap, partitions)
    results.restore = restore = _attempt(
        ctx, results, "cold restore",
        lambda: state.measure_restore(restore_dep, config.restore_keys, ctx.pinning))
    restore_dep.discard_state()
    if restore is not None:
        ctx.say(f"restore of {restore.keys_restored:,}/{config.restore_keys:,} keys: "
                f"{restore.restore_s or float('nan'):.1f} s (ready after {restore.ready_s:.1f} s)")
        faust = results.throughput("faust_alo")
        rates = sorted({round(faust.median)} if faust else set()) + [1000]
        results.horizon_sizes = [row for rate in rates
                                 for row in state.size_by_horizon(restore, rate, config.horizons_s)]
    for guarantee in GUARANTEES:
        dep = FaustDeployment(SystemSpec("faust", guarantee), f"{ctx.run_id}-restart-{guarantee}",
                              ctx.workdir, config.bootstrap, partitions)
        restart = _attempt(ctx, results, f"restart ({guarantee})", lambda: state.measure_restart(
            dep, config.restart_events, ctx.pinning, timeout=config.max_run_s))  # noqa: B023
        dep.discard_state()
        if restart is not None:
            results.restarts.append(restart)
            ctx.say(f"restart after graceful stop, {guarantee}: replayed {restart.replayed:,} of "
                    f"{restart.changelog_records:,} changelog records")


def _profile_phase(ctx: Context, results: Results) -> None:
    config = ctx.config
    if not config.profile_s:
        return
    # Enough input that the worker is still busy when the sampling ends.
    traffic = generate(PROFILE_RECORDS_PER_S * config.profile_s,
                       duplicate_rate=config.duplicate_rate, seed=11, id_prefix=f"{ctx.run_id}-prof")
    backlog = Backlog(config.headline_partitions, "", traffic.records)
    for guarantee in GUARANTEES:
        spec = SystemSpec("faust", guarantee)
        sampled = _attempt(ctx, results, f"profile of {spec.key}",
                           lambda: profile_run(ctx, spec, backlog, seconds=config.profile_s))  # noqa: B023
        if sampled is not None:
            results.profiles[spec.key] = sampled
            ctx.say(f"profiled {spec.key}: busy {sampled.busy_share:.0%} of the time")


def planned_steps(config: BenchConfig) -> int:
    throughput = sum(len(systems_for(config, p)) * config.runs_at(p) for p in config.partition_counts)
    curve = sum(1 for v in config.faust_variants if _on_curve(v))
    return throughput + (len(headline_systems()) + len(GUARANTEES) * curve) * config.runs


def run(config: BenchConfig, say: Report, advance: Callable[[], None]) -> Results:
    """Measure everything ``config`` asks for; ``say`` narrates, ``advance`` ticks progress."""
    from infra import kafka

    info = kafka.status(int(config.bootstrap.rsplit(":", 1)[1]))
    run_id = f"bench-{time.strftime('%m%d%H%M')}-{uuid.uuid4().hex[:4]}"
    with pinned(info.pid if info else None, config.pin_cpus) as pinning:
        ctx = Context(config, run_id, pinning, say)
        results = Results(config, run_id, pinning, machine.versions(), machine.describe(), time.time())
        say(pinning.describe())
        try:
            _attempt(ctx, results, "broker limit", lambda: _broker_phase(ctx, results))
            _throughput_phase(ctx, results, advance)
            _latency_phase(ctx, results, advance)
            _state_phase(ctx, results)
            _profile_phase(ctx, results)
        finally:
            asyncio.run(delete_topics_containing(config.bootstrap, run_id))
    results.finished = time.time()
    return results


def as_dicts(runs: list[RunResult]) -> list[dict[str, object]]:
    return [asdict(r) | {"correct": r.correct} for r in runs]

