"""The broker's own limit, measured with Kafka's perf tools on the same machine and cores.

``ProducerPerformance`` and ``ConsumerPerformance`` (kafka-tools, in the jars
``infra.kafka`` resolved) are the ceiling every Python system is compared to:
what one Java client gets out of this broker with 200-byte records and
``acks=all``. The producer runs plain, then transactional at several
``--transaction-duration-ms`` values (a commit every N ms: the broker-side price
of exactly-once at a given commit interval), then plain again at half of its
own maximum rate for the latency at half load, as every system is measured.

The tools' JVMs are pinned like a system under test and probed the same way;
their CPU-seconds include the JVM's start-up (about a second), which weighs on
short runs.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from dataclasses import dataclass

from infra.kafka import ensure_jars

from .affinity import Pinning
from .metrics import TreeProbe

RECORD_BYTES = 200
_PRODUCER_SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<eps>[\d.]+) records/sec .*?"
    r"(?P<p50>\d+) ms 50th, \d+ ms 95th, (?P<p99>\d+) ms 99th"
)


@dataclass(frozen=True)
class ToolRun:
    """One perf-tool run: the tool's own figures plus the psutil probe's."""

    name: str
    throughput_eps: float
    events: int
    cpu_s_per_million: float
    peak_rss_mb: float
    p50_ms: float | None = None
    p99_ms: float | None = None


def _run_tool(main_class: str, args: list[str], pinning: Pinning) -> tuple[str, float, int]:
    """Run a kafka-tools class; return (stdout, CPU-seconds, peak RSS bytes)."""
    libs = ensure_jars()
    command = ["java", "-Xmx512m", "-cp", f"{libs}/*", main_class, *args]
    with pinning.for_child():
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    probe = TreeProbe(process.pid)
    cpu, peak = 0.0, 0
    while process.poll() is None:
        cpu, rss = probe.read()
        peak = max(peak, rss)
        time.sleep(0.1)
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"{main_class} exited with {process.returncode}:\n{output[-2000:]}")
    return output, cpu, peak


def produce(bootstrap: str, topic: str, records: int, pinning: Pinning, *, name: str,
            throughput: float = -1, transaction_ms: int | None = None) -> ToolRun:
    args = [
        "--bootstrap-server", bootstrap, "--topic", topic, "--num-records", str(records),
        "--record-size", str(RECORD_BYTES), "--throughput", str(int(throughput)),
        "--command-property", "acks=all",
    ]
    if transaction_ms is not None:
        args += ["--transaction-duration-ms", str(transaction_ms),
                 "--transactional-id", f"{topic}-{uuid.uuid4().hex[:8]}"]
    output, cpu, peak = _run_tool("org.apache.kafka.tools.ProducerPerformance", args, pinning)
    summary = _PRODUCER_SUMMARY.search(output.strip().splitlines()[-1])
    if summary is None:
        raise RuntimeError(f"unexpected ProducerPerformance output:\n{output[-2000:]}")
    sent = int(summary["records"])
    return ToolRun(name, float(summary["eps"]), sent, cpu / sent * 1e6, peak / 2**20,
                   float(summary["p50"]), float(summary["p99"]))


def consume(bootstrap: str, topic: str, records: int, pinning: Pinning, *, name: str) -> ToolRun:
    """Read ``records`` from ``topic`` under a fresh group; the fetch rate excludes the group join."""
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--num-records", str(records),
            "--group", f"{topic}-{uuid.uuid4().hex[:8]}", "--timeout", "60000"]
    output, cpu, peak = _run_tool("org.apache.kafka.tools.ConsumerPerformance", args, pinning)
    lines = output.strip().splitlines()
    header = lines.index(next(l for l in lines if l.startswith("start.time")))
    fields = dict(zip((h.strip() for h in lines[header].split(",")), (v.strip() for v in lines[header + 1].split(","))))
    read = int(fields["data.consumed.in.nMsg"])
    return ToolRun(name, float(fields["fetch.nMsg.sec"]), read, cpu / read * 1e6, peak / 2**20)
