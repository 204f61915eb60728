"""``python -m infra.kafka start|stop|status|reset|jars``: manage the local Kafka broker.

One line of output per command (``--brokers N`` with N > 1: a cluster of N nodes on
ports P .. P+N-1, see ``infra/kafka/cluster.py``; ``status`` then prints a line per
node). Exit codes: 0 success (for ``status``: the broker, or every node, is up), 1
the broker or a node is down (``status``) or failed to start, 2 Java or Maven
missing or the jars could not be resolved.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from infra import kafka
from infra.kafka.cluster import ClusterInfo, LocalCluster


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run one command and return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m infra.kafka", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "reset", "jars"])
    parser.add_argument("--port", type=int, default=kafka.DEFAULT_PORT, help="main listener port (default %(default)s)")
    parser.add_argument("--kafka-version", default=kafka.DEFAULT_VERSION, help="Kafka release (default %(default)s)")
    parser.add_argument(
        "--brokers", type=int, default=1,
        help="nodes: 1 (default) is the single broker; N > 1 a KRaft cluster on ports PORT .. PORT+N-1",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.brokers < 1:
        parser.error("--brokers must be 1 or more")
    try:
        if args.brokers > 1 and args.command != "jars":
            return _cluster_command(args)
        return _COMMANDS[args.command](args)
    except kafka.KafkaToolingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except kafka.BrokerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _start(args: argparse.Namespace) -> int:
    began = time.monotonic()
    info = kafka.start(args.port, version=args.kafka_version)
    print(f"Kafka up at {info.bootstrap} (pid {info.pid}, {time.monotonic() - began:.1f} s); log {info.log_path}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    pid = kafka.stop(args.port)
    print(f"Kafka on port {args.port} stopped (pid {pid})" if pid else f"Kafka on port {args.port} was not running")
    return 0


def _reset(args: argparse.Namespace) -> int:
    pid = kafka.reset(args.port)
    stopped = f"stopped (pid {pid}) and " if pid else ""
    print(f"Kafka on port {args.port} {stopped}data deleted; the next start formats fresh storage")
    return 0


def _status(args: argparse.Namespace) -> int:
    info = kafka.status(args.port)
    if info is None:
        print(f"Kafka on port {args.port} is down")
        return 1
    print(f"Kafka up at {info.bootstrap} (pid {info.pid}); log {info.log_path}")
    return 0


def _jars(args: argparse.Namespace) -> int:
    began = time.monotonic()
    libs = kafka.ensure_jars(args.kafka_version)
    count = len(list(libs.glob("*.jar")))
    print(f"Kafka {args.kafka_version}: {count} jars in {libs} ({time.monotonic() - began:.1f} s)")
    return 0


def _cluster_command(args: argparse.Namespace) -> int:
    cluster = LocalCluster.consecutive(args.port, args.brokers)
    began = time.monotonic()
    if args.command == "start":
        info = cluster.start(version=args.kafka_version)
        elapsed = time.monotonic() - began
        print(f"Kafka cluster up at {info.bootstrap} ({elapsed:.1f} s); BROKER_URL='{info.broker_url}'")
        _print_nodes(info)
    elif args.command in {"stop", "reset"}:
        pids = cluster.stop() if args.command == "stop" else cluster.reset()
        done = "stopped" if args.command == "stop" else "stopped and its data deleted"
        print(f"Kafka cluster on {cluster.bootstrap} {done} (pids {', '.join(map(str, pids)) or 'none'})")
    else:
        info = cluster.status()
        print(f"Kafka cluster on {cluster.bootstrap} is {'up' if info.up else 'NOT up'}")
        _print_nodes(info)
        return 0 if info.up else 1
    return 0


def _print_nodes(info: ClusterInfo) -> None:
    for node in info.nodes:
        print(
            f"  node {node.node_id}: {node.state:<11} pid {node.pid or '-'}  port {node.port}  "
            f"controller port {node.controller_port}  log {node.log_path}"
        )


_COMMANDS = {"start": _start, "stop": _stop, "status": _status, "reset": _reset, "jars": _jars}

if __name__ == "__main__":
    raise SystemExit(main())
