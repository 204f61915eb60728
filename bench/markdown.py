"""reports/bench.md: the JSON document (:func:`bench.report.document`) as tables."""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def _with_range(entry: Doc, figure: str, digits: int = 0) -> str:
    value, span = entry.get(figure), entry.get(f"{figure}_range")
    if value is None:
        return "n/a"
    if span and entry.get("runs", 1) > 1:
        return f"{value:,.{digits}f} ({span[0]:,.{digits}f}–{span[1]:,.{digits}f})"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}× ({value:.0%})" if percent else f"{value:.2f}×"


def markdown(doc: Doc) -> str:
    systems, broker, ratios = doc["systems"], doc["broker"], doc["ratios"]
    lines = [f"# {doc['title']}", ""]
    lines += [_summary(doc), ""]
    machine = doc["machine"]
    lines += [(f"Mode **{doc['mode']}**, {doc['runs_note']}. Run `{doc['run_id']}`, "
               f"{doc['started_at']}, {doc['duration_s'] // 60} min. "
               f"CPU: {machine['cpu_model']}, {machine['cpus']} cores, {machine['memory_gb']} GB. "
               f"CPU pinning: {machine['pinning']['description']}."), ""]
    lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".", ""]

    config = doc["config"]
    lines += [(f"## Side by side ({config['headline_partitions']} partitions, "
               f"{config['records']:,}-record backlog, {config['duplicate_rate']:.0%} duplicates)"), "",
              "| system | throughput ev/s | CPU-s / M events | peak RSS MB | p50 ms | p99 ms | in → out (expected) | correct |",
              "|---|---|---|---|---|---|---|---|"]
    for key, entry in systems.items():
        lines.append(
            f"| `{key}` {entry['label']} | {_with_range(entry, 'throughput_eps')} | "
            f"{_with_range(entry, 'cpu_s_per_million', 1)} | {_with_range(entry, 'peak_rss_mb')} | "
            f"{_with_range(entry, 'p50_ms')} | {_with_range(entry, 'p99_ms')} | "
            f"{entry['events_in']:,} → {entry['events_out']:,} ({entry['expected_out']:,}"
            f"{'' if entry['drained'] else ', NOT drained'}) | {'yes' if entry['correct'] else '**NO**'} |")
    lines += ["", ("Throughput is output (unique) events per second; latency at half of each system's "
                   "own throughput. Ranges are min–max over the runs."), ""]

    lines += ["## Ratios (throughput medians; `cpu_` ratios compare CPU-seconds per event)", "",
              "| ratio | value |", "|---|---|"]
    lines += [f"| `{name}` | {_ratio(value, percent=not name.startswith('cpu_'))} |"
              for name, value in ratios.items()]
    lines += ["", "## Targets (reported, not asserted)", "", "| target | measured | met | margin | detail |",
              "|---|---|---|---|---|"]
    for t in doc["targets"]:
        met = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
        margin = "n/a" if t["margin"] is None else f"{t['margin']:+.0%}"
        lines.append(f"| {t['target']} | {_fmt(t['measured'], 2)} | {met} | {margin} | {t['detail']} |")

    lines += ["", "## The broker's own limit (Kafka perf tools, 200-byte records, acks=all)", "",
              "| tool | records/s | CPU-s / M | peak RSS MB | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for name, entry in broker.items():
        lines.append(f"| `{name}` | {_with_range(entry, 'throughput_eps')} | "
                     f"{_with_range(entry, 'cpu_s_per_million', 1)} | {_with_range(entry, 'peak_rss_mb')} | "
                     f"{_with_range(entry, 'p50_ms')} | {_with_range(entry, 'p99_ms')} |")
    lines += ["", ("`kafka_producer` latency is measured at half its maximum rate; the transactional "
                   "runs' latency is at full rate (a commit every N ms). CPU includes JVM start-up."), ""]

    partition_counts = doc["config"]["partition_counts"]
    if len(partition_counts) > 1:
        lines += ["## Throughput by partition count", "",
                  "| system | " + " | ".join(f"{p} partitions" for p in partition_counts) + " |",
                  "|---|" + "---|" * len(partition_counts)]
        for key, entry in systems.items():
            cells = [_with_range(entry["by_partitions"][str(p)], "throughput_eps")
                     if str(p) in entry["by_partitions"] else "–" for p in partition_counts]
            if sum(c != "–" for c in cells) > 1:
                lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        lines.append("")

    lines += _curve_section(systems)
    lines += _limits_section(doc)
    lines += _notes_section(doc)
    lines += _state_section(doc["state"])
    lines += _profile_section(doc["profiles"])
    lines += ["## How it was measured", ""] + [f"- **{k}**: {v}" for k, v in doc["method"].items()] + [""]
    return "\n".join(lines)


def _curve_section(systems: Doc) -> list[str]:
    """Throughput and latency of the pipeline by commit interval, per guarantee."""
    rows = sorted(
        ((entry["guarantee"], entry["settings"]["broker_commit_interval_s"], key, entry)
         for key, entry in systems.items()
         if entry["system"] == "faust" and entry["settings"].get("stream_buffer_maxsize") == 4096
         and entry["settings"].get("stages", "").endswith("sink")
         and entry.get("p99_ms") is not None),
        key=lambda row: (row[0], row[1], row[2]))
    if not rows:
        return []
    lines = ["## Commit interval: throughput and latency of the pipeline", "",
             "| guarantee | commit interval s | system | throughput ev/s | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    for guarantee, interval, key, entry in rows:
        lines.append(f"| {guarantee} | {interval:g} | `{key}` | {_with_range(entry, 'throughput_eps')} | "
                     f"{_with_range(entry, 'p50_ms')} | {_with_range(entry, 'p99_ms')} |")
    lines += ["", ("Under exactly_once a reader sees an output only once its transaction commits, so "
                   "each of the pipeline's two hops adds about half a commit interval; under "
                   "at_least_once the interval only bounds what a crash redoes. `faust_alo_pipeline` and "
                   "`faust_eos_pipeline` are the pipeline's defaults (BROKER_COMMIT_INTERVAL unset)."), ""]
    return lines


def _summary(doc: Doc) -> str:
    r = doc["ratios"]
    parts = []
    if r.get("faust_eos_over_faust_alo") is not None:
        parts.append(f"exactly_once runs the Faust dedup stage at {r['faust_eos_over_faust_alo']:.0%} of its "
                     f"at_least_once throughput (raw loop: {_pct(r.get('raw_eos_over_raw_alo'))}, "
                     f"Quix: {_pct(r.get('quix_eos_over_quix_alo'))})")
    if r.get("faust_alo_over_raw_alo") is not None:
        parts.append(f"at_least_once Faust, on the same work, reaches {r['faust_alo_over_raw_alo']:.0%} of a "
                     f"raw aiokafka loop and {_pct(r.get('faust_alo_over_quix_alo'))} of Quix Streams")
    if r.get("faust_alo_pipeline_over_faust_alo") is not None:
        parts.append(f"the whole pipeline (a second hop, apply, and the sink in the same process) runs at "
                     f"{r['faust_alo_pipeline_over_faust_alo']:.0%} of the dedup stage's throughput")
    undrained = _undrained(doc)
    if not doc["all_correct"]:
        verdict = "**some runs' output was wrong: see the correct column**"
    elif undrained:
        verdict = (f"no run output a duplicate, but **{len(undrained)} run(s) did not drain their input** "
                   f"({', '.join(undrained)}): see Problems")
    else:
        verdict = "every run's output was exactly its input's unique events"
    return "**Answer:** " + "; ".join(parts) + f". Correctness: {verdict}."


def _undrained(doc: Doc) -> list[str]:
    """The runs that stopped before their output was complete (stuck, crashed or too slow)."""
    return [f"`{key}` p{run['partitions']} run {run['run'] + 1}" for key, entry in doc["systems"].items()
            for run in entry.get("run_details", []) if not run.get("drained", True)]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


#: Upstream reports of the same order of magnitude: stock Faust far below a plain aiokafka loop.
FAUST_SPEED_REPORTS = (
    "robinhood/faust#563 (consume-and-produce agents at about 300 to 500 messages/s, an aiokafka "
    "consumer at least ten times faster)",
    "robinhood/faust#718 (sending through Faust much slower than through aiokafka)",
)


def _ms_per_event(systems: Doc, key: str) -> float | None:
    cpu = systems.get(key, {}).get("cpu_s_per_million")
    return None if cpu is None else cpu / 1000


def _eos_floor(ratios: Doc) -> str:
    floor = ratios.get("faust_min_eos_over_raw_eos")
    return "" if floor is None else f", {floor:.0%} under exactly_once (where it awaits no send)"


def _limits_section(doc: Doc) -> list[str]:
    """What limits each missed target, from this run's own figures, and the next step."""
    missed = [t["target"] for t in doc["targets"] if t["met"] is False]
    if not missed:
        return []
    systems, ratios, profiles = doc["systems"], doc["ratios"], doc["profiles"]
    lines = ["## What limits the missed targets, and the next step", ""]
    if any("raw loop" in t or "Quix" in t for t in missed):
        floor = ratios.get("faust_min_alo_over_raw_alo")
        stock_ms, raw_ms = _ms_per_event(systems, "faust_min_alo"), _ms_per_event(systems, "raw_alo")
        if floor is not None and stock_ms is not None and raw_ms is not None:
            lines.append(
                f"- **Faust itself.** One stock Faust agent doing the raw loop's work, record for record "
                f"(bench/faust_minimal.py: one hop, one table, no fixes), reaches {floor:.0%} of the raw "
                f"loop under at_least_once (it awaits each output's acknowledgement, as the pipeline's "
                f"dedup stage must){_eos_floor(ratios)} and spends {stock_ms:.2f} ms of CPU per event "
                f"against the raw loop's {raw_ms:.2f} ms: faust-streaming's per-record path hands every "
                "record to its agent through several asyncio tasks, a queue and per-record sensor calls, "
                "and sends each output and each table changelog record through its own publish path. "
                "Upstream reports the same order of magnitude: "
                + "; ".join(FAUST_SPEED_REPORTS) + ".")
        for guarantee, short in (("at_least_once", "alo"), ("exactly_once", "eos")):
            share = ratios.get(f"faust_{short}_over_faust_min_{short}")
            busy = profiles.get(f"faust_{short}", {}).get("busy_share")
            if share is None:
                continue
            text = (f"- **The dedup stage on top, {guarantee}.** This project's dedup stage runs at "
                    f"{share:.0%} of that agent on the same work, with the guarantees' discipline (acks "
                    "after the work, dead letters, the commit gate) and the Faust fixes")
            whole = ratios.get(f"faust_{short}_pipeline_over_faust_{short}")
            if whole is not None:
                text += (f"; the whole pipeline (a second hop, apply with a second changelogged table, "
                         f"and the sink's charge, in one process) at {whole:.0%} of the dedup stage")
            if busy is not None:
                text += f"; py-spy found its worker busy {busy:.0%} of the wall time"
            lines.append(text + ".")
        lines.append(
            "- **Next step.** The stages take records in batches below Faust's per-record iterator, "
            "wait once per batch for the broker's acks and hand a batch's outputs and table rows to "
            "aiokafka as one record batch per partition (agents/, faust_guarantees/batching.py). "
            "What is left per event: Faust's conductor and Event per message and aiokafka's "
            "pure-Python fetch path (Quix and the raw loop use librdkafka or per-batch paths), the "
            "stage's per-record bookkeeping; in the whole pipeline, the second hop and the sink.")
    restore = doc["state"].get("restore")
    if any("restored in" in t for t in missed) and restore and restore.get("restore_s"):
        lines.append(
            f"- **Restore.** {restore['keys_written']:,} keys took {restore['restore_s']:.1f} s to restore "
            f"({restore['keys_written'] / restore['restore_s']:,.0f} keys/s).")
    return lines + [""]


def _notes_section(doc: Doc) -> list[str]:
    """Runs whose process crashed or did not stop cleanly, and measurements that failed."""
    systems = doc["systems"]
    notes = [f"- `{key}` p{run['partitions']} run {run['run'] + 1}: exit code {run['exit_code']}"
             f"{'; ' + run['problem'] if run['problem'] else ''}"
             for key, entry in systems.items() for run in entry["run_details"]
             if run["exit_code"] or run["problem"]]
    notes += [f"- {run}: did NOT drain its input (output incomplete when the run was stopped)"
              for run in _undrained(doc)]
    notes += [f"- failed once: {note}" for note in doc.get("notes", [])]
    notes += [f"- measurement failed: {error}" for error in doc.get("errors", [])]
    if not notes:
        return []
    intro = ("Processes that crashed during a run or did not exit 0 after SIGTERM (their output "
             "was read back and checked all the same; a crashed run is not drained), and "
             "measurements that could not be made. Details are in the logs under the workdir.")
    return ["## Problems", "", intro, "", *notes, ""]


def _state_section(state: Doc) -> list[str]:
    lines = ["## Dedup state", ""]
    restore = state["restore"]
    if restore:
        lines.append(
            f"- Cold restore of {restore['keys_written']:,} keys ({restore['keys_restored']:,} found in "
            f"RocksDB afterwards): {_fmt(restore['restore_s'], 1)} s restoring (from Faust's high-watermark "
            f"query to \"Recovery complete\", the bulk restore included), worker "
            f"ready after {restore['ready_s']:.1f} s. RocksDB {restore['rocksdb_bytes_per_key']:.0f} "
            f"bytes/key, changelog on the broker {_fmt(restore['changelog_bytes_per_key'])} bytes/key.")
    for restart in state["restarts"]:
        lines.append(f"- Restart after a graceful stop, {restart['guarantee']}: replayed "
                     f"{restart['replayed']:,} of {restart['changelog_records']:,} changelog records, ready "
                     f"after {restart['ready_s']:.1f} s, "
                     + ("nothing to restore" if restart["restore_s"] is None
                        else f"of which {restart['restore_s']:.1f} s restoring")
                     + f" (the stop before it took {restart['first_stop_s']:.1f} s"
                     f"{': ' + restart['first_stop_problem'] if restart['first_stop_problem'] else ''}).")
    if state["size_by_horizon"]:
        lines += ["", ("State size by DEDUP_HORIZON (steady state: unique ids/s × horizon, at the bytes "
                       "per key measured above):"), "",
                  "| horizon | unique ids/s | keys | RocksDB GB | changelog GB |", "|---|---|---|---|---|"]
        for row in state["size_by_horizon"]:
            lines.append(f"| {row['horizon_s'] / 3600:g} h | {row['unique_per_s']:,.0f} | {row['keys']:,.0f} | "
                         f"{row['rocksdb_gb']:.2f} | {_fmt(row['changelog_gb'], 2)} |")
    return lines + [""]


def _profile_section(profiles: Doc) -> list[str]:
    if not profiles:
        return []
    lines = ["## Where Faust's time goes (py-spy --gil, 10 s while draining)", ""]
    for key, p in profiles.items():
        lines += [f"### `{key}`: busy {p['busy_share']:.0%} of the wall time", "",
                  "By thread: " + ", ".join(f"{t} {s:.0%}" for t, s in p["by_thread"]) + ". "
                  "By origin of the innermost frame: " +
                  ", ".join(f"{o} {s:.0%}" for o, s in p["by_origin"]) + ".", "",
                  "| function (inclusive share of busy samples) | share |", "|---|---|"]
        lines += [f"| `{f}` | {s:.0%} |" for f, s in p["hot"]]
        lines.append("")
    return lines
