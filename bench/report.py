"""Turn :class:`bench.runner.Results` into reports/bench.json, bench.md and bench.png.

The JSON is the contract (``make bench`` and CI read it); the Markdown
(:mod:`bench.markdown`) and the chart (:mod:`bench.chart`) are views of the
same document, built from the JSON only.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .chart import plot
from .config import BenchConfig
from .markdown import markdown
from .metrics import Spread
from .runner import Results, RunResult, as_dicts, headline_systems

Doc = dict[str, Any]

#: name -> (numerator, denominator), throughput medians at the headline partition count.
RATIOS = {
    "faust_alo_over_raw_alo": ("faust_alo", "raw_alo"),
    "faust_eos_over_faust_alo": ("faust_eos", "faust_alo"),
    "faust_alo_over_quix_alo": ("faust_alo", "quix_alo"),
    "faust_eos_over_quix_eos": ("faust_eos", "quix_eos"),
    "faust_eos_over_raw_eos": ("faust_eos", "raw_eos"),
    "faust_min_alo_over_raw_alo": ("faust_min_alo", "raw_alo"),
    "faust_min_eos_over_raw_eos": ("faust_min_eos", "raw_eos"),
    "faust_alo_over_faust_min_alo": ("faust_alo", "faust_min_alo"),
    "faust_eos_over_faust_min_eos": ("faust_eos", "faust_min_eos"),
    "faust_min_alo_over_quix_alo": ("faust_min_alo", "quix_alo"),
    "faust_min_eos_over_quix_eos": ("faust_min_eos", "quix_eos"),
    "raw_eos_over_raw_alo": ("raw_eos", "raw_alo"),
    "quix_eos_over_quix_alo": ("quix_eos", "quix_alo"),
    "faust_eos_pipeline_ci0.1_over_faust_alo_pipeline_ci0.1": ("faust_eos_pipeline_ci0.1", "faust_alo_pipeline_ci0.1"),
    "faust_alo_pipeline_over_faust_alo": ("faust_alo_pipeline", "faust_alo"),
    "faust_eos_pipeline_over_faust_eos": ("faust_eos_pipeline", "faust_eos"),
    "faust_alo_buf131072_over_faust_alo": ("faust_alo_buf131072", "faust_alo"),
    "faust_alo_w2_over_faust_alo": ("faust_alo_w2", "faust_alo"),
    "faust_eos_w2_over_faust_eos": ("faust_eos_w2", "faust_eos"),
    "raw_alo_over_kafka_consumer": ("raw_alo", "kafka_consumer"),
}
#: The same, for CPU-seconds per million events (above 1: the numerator costs more).
CPU_RATIOS = {
    "cpu_faust_alo_over_raw_alo": ("faust_alo", "raw_alo"),
    "cpu_faust_min_alo_over_raw_alo": ("faust_min_alo", "raw_alo"),
    "cpu_faust_alo_over_quix_alo": ("faust_alo", "quix_alo"),
    "cpu_faust_eos_over_faust_alo": ("faust_eos", "faust_alo"),
}
RESTORE_TARGET_KEYS = 1_000_000
RESTORE_TARGET_S = 60.0


def _range(spread: Spread | None) -> list[float] | None:
    return None if spread is None else [spread.low, spread.high]


def _median(spread: Spread | None) -> float | None:
    return None if spread is None else spread.median


def _figures(runs: list[RunResult]) -> Doc:
    """Median and range of each figure over ``runs``, plus their input and output counts."""
    doc: Doc = {}
    for name in ("throughput_eps", "cpu_s_per_million", "peak_rss_mb"):
        spread = Spread.of([getattr(r, name) for r in runs])
        doc[name], doc[f"{name}_range"] = _median(spread), _range(spread)
    doc.update(
        runs=len(runs),
        events_in=round(statistics.median(r.events_in for r in runs)),
        events_out=round(statistics.median(r.events_out for r in runs)),
        expected_out=round(statistics.median(r.expected_out for r in runs)),
        drained=all(r.drained for r in runs),
        correct=all(r.correct for r in runs),
    )
    return doc


def _system(results: Results, key: str) -> Doc:
    spec = results.specs[key]
    headline = results.config.headline_partitions
    by_partitions = {p: [r for r in results.runs if r.key == key and r.partitions == p]
                     for p in results.config.partition_counts}
    entry: Doc = {"label": spec.label, "system": spec.kind, "guarantee": spec.guarantee,
                  "settings": spec.settings, "partitions": headline}
    entry.update(_figures(by_partitions[headline]))
    timed = results.latencies.get(key, [])
    for name in ("p50_ms", "p99_ms"):
        spread = Spread.of([getattr(t, name) for t in timed])
        entry[name], entry[f"{name}_range"] = _median(spread), _range(spread)
    entry["latency_input_rate"] = timed[0].rate_in if timed else None
    entry["run_details"] = as_dicts([r for r in results.runs if r.key == key])
    entry["by_partitions"] = {str(p): _figures(runs) for p, runs in by_partitions.items() if runs}
    return entry


def _broker(results: Results) -> Doc:
    doc: Doc = {}
    for name, runs in results.broker.items():
        entry: Doc = {"runs": len(runs), "partitions": results.config.headline_partitions}
        for figure in ("throughput_eps", "cpu_s_per_million", "peak_rss_mb", "p50_ms", "p99_ms"):
            spread = Spread.of([getattr(r, figure) for r in runs])
            entry[figure], entry[f"{figure}_range"] = _median(spread), _range(spread)
        entry["events_in"] = entry["events_out"] = runs[0].events
        doc[name] = entry
    return doc


def _ratios(systems: Doc, broker: Doc) -> Doc:
    every = {**systems, **broker}

    def ratio(a: str, b: str, figure: str) -> float | None:
        x, y = every.get(a, {}).get(figure), every.get(b, {}).get(figure)
        return None if x is None or not y else x / y

    doc = {name: ratio(a, b, "throughput_eps") for name, (a, b) in RATIOS.items()}
    doc.update({name: ratio(a, b, "cpu_s_per_million") for name, (a, b) in CPU_RATIOS.items()})
    return doc


def _target(name: str, measured: float | None, threshold: float, higher_is_better: bool = True,
            detail: str = "") -> Doc:
    if measured is None:
        return {"target": name, "measured": None, "threshold": threshold, "met": None,
                "margin": None, "detail": detail or "not measured"}
    margin = measured / threshold - 1 if higher_is_better else threshold / measured - 1
    return {"target": name, "measured": measured, "threshold": threshold, "met": margin >= 0,
            "margin": margin, "detail": detail}


def _split(ratios: Doc, stock: str, pipeline: str) -> str:
    """What limits a Faust throughput ratio, split by the minimal stock Faust agent
    (bench/faust_minimal.py): Faust itself, then this project's pipeline on top of it."""
    parts = []
    if ratios.get(stock) is not None:
        parts.append(f"Faust itself (one stock agent, one hop): {ratios[stock]:.0%}")
    if ratios.get(pipeline) is not None:
        parts.append(f"this project's stage: {ratios[pipeline]:.0%} of that agent")
    return "; ".join(parts)


#: Issue 13: end-to-end p99 at half the system's own throughput.
LATENCY_TARGET_MS = {"exactly_once": 1000, "at_least_once": 250}


def _targets(results: Results, ratios: Doc) -> list[Doc]:
    interval = ratios.get("faust_eos_pipeline_ci0.1_over_faust_alo_pipeline_ci0.1")
    targets = [
        _target("Faust at_least_once >= 50 % of the raw loop", ratios["faust_alo_over_raw_alo"], 0.5,
                detail=_split(ratios, "faust_min_alo_over_raw_alo", "faust_alo_over_faust_min_alo")),
        _target("Faust exactly_once >= 80 % of Faust at_least_once (default commit interval)",
                ratios["faust_eos_over_faust_alo"], 0.8,
                detail="" if interval is None else f"the whole pipeline at commit interval 0.1 s: {interval:.0%}"),
        _target("Faust >= Quix Streams, at_least_once", ratios["faust_alo_over_quix_alo"], 1.0,
                detail=_split(ratios, "faust_min_alo_over_quix_alo", "faust_alo_over_faust_min_alo")),
        _target("Faust >= Quix Streams, exactly_once", ratios["faust_eos_over_quix_eos"], 1.0,
                detail=_split(ratios, "faust_min_eos_over_quix_eos", "faust_eos_over_faust_min_eos")),
    ]
    for key, limit in (("faust_eos_pipeline", LATENCY_TARGET_MS["exactly_once"]),
                       ("faust_alo_pipeline", LATENCY_TARGET_MS["at_least_once"])):
        timed = [t.p99_ms for t in results.latencies.get(key, []) if t.p99_ms is not None]
        p99 = statistics.median(timed) if timed else None
        spec = results.specs.get(key)
        targets.append(_target(
            f"end-to-end p99 <= {limit:,} ms at half the pipeline's throughput, {key} (the settings `make run` uses)",
            p99, limit, higher_is_better=False,
            detail="" if spec is None else f"commit interval {spec.commit_interval_s:g} s; produce to a "
                                           "read_committed read of {prefix}.applied"))
    for restart in results.restarts:
        share = restart.replayed / restart.changelog_records if restart.changelog_records else None
        targets.append({
            "target": f"restart after a graceful stop does not replay the whole changelog ({restart.guarantee})",
            "measured": share, "threshold": 1.0,
            "met": None if share is None else not restart.replayed_whole_changelog,
            "margin": None if share is None else 1 - share,
            "detail": (f"replayed {restart.replayed:,} of {restart.changelog_records:,} changelog records"
                       + (f"; the stop before it was NOT graceful: {restart.first_stop_problem}"
                          if restart.first_stop_problem else "")),
        })
    restore = results.restore
    if restore and restore.restore_s is not None:
        scaled = restore.restore_s * RESTORE_TARGET_KEYS / restore.keys_written
        how = ("measured" if restore.keys_written == RESTORE_TARGET_KEYS
               else f"extrapolated linearly from {restore.keys_written:,} keys in {restore.restore_s:.1f} s")
        targets.append(_target(f"{RESTORE_TARGET_KEYS:,}-key dedup table restored in <= 60 s", scaled,
                               RESTORE_TARGET_S, higher_is_better=False, detail=how))
    return targets


def _runs_note(config: BenchConfig) -> str:
    if config.runs == 1:
        return "ONE run per figure (quick mode), so there are no ranges; use --full for medians of 3 runs"
    note = f"medians of {config.runs} runs (min–max ranges) at {config.headline_partitions} partitions"
    others = [p for p in config.partition_counts if p != config.headline_partitions]
    if others and config.scaling_runs != config.runs:
        note += f", {config.scaling_runs} run(s) at {', '.join(map(str, others))} partitions"
    return note


def document(results: Results) -> Doc:
    """The JSON report: every figure, how it was obtained, and what it was obtained on."""
    config = results.config
    keys = [s.key for s in headline_systems()] + [k for k in results.specs if k not in
                                                   {s.key for s in headline_systems()}]
    systems = {key: _system(results, key) for key in keys if key in results.specs}
    broker = _broker(results)
    ratios = _ratios(systems, broker)
    restore = results.restore
    return {
        "title": "What exactly_once costs, and whether Faust is fast enough",
        "mode": config.mode,
        "runs": config.runs,
        "runs_note": _runs_note(config),
        "run_id": results.run_id,
        "started_at": datetime.fromtimestamp(results.started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(results.finished - results.started),
        "machine": {**results.machine, "pinning": {
            "enabled": results.pinning.enabled, "broker_cpus": list(results.pinning.broker_cpus),
            "sut_cpus": list(results.pinning.sut_cpus), "description": results.pinning.describe()}},
        "versions": results.versions,
        "config": {
            "records": config.records, "duplicate_rate": config.duplicate_rate,
            "partition_counts": list(config.partition_counts),
            "headline_partitions": config.headline_partitions,
            "faust_records": config.faust_records, "runs_at_other_partition_counts": config.scaling_runs,
            "latency_warmup_s": config.latency_warmup_s, "latency_duration_s": config.latency_duration_s,
            "broker_records": config.broker_records, "restore_keys": config.restore_keys,
            "restart_events": config.restart_events,
        },
        "method": METHOD,
        "broker": broker,
        "systems": systems,
        "ratios": ratios,
        "targets": _targets(results, ratios),
        "state": {
            "restore": None if restore is None else vars(restore),
            "restarts": [vars(r) | {"replayed_whole_changelog": r.replayed_whole_changelog}
                         for r in results.restarts],
            "size_by_horizon": results.horizon_sizes,
        },
        "profiles": {k: vars(p) for k, p in results.profiles.items()},
        "all_correct": all(r.correct for r in results.runs),
        "errors": results.errors,
        "notes": results.notes,
    }


METHOD = {
    "throughput": "output events/s from high watermarks sampled every 0.25 s, from the moment "
                  "the first stage's output reaches 10 % of its final count (Faust: "
                  "{prefix}.unique, others: the output) to the moment the output reaches 90 % "
                  "(start-up and tail excluded); scaled by data records / high watermark to drop "
                  "transaction markers",
    "faust_scope": "`faust_alo` / `faust_eos`: this project's worker with STAGES=dedup, the work "
                   "the raw loop and Quix do (validate, dedup by event id in a changelogged table, "
                   "forward keyed by account), read on {prefix}.unique; `_pipeline` variants: the "
                   "whole pipeline as lab/workers.py starts it (dedup -> apply -> sink in one "
                   "process and event loop: apply adds each payment to its account's balance in a "
                   "second changelogged table and forwards it, the SQLite sink charges it), read on "
                   "{prefix}.applied; the latency targets and the commit-interval curve are the "
                   "whole pipeline's; `_w2` variants: two worker processes of one group share "
                   "the partitions (pinned to the same CPU as one worker: with the broker on the "
                   "other of this machine's 2 cores, a second worker adds processes, not a core)",
    "cpu": "user + system CPU-seconds of the process tree (psutil) over the same window, per "
           "million output events",
    "memory": "peak resident set size of the process tree, sampled every 0.25 s",
    "latency": "at half of the system's own median throughput, from a rate-limited producer: "
               "wall time when a read_committed consumer receives the output minus the payload's "
               "created_at stamped just before the send (not Kafka record timestamps: Quix copies "
               "the input timestamp to its output); warm-up excluded",
    "correctness": "after each run a read_committed reader counts the output records and "
                   "distinct event ids; a drained run must output exactly its input's unique "
                   "events, and no run may contain a duplicate",
    "input": "raw loop and Quix drain the whole backlog topic; a Faust run (this project's worker "
             "or the minimal agent) drains a copy of it (or of its first faust_records records when "
             "set) in its own input topic (same records, same partitions); events_in is what the "
             "group committed on its input topic",
}


def render_from_json(path: Path) -> list[Path]:
    """bench.md and bench.png again from a saved bench.json (after a change to how they
    are written; the figures are the JSON's, nothing is measured)."""
    doc = json.loads(path.read_text())
    # Ratios are derived figures: a ratio added since the run is computed from its medians.
    doc["ratios"] = {**_ratios(doc["systems"], doc.get("broker", {})), **doc.get("ratios", {})}
    md, png = path.with_name("bench.md"), path.with_name("bench.png")
    md.write_text(markdown(doc))
    plot(doc, png)
    return [md, png]


def write(results: Results, out: Path) -> tuple[Doc, list[Path]]:
    out.mkdir(parents=True, exist_ok=True)
    doc = document(results)
    paths = [out / "bench.json", out / "bench.md", out / "bench.png"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    paths[1].write_text(markdown(doc))
    plot(doc, paths[2])
    return doc, paths
