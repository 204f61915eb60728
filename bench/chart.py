"""reports/bench.png: throughput, latency and CPU cost of every system, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Doc = dict[str, Any]


def plot(doc: Doc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = doc["systems"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6))
    bars = {**{k: v for k, v in doc["broker"].items() if k in ("kafka_producer", "kafka_consumer")}, **systems}
    names = [k for k, v in bars.items() if v.get("throughput_eps")]
    values = [bars[k]["throughput_eps"] for k in names]
    errors = [[v - (bars[k].get("throughput_eps_range") or [v, v])[0] for k, v in zip(names, values)],
              [(bars[k].get("throughput_eps_range") or [v, v])[1] - v for k, v in zip(names, values)]]
    axes[0].barh(names, values, xerr=errors, color=[_colour(k) for k in names])
    axes[0].set_xscale("log")
    axes[0].set_xlabel("events/s (log scale), median and range")
    axes[0].set_title("Throughput")
    axes[0].invert_yaxis()

    timed = [k for k, v in systems.items() if v.get("p50_ms") is not None]
    y = range(len(timed))
    axes[1].barh([i - 0.2 for i in y], [systems[k]["p50_ms"] for k in timed], height=0.4, label="p50")
    axes[1].barh([i + 0.2 for i in y], [systems[k]["p99_ms"] for k in timed], height=0.4, label="p99")
    axes[1].set_yticks(list(y), timed)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("ms (log scale)")
    axes[1].set_title("End-to-end latency at half throughput")
    axes[1].invert_yaxis()
    axes[1].legend()

    cpu = [k for k, v in systems.items() if v.get("cpu_s_per_million") is not None]
    axes[2].barh(cpu, [systems[k]["cpu_s_per_million"] for k in cpu], color=[_colour(k) for k in cpu])
    axes[2].set_xscale("log")
    axes[2].set_xlabel("CPU-seconds per million events (log scale)")
    axes[2].set_title("CPU cost")
    axes[2].invert_yaxis()
    fig.suptitle(f"{doc['title']} ({doc['mode']}, {doc['runs_note']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _colour(key: str) -> str:
    if key.startswith("faust_min"):
        return "#ff7f0e"
    return {"kafka": "#7f7f7f", "raw": "#1f77b4", "quix": "#2ca02c", "faust": "#d62728"}[key.split("_")[0]]
