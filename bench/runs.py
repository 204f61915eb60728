"""One measurement: a system drains a backlog, runs at a fixed rate, or is profiled.

Each function deploys a fresh instance (:mod:`bench.systems`), feeds it, watches
it from the broker, stops it with SIGTERM and deletes its state, keeping its
log. :mod:`bench.runner` decides which measurements to make.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from streams_app.admin import send_records
from streams_app.traffic import generate

from . import latency, profile
from .affinity import Pinning
from .config import BenchConfig
from .kafka_io import (
    OutputCount,
    Watermarks,
    committed_total,
    count_output,
    create_topics,
)
from .metrics import Sample, TreeProbe, steady
from .systems import Deployment, SystemSpec

Report = Callable[[str], None]
Records = list[tuple[bytes | None, bytes]]


@dataclass
class Backlog:
    """The input of one partition count: generated once, preloaded once."""

    partitions: int
    topic: str
    records: Records
    _unique_prefix: dict[int, int] = field(default_factory=dict)

    def unique_in_first(self, n: int) -> int:
        """Distinct event ids among the first ``n`` records: the expected output
        (the generator keys every valid record, and a re-send, by its event id)."""
        if n not in self._unique_prefix:
            self._unique_prefix[n] = len({key for key, _ in self.records[:n]})
        return self._unique_prefix[n]


@dataclass(frozen=True)
class RunResult:
    """One system draining one backlog once."""

    key: str
    partitions: int
    run: int
    events_in: int
    events_out: int
    distinct_out: int
    expected_out: int
    drained: bool
    throughput_eps: float | None
    cpu_s_per_million: float | None
    peak_rss_mb: float
    window_s: float | None
    #: From the process start to its first output: start-up, group join, restore.
    startup_s: float | None
    seconds: float
    stop_s: float
    #: The process's exit status after SIGTERM (0 for a clean stop).
    exit_code: int | None
    #: What went wrong with the process, if anything: it crashed mid-run, or ignored SIGTERM.
    problem: str | None

    @property
    def correct(self) -> bool:
        """No duplicate, and a drained run output exactly its input's unique events."""
        no_duplicates = self.events_out == self.distinct_out
        return no_duplicates and (not self.drained or self.events_out == self.expected_out)


@dataclass
class Context:
    """What every measurement of one benchmark run shares."""

    config: BenchConfig
    run_id: str
    pinning: Pinning
    say: Report

    @property
    def workdir(self) -> Path:
        return self.config.workdir / self.run_id


# -- throughput --------------------------------------------------------------------------


async def _sample(ctx: Context, deployment: Deployment, expected: int) -> tuple[list[Sample], bool]:
    """Sample HWs, CPU and RSS every interval until the output is complete and has not
    moved for two samples (drained), until ``max_run_s`` or until the process exits
    by itself (not drained)."""
    config = ctx.config
    probe = TreeProbe(*deployment.pids)
    samples: list[Sample] = []
    started = time.monotonic()
    async with Watermarks(config.bootstrap) as marks:
        while True:
            tick = time.monotonic()
            output = await marks.total(deployment.output_topic)
            first_hop = (output if deployment.first_hop_topic == deployment.output_topic
                         else await marks.total(deployment.first_hop_topic))
            cpu, rss = probe.read()
            now = time.monotonic() - started
            samples.append(Sample(now, output, first_hop, cpu, rss))
            if output >= expected and len(samples) >= 3 and samples[-3].output == output:
                return samples, True
            if now > config.max_run_s or not deployment.alive():
                return samples, False
            await asyncio.sleep(max(0.0, config.sample_interval_s - (time.monotonic() - tick)))


def throughput_run(ctx: Context, spec: SystemSpec, backlog: Backlog, run: int) -> RunResult:
    """One system drains the backlog (the Faust ones: a copy of its first faust_records) once."""
    config = ctx.config
    run_id = f"{ctx.run_id}-{spec.key}-p{backlog.partitions}-r{run}"
    deployment = spec.deploy(run_id, ctx.workdir, config.bootstrap, backlog.partitions,
                             shared_input=backlog.topic if spec.reads_backlog else None)
    asyncio.run(deployment.prepare())
    given = len(backlog.records)
    if deployment.owns_input:
        given = min(given, config.faust_records or given)
        asyncio.run(send_records(config.bootstrap, deployment.input_topic, backlog.records[:given]))
    expected = backlog.unique_in_first(given)
    started = time.monotonic()
    deployment.start(ctx.pinning)
    try:
        samples, drained = asyncio.run(_sample(ctx, deployment, expected))
        crashed = None if deployment.alive() else f"exited by itself with {deployment.exit_code}"
    finally:
        stop_s = deployment.stop()
    seconds = time.monotonic() - started
    count: OutputCount = asyncio.run(count_output(config.bootstrap, deployment.output_topic))
    events_in = asyncio.run(committed_total(config.bootstrap, deployment.group, deployment.input_topic))
    deployment.discard_state()
    window = steady(samples, count.records / count.high_watermark if count.high_watermark else 1.0)
    return RunResult(
        key=spec.key, partitions=backlog.partitions, run=run, events_in=events_in,
        events_out=count.records, distinct_out=count.distinct_ids, expected_out=expected,
        drained=drained and count.records >= expected,
        throughput_eps=window.throughput_eps if window else None,
        cpu_s_per_million=window.cpu_s_per_million if window else None,
        peak_rss_mb=max(s.rss for s in samples) / 2**20, window_s=window.window_s if window else None,
        startup_s=next((s.t for s in samples if s.first_hop > 0), None), seconds=seconds, stop_s=stop_s,
        exit_code=deployment.exit_code, problem=crashed or deployment.stop_problem,
    )


def preload(ctx: Context, partitions: int) -> Backlog:
    """Generate the backlog (streams_app.traffic.generate, no malformed records) and send
    it once (streams_app.admin.send_records) into a fresh topic of ``partitions``."""
    config = ctx.config
    traffic = generate(config.records, duplicate_rate=config.duplicate_rate, bad_rate=0.0,
                       seed=config.seed, id_prefix=f"{ctx.run_id}-p{partitions}")
    backlog = Backlog(partitions, f"{ctx.run_id}-p{partitions}.backlog", traffic.records)
    asyncio.run(create_topics(config.bootstrap, [backlog.topic], partitions))
    started = time.monotonic()
    asyncio.run(send_records(config.bootstrap, backlog.topic, backlog.records))
    ctx.say(f"preloaded {len(backlog.records):,} records ({len(traffic.unique_events):,} unique) "
            f"into {partitions} partition(s) in {time.monotonic() - started:.0f} s")
    return backlog


# -- latency -----------------------------------------------------------------------------


def latency_run(ctx: Context, spec: SystemSpec, rate: float, run: int) -> latency.Latency:
    """A fresh instance on an empty input topic, fed at ``rate`` records/s while it runs."""
    config = ctx.config
    run_id = f"{ctx.run_id}-lat-{spec.key}-r{run}"
    deployment = spec.deploy(run_id, ctx.workdir, config.bootstrap, config.headline_partitions)
    asyncio.run(deployment.prepare())
    count = int(rate * (config.latency_warmup_s + config.latency_duration_s)) + 1
    traffic = generate(count, duplicate_rate=config.duplicate_rate, seed=7, id_prefix=run_id)
    priming = generate(config.headline_partitions * 2, seed=8, id_prefix=f"{run_id}-prime").records
    deployment.start(ctx.pinning)
    try:
        return asyncio.run(latency.measure(
            config.bootstrap, deployment.input_topic, deployment.output_topic, rate=rate,
            warmup_s=config.latency_warmup_s, duration_s=config.latency_duration_s,
            records=traffic.records, priming=priming, alive=deployment.alive,
        ))
    finally:
        deployment.stop()
        deployment.discard_state()


# -- profile -----------------------------------------------------------------------------


def profile_run(ctx: Context, spec: SystemSpec, backlog: Backlog, seconds: int) -> profile.Profile:
    """Sample a Faust worker with py-spy while it drains ``backlog``, from its first
    output on: on a backlog the pipeline's stages run largely one after another
    (ingest first), so this is the dedup stage at work, with apply and sink."""
    config = ctx.config
    run_id = f"{ctx.run_id}-prof-{spec.key}"
    deployment = spec.deploy(run_id, ctx.workdir, config.bootstrap, backlog.partitions)
    asyncio.run(deployment.prepare())
    asyncio.run(send_records(config.bootstrap, deployment.input_topic, backlog.records))
    deployment.start(ctx.pinning)
    try:
        asyncio.run(_wait_for_output(config.bootstrap, deployment.output_topic, config.max_run_s))
        return profile.record(deployment.pid, seconds, deployment.workdir / "py-spy-collapsed.txt")
    finally:
        deployment.stop()
        deployment.discard_state()


async def _wait_for_output(bootstrap: str, topic: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with Watermarks(bootstrap) as marks:
        while await marks.total(topic) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no output on {topic} after {timeout} s")
            await asyncio.sleep(0.5)
