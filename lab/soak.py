"""The soak: steady traffic for many minutes, random worker kills and broker bounces, then count.

    faust -A streams_app lab soak --minutes 30 [--rate 200] [--kill-every 120] [--bounce-every 300]
        [--horizon 10m]

One pipeline (its own topics, group, tables and PostgreSQL-free SQLite sink),
two workers, and a feeder that sends ``rate`` payments per second (20 % re-sends,
some malformed) for the whole run. Every ``kill_every`` seconds (randomised) one
worker is SIGKILLed and restarted; on the local 3-broker cluster every
``bounce_every`` seconds one broker is SIGKILLed and restarted 20 s later.
Every :data:`SAMPLE_S` the resident memory of each worker process and the size of
its local table state are sampled. At the end the pipeline drains and
:mod:`lab.checker` counts, as for any lab run: under exactly_once every count
must be 0, and memory must be flat (the report compares the last third of the
run with the first third after warm-up). With ``horizon`` (the workers'
DEDUP_HORIZON) shorter than the run, the dedup state stops growing once ids expire
as fast as they come (the sweep deletes them), so flat memory can be judged; re-sends
then repeat only records of the last quarter of the horizon, which dedup must still
catch (a re-send older than the horizon is applied again, by design).

The report (``soak.md``, ``soak.json``, ``soak.png``) also measures the dedup
sweep (tables/seen_events.py): how many expired ids per second one partition's
sweep deletes, against the 5,000 new ids per second per partition it must keep up
with.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from streams_app.admin import delete_topics_containing, send_records
from streams_app.traffic import generate
from tables.seen_events import SWEEP_BUDGET, SWEEP_INTERVAL, delete_keys, expired_keys

from .apps import chunks
from .checker import check
from .runner import _run_id, create_topics, local_cluster, wait_drained
from .workers import PipelineConfig, WorkerProcess

SAMPLE_S = 10.0
BROKER_DOWN_S = 20.0
#: New ids per second per partition the sweep must keep up with (the issue's figure).
SWEEP_TARGET_IDS_PER_S = 5000


@dataclass
class Sample:
    t: float
    rss_mb: dict[str, float]
    state_mb: dict[str, float]
    #: per worker, its /metrics ``payments_memory_bytes`` parts in MB and its store counts
    #: (streams_app/memory.py): where the RSS is
    memory: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SoakResult:
    guarantee: str
    minutes: float
    rate: int
    events: int
    #: the workers' DEDUP_HORIZON in seconds (None: the default, 7 days)
    horizon_s: float | None = None
    kills: int = 0
    broker_bounces: int = 0
    drained: bool = False
    counts: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    sweep_ids_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def rss_growth_mb(self) -> dict[str, float]:
        """Mean RSS of each worker over the last third minus the first third (after the
        first minute of warm-up): flat memory is near 0."""
        out = {}
        warm = [s for s in self.samples if s.t >= 60.0] or self.samples
        third = max(1, len(warm) // 3)
        for name in sorted({n for s in warm for n in s.rss_mb}):
            first = [s.rss_mb[name] for s in warm[:third] if name in s.rss_mb]
            last = [s.rss_mb[name] for s in warm[-third:] if name in s.rss_mb]
            if first and last:
                out[name] = round(sum(last) / len(last) - sum(first) / len(first), 1)
        return out

    def rss_slope_after_horizon(self) -> dict[str, float]:
        """MB per 10 minutes of each worker's RSS (least squares) over the samples from two
        minutes past the dedup horizon on, when the dedup state has stopped growing: what a
        leak would show. Empty without a horizon shorter than the run."""
        if self.horizon_s is None:
            return {}
        late = [s for s in self.samples if s.t >= self.horizon_s + 120.0]
        out = {}
        for name in sorted({n for s in late for n in s.rss_mb}):
            slope = _per_10_min([(s.t, s.rss_mb[name]) for s in late if name in s.rss_mb])
            if slope is not None:
                out[name] = slope
        return out

    def memory_table(self) -> dict[str, dict[str, tuple[float, float, float | None]]]:
        """Per worker and memory part: its value at the first sample past the first minute,
        at the last sample, and its slope per 10 minutes after the horizon (as
        :meth:`rss_slope_after_horizon`; None without one)."""
        out: dict[str, dict[str, tuple[float, float, float | None]]] = {}
        warm = [s for s in self.samples if s.t >= 60.0]
        late = [s for s in warm if self.horizon_s is not None and s.t >= self.horizon_s + 120.0]
        for name in sorted({n for s in warm for n in s.memory}):
            parts = sorted({p for s in warm for p in s.memory.get(name, {})})
            rows = {}
            for part in parts:
                values = [s.memory[name][part] for s in warm if part in s.memory.get(name, {})]
                slope = _per_10_min([(s.t, s.memory[name][part]) for s in late
                                     if part in s.memory.get(name, {})])
                rows[part] = (values[0], values[-1], slope)
            out[name] = rows
        return out

    @property
    def exact(self) -> bool:
        keys = ("duplicate_charges", "lost", "output_duplicates", "output_missing", "balance_mismatches",
                "open_transactions")
        return self.drained and all(self.counts.get(k, 1) == 0 for k in keys)


def run_soak(*, minutes: float, rate: int, kill_every: float, bounce_every: float, bootstrap: str,
             guarantee: str = "exactly_once", seed: int = 1, workdir: Path = Path("lab-runs"),
             horizon_s: float | None = None) -> SoakResult:
    run_id = _run_id(guarantee, "idempotent", "soak", seed)
    config = PipelineConfig(run_id=run_id, workdir=workdir / run_id, bootstrap=bootstrap, guarantee=guarantee)
    events = int(minutes * 60 * rate)
    window = None
    if horizon_s is not None:
        config.extra_env["DEDUP_HORIZON"] = f"{horizon_s:g}s"
        window = max(1, int(rate * horizon_s / 4))  # re-sends at most a quarter of the horizon old
    traffic = generate(events, duplicate_rate=0.2, bad_rate=0.01, seed=seed, id_prefix=run_id,
                       resend_window=window)
    result = SoakResult(guarantee, minutes, rate, events, horizon_s)
    rng = random.Random(seed)
    cluster = local_cluster(bootstrap)
    create_topics(config)
    workers = [WorkerProcess(config, "w1"), WorkerProcess(config, "w2")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.wait_ready()
    started = time.monotonic()
    next_kill = rng.uniform(0.5, 1.5) * kill_every
    next_bounce = rng.uniform(0.5, 1.5) * bounce_every
    next_sample = 0.0
    bounced: tuple[int, float] | None = None
    try:
        for chunk in chunks(traffic.records, max(1, int(minutes * 60))):  # one chunk a second
            second = time.monotonic()
            _send(config, chunk)
            now = time.monotonic() - started
            if now >= next_sample:
                result.samples.append(_sample(now, workers, config))
                next_sample += SAMPLE_S
            if now >= next_kill:
                victim = rng.choice(workers)
                victim.kill()
                victim.start()
                result.kills += 1
                next_kill = now + rng.uniform(0.5, 1.5) * kill_every
            if cluster is not None and bounced is None and now >= next_bounce:
                node = rng.choice(list(cluster.node_ids))
                cluster.kill(node)
                bounced = (node, now)
                result.broker_bounces += 1
            if cluster is not None and bounced is not None and now - bounced[1] >= BROKER_DOWN_S:
                cluster.restart(bounced[0])
                bounced = None
                next_bounce = now + rng.uniform(0.5, 1.5) * bounce_every
            time.sleep(max(0.0, 1.0 - (time.monotonic() - second)))
        if cluster is not None and bounced is not None:
            cluster.restart(bounced[0])
        result.drained = wait_drained(config, workers, 600.0, result.notes)
        result.samples.append(_sample(time.monotonic() - started, workers, config))
    finally:
        for worker in workers:
            try:
                worker.stop()
            except TimeoutError as exc:
                result.notes.append(str(exc).splitlines()[0])
    result.counts = asyncio.run(check(config, traffic)).as_dict()
    asyncio.run(delete_topics_containing(bootstrap, run_id))
    result.sweep_ids_per_s = measure_sweep()
    return result


def measure_sweep(ids: int = 200_000, budget: int | None = None) -> float:
    """Expired ids deleted per second by one partition's sweep (tables/seen_events.py),
    on a RocksDB store holding ``ids`` expired ids, one tick's budget at a time."""
    import rocksdict

    budget = budget or SWEEP_BUDGET
    path = Path(tempfile.mkdtemp(prefix="sweep-"))
    try:
        db = rocksdict.Rdict(str(path / "seen-events-0.db"), options=rocksdict.Options(raw_mode=True))
        batch = rocksdict.WriteBatch(raw_mode=True)
        for i in range(ids):
            batch.put(json.dumps(f"evt-{i:09d}").encode(), b"1000.0")
        db.write(batch)
        deleted, after, started = 0, None, time.perf_counter()
        while True:
            keys, after = expired_keys(db, now=2_000_000_000.0, budget=budget, after=after,
                                       horizon=1.0)  # every row expired
            delete_keys(db, keys)
            deleted += len(keys)
            if after is None:
                break
        seconds = time.perf_counter() - started
        db.close()
        return deleted / seconds if seconds > 0 else 0.0
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _memory_section(result: SoakResult) -> list[str]:
    """Where each worker's memory is (its /metrics parts, streams_app/memory.py)."""
    table = result.memory_table()
    if not table:
        return []
    lines = ["### Where the memory is", "",
             "Each worker's own account (`payments_memory_bytes`, `payments_table_stores` of its "
             "/metrics): MB at the first sample past the first minute, at the last, and per 10 "
             "minutes after the horizon (a restart starts a process again: its parts restart too).", ""]
    for name, rows in table.items():
        lines += [f"| {name} | first | last | per 10 min after the horizon |", "|---|---:|---:|---:|"]
        lines += [f"| {part} | {first:,.1f} | {last:,.1f} | "
                  f"{'' if slope is None else f'{slope:+.1f}'} |" for part, (first, last, slope) in rows.items()]
        lines.append("")
    return lines


def _per_10_min(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of ``(seconds, value)`` points, per 10 minutes; None for
    fewer than 10 points."""
    if len(points) < 10:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return round(sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 600.0, 1)


def _horizon(seconds: float | None) -> str:
    if seconds is None:
        return "7 days (the default)"
    return f"{seconds / 60:g} min (re-sends at most a quarter of it old)"


def _send(config: PipelineConfig, records: list) -> None:
    asyncio.run(send_records(config.bootstrap, config.topic("raw"), records))


def _sample(t: float, workers: list[WorkerProcess], config: PipelineConfig) -> Sample:
    rss, state, memory = {}, {}, {}
    for worker in workers:
        if worker.running:
            try:
                proc = psutil.Process(worker.process.pid)
                rss[worker.name] = round(sum(p.memory_info().rss for p in [proc, *proc.children(True)]) / 2**20, 1)
            except psutil.Error:
                pass
            memory[worker.name] = scrape_memory(worker.url)
        data = config.workdir / f"{worker.name}-data"
        state[worker.name] = round(sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) / 2**20, 2) \
            if data.exists() else 0.0
    return Sample(round(t, 1), rss, state, {name: parts for name, parts in memory.items() if parts})


#: ``payments_memory_bytes{part="rss"} 1.2e+08`` and ``payments_table_stores{held="tables"} 24.0``
_MEMORY_LINE = re.compile(r'^payments_(memory_bytes|table_stores)\{(?:part|held)="([a-z_]+)"\} (\S+)$', re.M)


def scrape_memory(url: str) -> dict[str, float]:
    """A worker's memory parts from its /metrics, in MB (store counts as they are); empty
    when it does not answer (starting, restoring with its web server busy)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=3.0) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return {}
    out = {}
    for kind, part, value in _MEMORY_LINE.findall(text):
        if kind == "memory_bytes":
            out[part] = round(float(value) / 2**20, 1)
        else:
            out[f"stores_{part}"] = float(value)
    return out


def write_report(result: SoakResult, out: Path) -> list[Path]:
    """soak.md, soak.json and soak.png (RSS and local state over time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "soak.md", out / "soak.json", out / "soak.png"
    slope = result.rss_slope_after_horizon()
    data = asdict(result) | {"rss_growth_mb": result.rss_growth_mb(),
                             "rss_mb_per_10_min_after_horizon": slope,
                             "exact": result.exact}
    js.write_text(json.dumps(data, indent=1))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name in sorted({n for s in result.samples for n in s.rss_mb}):
        points = [(s.t / 60, s.rss_mb[name]) for s in result.samples if name in s.rss_mb]
        ax1.plot(*zip(*points), label=f"{name} RSS")
        ax2.plot([s.t / 60 for s in result.samples], [s.state_mb.get(name, 0) for s in result.samples],
                 label=f"{name} local tables")
    ax1.set_ylabel("MB")
    ax2.set_ylabel("MB")
    ax2.set_xlabel("minutes")
    for ax in (ax1, ax2):
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"soak: {result.guarantee}, {result.rate} ev/s, {result.kills} worker kills, "
                 f"{result.broker_bounces} broker bounces")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    configured = SWEEP_BUDGET / SWEEP_INTERVAL
    keeps_up = min(result.sweep_ids_per_s, configured) >= SWEEP_TARGET_IDS_PER_S
    counts = result.counts
    md.write_text("\n".join([
        "# Soak", "",
        f"{result.minutes:g} minutes of {result.rate} payments/s ({result.events:,} records, 20 % re-sends, "
        f"1 % malformed) under **{result.guarantee}**, two workers, idempotent sink, dedup horizon "
        f"{_horizon(result.horizon_s)}; "
        f"{result.kills} worker SIGKILLs and {result.broker_bounces} broker bounces (SIGKILL, restart "
        f"{BROKER_DOWN_S:.0f} s later).", "",
        f"**{'Exact' if result.exact else 'NOT exact'}**: drained {result.drained}; duplicate charges "
        f"{counts.get('duplicate_charges')}, lost {counts.get('lost')}, output duplicates "
        f"{counts.get('output_duplicates')}, missing {counts.get('output_missing')}, balance mismatches "
        f"{counts.get('balance_mismatches')}, open transactions {counts.get('open_transactions')}.", "",
        "## Memory", "",
        "RSS of each worker (with its children), sampled every 10 s; growth = mean of the last third "
        "minus the first third after a minute of warm-up: "
        + ", ".join(f"{k} {v:+.1f} MB" for k, v in result.rss_growth_mb().items()) + ". "
        + ("Once the dedup state stopped growing (from two minutes past the horizon on), RSS moved by "
           + ", ".join(f"{k} {v:+.1f} MB" for k, v in slope.items())
           + " per 10 minutes (least squares; a restart restores the state and can step it up)."
           if slope else ""), "",
        "![RSS and local state](soak.png)", "",
        *_memory_section(result),
        "## Dedup sweep", "",
        f"One partition's sweep scans and deletes **{result.sweep_ids_per_s:,.0f} expired ids/s** of "
        f"CPU (200,000 ids, one tick's budget at a time, this machine); it is configured to look at "
        f"{SWEEP_BUDGET:,} rows per partition every {SWEEP_INTERVAL:g} s ({configured:,.0f} rows/s). "
        f"Target: {SWEEP_TARGET_IDS_PER_S:,} new ids/s per partition: "
        f"{'met' if keeps_up else 'MISSED'} (tables/seen_events.py).", "",
        *(["## Notes", "", *[f"- {n}" for n in result.notes], ""] if result.notes else []),
    ]))
    return [md, js, png]
