"""The files a user runs besides the code: CLI errors, docker-compose.yml, the Grafana dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_bad_setting_stops_the_worker_with_a_message_that_says_what_to_change():
    env = {**os.environ, "PROCESSING_GUARANTEE": "exactly-once", "WEB_PORT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams_app", "worker"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "PROCESSING_GUARANTEE='exactly-once' is invalid" in result.stderr
    assert "at_least_once, exactly_once, at_most_once" in result.stderr
    assert "WEB_PORT='0'" in result.stderr


def test_docker_compose_file_is_valid():
    """No Docker engine here: the compose file is checked statically by docker-compose."""
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed; .ci/run installs Debian's docker-compose")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([tool, "-f", str(REPO / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PROCESSING_GUARANTEE": "exactly_once"})
    assert result.returncode == 0, result.stderr
    assert "PROCESSING_GUARANTEE: exactly_once" in result.stdout
    for service in ("kafka:", "postgres:", "worker:", "prometheus:", "grafana:"):
        assert service in result.stdout
    for mounted in ("ops/prometheus.yml", "ops/grafana/provisioning", "ops/grafana/dashboards"):
        assert (REPO / mounted).exists(), mounted


#: PromQL functions and keywords: not metric names.
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "rate", "increase", "irate",
                "histogram_quantile", "le", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                "and", "or", "unless", "topk", "bottomk", "abs", "clamp_min", "delta", "deriv"}


def promql_metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that are not functions, keywords, labels or durations."""
    expr = re.sub(r'\{[^}]*\}', "", expr)          # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)         # range durations
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS}


def test_the_grafana_dashboard_reads_only_metrics_the_worker_exports():
    from streams_app.metrics import metric_names

    dashboard = json.loads((REPO / "ops/grafana/dashboards/payments.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used, exprs
    unknown = used - metric_names()
    assert not unknown, f"the dashboard reads metrics streams_app/metrics.py does not declare: {sorted(unknown)}"
    assert promql_metric_names("sum by (le) (rate(payments_x_bucket{a=\"b\"}[5m]))") == {"payments_x_bucket"}


def test_the_image_runs_as_a_non_root_user_with_the_base_install():
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    assert not any("-e ." in line or ".[" in line for line in lines), "the image installs the base package only"


def test_lab_and_bench_packages_are_extras_not_install_requires():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    base = cfg["options"]["install_requires"]
    extras = cfg["options.extras_require"]
    for name in ("quixstreams", "matplotlib", "psutil", "py-spy"):
        assert name not in base, f"{name} belongs in an extra"
        assert name in extras["test"]
    assert "matplotlib" in extras["lab"]
    assert all(name in extras["bench"] for name in ("quixstreams", "psutil", "py-spy"))
    assert "api" in extras
