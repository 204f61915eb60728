"""What the figures were measured on: versions of everything and the CPU."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from infra.kafka import DEFAULT_VERSION, ensure_jars

PACKAGES = ("faust-streaming", "aiokafka", "quixstreams", "confluent-kafka", "rocksdict", "psutil")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _java() -> str:
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    lines = (result.stderr or result.stdout).splitlines()
    return lines[0] if lines else "unknown"


def _kafka_clients() -> str:
    jar = next(ensure_jars().glob("kafka-clients-*.jar"), None)
    return jar.stem.removeprefix("kafka-clients-") if jar else DEFAULT_VERSION


def versions() -> dict[str, str]:
    """Broker, tools, runtimes and every client library involved."""
    from lab.report import project_version

    found = {
        "this project": project_version(),
        "Apache Kafka (broker)": DEFAULT_VERSION,
        "Kafka tools (perf tests)": _kafka_clients(),
        "Java": _java(),
        "Python": platform.python_version(),
    }
    found.update({name: _package(name) for name in PACKAGES})
    try:
        import confluent_kafka

        found["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return found


def describe() -> dict[str, object]:
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
    }
