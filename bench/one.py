"""``python -m bench one SYSTEM [SYSTEM ...]``: a few systems on one backlog, for a quick
look while working on speed (nothing is written to reports/).

Each SYSTEM is a report key without a variant (``faust_alo``, ``faust_eos``, ``quix_alo``,
``raw_eos``, ``faust_min_alo``, ``faust_alo_pipeline``...), or ``faust_eos@0.1`` for a commit interval. The same throughput run as ``bench run`` (same backlog
generator, pinning, steady window, exactness check); ``--profile`` also samples the
first system with py-spy for ``--profile`` seconds and prints the summary.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from .affinity import pinned
from .config import APP_DEFAULT, GUARANTEES, PIPELINE, SAME_WORK, SHORT, BenchConfig, FaustVariant
from streams_app.admin import delete_topics_containing
from .runs import Backlog, Context, preload, profile_run, throughput_run
from .systems import SystemSpec


def spec_for(key: str) -> SystemSpec:
    """``faust_min_eos`` -> SystemSpec("faust_min", "exactly_once"); ``faust_eos``: the dedup
    stage (the same work as the others), ``faust_eos_pipeline`` the whole pipeline;
    ``faust_eos@0.1``: at commit interval 0.1 s; ``faust_alo_w2``: two worker processes."""
    key, _, interval = key.partition("@")
    stages, workers = SAME_WORK, 1
    if key.startswith("faust_") and key.rpartition("_w")[2].isdigit():
        key, _, count = key.rpartition("_w")
        workers = int(count)
    if key.endswith("_pipeline") and key.startswith("faust_"):
        key, stages = key.removesuffix("_pipeline"), PIPELINE
    kind, _, short = key.rpartition("_")
    by_short = {v: k for k, v in SHORT.items()}
    if short not in by_short or kind not in ("raw", "quix", "faust", "faust_min"):
        raise SystemExit(f"unknown system {key!r}: use e.g. faust_alo, quix_eos, raw_alo, faust_min_eos")
    variant = FaustVariant(commit_interval=interval or APP_DEFAULT, stages=stages, workers=workers)
    return SystemSpec(kind, by_short[short], variant)  # type: ignore[arg-type]


def run_one(config: BenchConfig, keys: list[str], partitions: int, profile_s: int,
            say: Callable[[str], None] = print) -> None:
    from infra import kafka

    specs = [spec_for(k) for k in keys]
    info = kafka.status(int(config.bootstrap.rsplit(":", 1)[1]))
    run_id = f"one-{time.strftime('%m%d%H%M')}-{uuid.uuid4().hex[:4]}"
    with pinned(info.pid if info else None, config.pin_cpus) as pinning:
        ctx = Context(config, run_id, pinning, say)
        try:
            backlog = preload(ctx, partitions)
            for spec in specs:
                r = throughput_run(ctx, spec, backlog, 0)
                cpu = f"{r.cpu_s_per_million / 1000:.3f} ms/event" if r.cpu_s_per_million else "-"
                rate = f"{r.throughput_eps:,.0f} ev/s" if r.throughput_eps else "no steady window"
                say(f"{spec.key:<16} {rate:>14}  cpu {cpu}  rss {r.peak_rss_mb:,.0f} MB  "
                    f"{r.events_out:,}/{r.expected_out:,} out  correct={r.correct}  "
                    f"{r.seconds:.0f} s{'  ' + r.problem if r.problem else ''}")
            if profile_s:
                from .runner import PROFILE_RECORDS_PER_S
                from streams_app.traffic import generate

                traffic = generate(PROFILE_RECORDS_PER_S * profile_s * 4, duplicate_rate=config.duplicate_rate,
                                   seed=11, id_prefix=f"{run_id}-prof")
                sampled = profile_run(ctx, specs[0], Backlog(partitions, "", traffic.records), profile_s)
                say(f"profile of {specs[0].key}: {sampled.samples} samples, busy {sampled.busy_share:.0%}")
                for name, share in sampled.by_thread + sampled.by_origin + sampled.hot:
                    say(f"  {share:6.1%}  {name}")
        finally:
            asyncio.run(delete_topics_containing(config.bootstrap, run_id))


__all__ = ["GUARANTEES", "run_one", "spec_for"]
