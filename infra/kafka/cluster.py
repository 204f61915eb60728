"""A local Kafka cluster of several KRaft nodes: replication, and brokers to break.

One broker cannot show what replication is for: ``acks=all`` with
``min.insync.replicas``, a partition leader that moves when its broker dies, an
ISR that shrinks and grows back, a controller quorum that elects a new leader.
Production failures are made of exactly those, so the lab needs a cluster it can
hurt: :class:`LocalCluster` starts N nodes from the same jars as the single broker
(``infra.kafka``) and can SIGKILL, SIGSTOP, SIGCONT and restart any one of them.

Layout: every node is a combined broker+controller and the N nodes are the
controller quorum (static ``controller.quorum.voters``). Dedicated controllers
would be three more JVMs on a 2-core machine, and the combined layout is the
harder case for the faults the lab wants: killing the active controller also
kills a broker that leads partitions. Node ``i`` (1-based, in the order the ports
are given) serves clients on ``ports[i-1]`` and the quorum on
``ports[i-1] + CONTROLLER_PORT_OFFSET``::

    ${FAUST_SEMANTICS_HOME:-~/.cache/faust-semantics}/
        kafka-<version>/libs/                  the jars, shared with the single broker
        kafka-cluster-<port1>-<port2>-.../     one directory per port list
            cluster.id                         the id every node was formatted with
            node-<id>/                         like a single broker's directory:
                server.properties, broker.pid, server.log, data/

Broker defaults follow :func:`infra.kafka.replication_defaults` (3 nodes:
replication factor 3, min.insync.replicas 2, internal topics alike). Each JVM gets
a 512 MB heap: three of them share 2 cores and the memory with the app under test.

Command line: ``python -m infra.kafka start|stop|status|reset --port P --brokers 3``
(ports P, P+1, P+2) or ``faust -A streams_app kafka start --brokers 3``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from . import (
    DEFAULT_VERSION,
    HOST,
    JVM_OPTIONS,
    LOG4J_CONFIG,
    STOP_TIMEOUT_S,
    BrokerStartError,
    _exclusive,
    _launch,
    _Layout,
    _log_excerpt,
    _new_cluster_id,
    _running_pid,
    _signal,
    _tool,
    _wait_for_exit,
    _wait_until_serving,
    data_home,
    ensure_jars,
    replication_properties,
)

#: The controller (quorum) port of a node is its client port plus this.
CONTROLLER_PORT_OFFSET = 100
#: Each node's PROXIED listener, for the lab's network faults (as the single broker's,
#: infra/kafka): it listens on client port + PROXIED_LISTENER_OFFSET and advertises client
#: port + PROXIED_ADVERTISED_OFFSET, where a fault proxy (lab/proxy.py) forwards to it.
#: Clients bootstrapping at :attr:`LocalCluster.proxied_bootstrap` reach every node only
#: through its proxy, which can cut them off from one node while the cluster sees it alive.
PROXIED_ADVERTISED_OFFSET = 200
PROXIED_LISTENER_OFFSET = 300
#: The heap of each node: half the single broker's, since three of them run at once.
NODE_JVM_OPTIONS = ("-Xms256m", "-Xmx512m", *(option for option in JVM_OPTIONS if not option.startswith("-Xm")))
QUORUM_TOOL = "org.apache.kafka.tools.MetadataQuorumCommand"

NodeState = Literal["serving", "paused", "not serving", "down"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class NodeInfo:
    """One node of a local cluster as :meth:`LocalCluster.status` found it.

    ``state``: ``serving`` (answers Metadata), ``paused`` (SIGSTOPped), ``not
    serving`` (the JVM runs but does not answer: starting, or cut off from the
    quorum) or ``down`` (no JVM).
    """

    node_id: int
    port: int
    controller_port: int
    pid: int | None
    state: NodeState
    data_dir: Path
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class ClusterInfo:
    """Every node of a local cluster, and how clients reach it."""

    nodes: tuple[NodeInfo, ...]
    root: Path

    @property
    def bootstrap(self) -> str:
        """``h1:p1,h2:p2,...``: what aiokafka takes."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def broker_url(self) -> str:
        """``kafka://h1:p1;h2:p2;...``: the BROKER_URL of this cluster, in Faust's syntax."""
        return "kafka://" + ";".join(node.bootstrap for node in self.nodes)

    @property
    def up(self) -> bool:
        return all(node.state == "serving" for node in self.nodes)

    def node(self, node_id: int) -> NodeInfo:
        return self.nodes[node_id - 1]


@dataclass(frozen=True)
class PartitionState:
    """A partition's leader, replicas and in-sync replicas (node ids), from Metadata."""

    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class LocalCluster:
    """A local KRaft cluster with one node per port in ``ports``; node ids are 1..N.

    A value object: every method works from the files under :attr:`root`, so any
    process (the CLI, a test fixture, the lab) can manage a cluster another started.
    """

    ports: tuple[int, ...]
    home: Path | str | None = None

    def __post_init__(self) -> None:
        if len(set(self.ports)) != len(self.ports) or not self.ports:
            raise ValueError(f"a cluster needs distinct client ports, got {self.ports}")
        offsets = (CONTROLLER_PORT_OFFSET, PROXIED_ADVERTISED_OFFSET, PROXIED_LISTENER_OFFSET)
        clashes = set(self.ports) & {port + offset for port in self.ports for offset in offsets}
        if clashes:
            raise ValueError(
                f"client ports {sorted(clashes)} would also be controller or proxied ports (client port + "
                f"{', '.join(map(str, offsets))}); pick ports less than {CONTROLLER_PORT_OFFSET} apart"
            )

    @classmethod
    def consecutive(cls, first_port: int, brokers: int, home: Path | str | None = None) -> LocalCluster:
        """The cluster of ``brokers`` nodes on ``first_port``, ``first_port + 1``, ..."""
        return cls(tuple(range(first_port, first_port + brokers)), home)

    # -- where things are ------------------------------------------------------

    @property
    def root(self) -> Path:
        return data_home(self.home) / ("kafka-cluster-" + "-".join(str(port) for port in self.ports))

    @property
    def node_ids(self) -> range:
        return range(1, len(self.ports) + 1)

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{HOST}:{port}" for port in self.ports)

    @property
    def proxied_bootstrap(self) -> str:
        """Every node's advertised PROXIED address (where the lab's fault proxies listen)."""
        return ",".join(f"{HOST}:{port + PROXIED_ADVERTISED_OFFSET}" for port in self.ports)

    def proxied_ports(self, node_id: int) -> tuple[int, int]:
        """(advertised, listener) ports of node ``node_id``'s PROXIED listener."""
        port = self._layout(node_id).port
        return port + PROXIED_ADVERTISED_OFFSET, port + PROXIED_LISTENER_OFFSET

    @property
    def controller_bootstrap(self) -> str:
        return ",".join(f"{HOST}:{port + CONTROLLER_PORT_OFFSET}" for port in self.ports)

    def _layout(self, node_id: int) -> _Layout:
        self._check_node(node_id)
        return _Layout(port=self.ports[node_id - 1], root=self.root / f"node-{node_id}")

    def _check_node(self, node_id: int) -> None:
        if node_id not in self.node_ids:
            raise ValueError(f"node id {node_id} is not in this cluster: use 1 to {len(self.ports)}")

    # -- lifecycle ---------------------------------------------------------------

    def start(self, wait: float = 60.0, version: str = DEFAULT_VERSION) -> ClusterInfo:
        """Start every node that is not running, in parallel (and resume paused ones), and
        wait for the whole cluster.

        Returns once every node serves Metadata and the cluster reports all of them as
        registered brokers with a controller. Raises :class:`BrokerStartError` naming
        each node that failed, with its log's first error and tail; the nodes that did
        start are left running (``stop`` ends them). Harmless when the cluster is up.
        """
        libs = ensure_jars(version, self.home)
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root / ".lock"):
            cluster_id = self._cluster_id()
            running = {node: pid for node in self.node_ids if (pid := _running_pid(self._layout(node)))}
            for pid in running.values():
                _signal(pid, signal.SIGCONT)  # a paused node is running, but cannot serve
            to_launch = [node for node in self.node_ids if node not in running]
            _in_parallel(lambda node: self._launch(node, libs, cluster_id), to_launch)
        self._wait_serving(self.node_ids, wait)
        self._wait_registered(wait)
        return self.status()

    def status(self) -> ClusterInfo:
        """Return every node's pid, ports and state (a down cluster is all ``down``)."""
        return ClusterInfo(nodes=tuple(self._node_info(node) for node in self.node_ids), root=self.root)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[int]:
        """Stop every running node and return the pids stopped.

        All nodes get SIGTERM at once (paused ones SIGCONT first, or the signal would
        wait): stopped one by one, the last nodes would lose their quorum and wait for
        it during their controlled shutdown. SIGKILL follows after ``timeout`` seconds.
        """
        if not self.root.is_dir():
            return []
        with _exclusive(self.root / ".lock"):
            running = {node: pid for node in self.node_ids if (pid := _running_pid(self._layout(node)))}
            for pid in running.values():
                _signal(pid, signal.SIGCONT)
                _signal(pid, signal.SIGTERM)
            _in_parallel(lambda node: self._end(node, running[node], timeout), list(running))
            for node in self.node_ids:
                self._layout(node).pid_file.unlink(missing_ok=True)
        return sorted(running.values())

    def reset(self) -> list[int]:
        """Stop the cluster and delete its data and cluster id; the next start formats afresh."""
        pids = self.stop()
        if self.root.is_dir():
            with _exclusive(self.root / ".lock"):
                for node in self.node_ids:
                    shutil.rmtree(self._layout(node).root, ignore_errors=True)
                (self.root / "cluster.id").unlink(missing_ok=True)
        return pids

    # -- faults ----------------------------------------------------------------------

    def kill(self, node_id: int) -> int:
        """SIGKILL node ``node_id`` (a crash: no controlled shutdown) and return its pid."""
        pid = self._pid_or_fail(node_id, "kill")
        _signal(pid, signal.SIGKILL)
        if not _wait_for_exit(pid, self._layout(node_id), STOP_TIMEOUT_S):
            raise RuntimeError(f"node {node_id} (pid {pid}) still runs {STOP_TIMEOUT_S:.0f} s after SIGKILL")
        return pid

    def pause(self, node_id: int) -> int:
        """SIGSTOP node ``node_id``: its sockets stay open but it answers nothing (a GC
        pause or a hung host, as its peers see it). Returns its pid once every thread
        has stopped (signal delivery to a JVM's threads takes a moment)."""
        pid = self._pid_or_fail(node_id, "pause")
        _signal(pid, signal.SIGSTOP)
        _wait_until(lambda: _paused(pid), f"node {node_id} (pid {pid}) stopped after SIGSTOP")
        return pid

    def resume(self, node_id: int) -> int:
        """SIGCONT node ``node_id`` after :meth:`pause`; returns its pid once it runs again."""
        pid = self._pid_or_fail(node_id, "resume")
        _signal(pid, signal.SIGCONT)
        _wait_until(lambda: not _paused(pid), f"node {node_id} (pid {pid}) running after SIGCONT")
        return pid

    def restart(self, node_id: int, wait: float = 60.0, version: str = DEFAULT_VERSION) -> NodeInfo:
        """Start node ``node_id`` again (stopping it cleanly first if it runs) and wait
        until it serves. After a kill it recovers its logs and rejoins the ISRs."""
        layout = self._layout(node_id)
        libs = ensure_jars(version, self.home)
        with _exclusive(self.root / ".lock"):
            pid = _running_pid(layout)
            if pid is not None:
                _signal(pid, signal.SIGCONT)
                _signal(pid, signal.SIGTERM)
                self._end(node_id, pid, STOP_TIMEOUT_S)
            self._launch(node_id, libs, self._cluster_id())
        self._wait_serving([node_id], wait)
        return self._node_info(node_id)

    # -- who leads -----------------------------------------------------------------

    def partition_state(self, topic: str, partition: int) -> PartitionState:
        """Return the leader, replicas and ISR of ``topic``'s ``partition`` (Metadata of a live node)."""
        return asyncio.run(partition_state(self.bootstrap, topic, partition))

    def leader_of(self, topic: str, partition: int) -> int:
        """Return the node id leading ``topic``'s ``partition`` (-1 while it has none)."""
        return self.partition_state(topic, partition).leader

    def active_controller(self, version: str = DEFAULT_VERSION, timeout: float = 30.0) -> int:
        """Return the node id of the active controller (the quorum leader).

        Clients cannot see it: in KRaft the Metadata "controller id" is a random live
        broker, to which admin requests are sent and forwarded. So this asks the quorum
        itself with Kafka's ``kafka-metadata-quorum describe --status`` (a JVM, a few
        seconds) through the controller listeners of the nodes that run and are not
        paused (a paused one would hang it). Raises ``RuntimeError`` when no quorum
        answers, e.g. while a new leader is being elected or without a majority.
        """
        live = [node for node in self.node_ids if (pid := _running_pid(self._layout(node))) and not _paused(pid)]
        if not live:
            raise RuntimeError(f"no node of the cluster on {self.bootstrap} is running")
        libs = ensure_jars(version, self.home)
        controllers = ",".join(f"{HOST}:{self.ports[node - 1] + CONTROLLER_PORT_OFFSET}" for node in live)
        command = [
            _tool("java"), "-Xmx128m", "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            QUORUM_TOOL, "--bootstrap-controller", controllers, "describe", "--status",
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{QUORUM_TOOL} got no answer from {controllers} in {timeout:.0f} s") from None
        match = re.search(r"^LeaderId:\s+(-?\d+)", result.stdout, re.MULTILINE)
        if result.returncode != 0 or match is None:
            raise RuntimeError(
                f"{QUORUM_TOOL} describe --status failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr)[-2000:]}"
            )
        return int(match.group(1))

    # -- helpers -------------------------------------------------------------------

    def _node_properties(self, node_id: int) -> str:
        layout = self._layout(node_id)
        port = layout.port
        voters = ",".join(f"{node}@{HOST}:{p + CONTROLLER_PORT_OFFSET}" for node, p in zip(self.node_ids, self.ports))
        return "\n".join(
            (
                "# Written by infra/kafka/cluster.py on every start; edits are lost.",
                "process.roles=broker,controller",
                f"node.id={node_id}",
                f"controller.quorum.voters={voters}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{port + CONTROLLER_PORT_OFFSET},"
                f"PROXIED://{HOST}:{port + PROXIED_LISTENER_OFFSET}",
                f"advertised.listeners=PLAINTEXT://{HOST}:{port},PROXIED://{HOST}:{port + PROXIED_ADVERTISED_OFFSET}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT",
                f"log.dirs={layout.log_dirs}",
                "auto.create.topics.enable=true",
                "group.initial.rebalance.delay.ms=0",
                *replication_properties(len(self.ports)),
                "",
            )
        )

    def _cluster_id(self) -> str:
        """Return the id all nodes share, creating it on first start (call under the lock).

        A lost ``cluster.id`` is recovered from a formatted node's ``meta.properties``,
        so a node is never formatted into a second cluster.
        """
        path = self.root / "cluster.id"
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        cluster_id = _new_cluster_id()
        for node in self.node_ids:
            meta = self._layout(node).log_dirs / "meta.properties"
            found = re.search(r"^cluster\.id=(\S+)", meta.read_text(encoding="utf-8"), re.M) if meta.exists() else None
            if found:
                cluster_id = found.group(1)
                break
        path.write_text(cluster_id + "\n", encoding="utf-8")
        return cluster_id

    def _launch(self, node_id: int, libs: Path, cluster_id: str) -> int:
        layout = self._layout(node_id)
        layout.root.mkdir(parents=True, exist_ok=True)
        try:
            return _launch(layout, libs, self._node_properties(node_id), cluster_id, NODE_JVM_OPTIONS)
        except BrokerStartError as exc:
            raise BrokerStartError(f"node {node_id} (port {layout.port}): {exc}") from None

    def _wait_serving(self, node_ids: Sequence[int], wait: float) -> None:
        """Wait until every node in ``node_ids`` serves, in parallel; report every failed node."""

        def wait_one(node: int) -> str | None:
            layout = self._layout(node)
            pid = _running_pid(layout)
            if pid is None:
                return f"node {node} (port {layout.port}) is not running. {_log_excerpt(layout.log_path)}"
            try:
                _wait_until_serving(layout, pid, wait)
            except BrokerStartError as exc:
                return f"node {node} (port {layout.port}): {exc}"
            return None

        failures = [failure for failure in _in_parallel(wait_one, list(node_ids)) if failure]
        if failures:
            raise BrokerStartError("\n\n".join(failures))

    def _wait_registered(self, wait: float) -> None:
        """Wait until Metadata lists every node as a broker and names a controller."""
        seen: dict[str, object] = {}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            seen = asyncio.run(_describe_cluster(self.bootstrap))
            if _registered(seen) == list(self.node_ids) and int(str(seen.get("controller_id", -1))) >= 0:
                return
            time.sleep(0.5)
        raise BrokerStartError(
            f"the nodes serve, but after {wait:.0f} s the cluster does not list all {len(self.ports)} "
            f"brokers with a controller (last answer: {seen or 'none'}). "
            f"{_log_excerpt(self._layout(1).log_path)}"
        )

    def _node_info(self, node_id: int) -> NodeInfo:
        layout = self._layout(node_id)
        pid = _running_pid(layout)
        state: NodeState
        if pid is None:
            state = "down"
        elif _paused(pid):
            state = "paused"
        else:
            state = "serving" if _node_serving(layout.port, timeout=5.0) else "not serving"
        return NodeInfo(
            node_id=node_id, port=layout.port, controller_port=layout.port + CONTROLLER_PORT_OFFSET,
            pid=pid, state=state, data_dir=layout.root, log_path=layout.log_path,
        )  # fmt: skip

    def _pid_or_fail(self, node_id: int, action: str) -> int:
        pid = _running_pid(self._layout(node_id))
        if pid is None:
            raise RuntimeError(f"cannot {action} node {node_id}: it is not running (restart it first)")
        return pid

    def _end(self, node_id: int, pid: int, timeout: float) -> None:
        """Wait for a signalled node to exit; SIGKILL it after ``timeout`` seconds."""
        layout = self._layout(node_id)
        if not _wait_for_exit(pid, layout, timeout):
            _signal(pid, signal.SIGKILL)
            _wait_for_exit(pid, layout, STOP_TIMEOUT_S)


async def partition_state(bootstrap: str, topic: str, partition: int, timeout: float = 10.0) -> PartitionState:
    """Return the leader, replicas and ISR of one partition from a Metadata answer.

    Every broker applies the metadata log on its own, so a topic just created can be
    missing from the answer of one of them for a moment: asked again until ``timeout``,
    then ``LookupError``. All topics are described: Metadata naming a missing topic
    would auto-create it.
    """
    deadline = time.monotonic() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while True:
            topics = {entry["topic"]: entry for entry in await admin.describe_topics()}
            for entry in topics.get(topic, {"partitions": []})["partitions"]:
                if entry["partition"] == partition:
                    return PartitionState(
                        leader=entry["leader"], replicas=tuple(entry["replicas"]), isr=tuple(entry["isr"])
                    )
            if time.monotonic() > deadline:
                raise LookupError(f"{topic}[{partition}] is not in the cluster's metadata after {timeout:.0f} s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def _node_serving(port: int, timeout: float) -> bool:
    """Return whether the node on ``port`` itself answers a Metadata request.

    Not :func:`infra.kafka.metadata_ok`: its admin client sends the request to any
    broker it has learnt of, so with a peer paused it hangs on that peer and a
    healthy node would look down. A bare client's bootstrap asks only ``port``.
    """
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError:
        return False
    return asyncio.run(_bootstraps(f"{HOST}:{port}", timeout))


async def _bootstraps(bootstrap: str, timeout: float) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
        return bool(client.cluster.brokers())
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()


async def _describe_cluster(bootstrap: str, timeout: float = 5.0) -> dict[str, object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            return dict(await admin.describe_cluster())
    except (KafkaError, OSError, TimeoutError):
        return {}
    finally:
        await admin.close()


def _registered(described: dict[str, object]) -> list[int]:
    """The node ids of the brokers in a DescribeCluster answer, sorted."""
    brokers = described.get("brokers") or []
    return sorted(int(broker["node_id"]) for broker in brokers)  # type: ignore[attr-defined]


def _paused(pid: int) -> bool:
    """Return whether ``pid`` is stopped by a signal (state T in /proc/PID/stat)."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"
    return False


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms; raise ``RuntimeError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected {what} within {timeout:.0f} s")
        time.sleep(0.01)


def _in_parallel(work: Callable[[int], _T], node_ids: list[int]) -> list[_T]:
    """Run ``work(node)`` for every node at once (JVM start-ups overlap); results in order."""
    if not node_ids:
        return []
    with ThreadPoolExecutor(max_workers=len(node_ids)) as pool:
        return list(pool.map(work, node_ids))


__all__ = ["CONTROLLER_PORT_OFFSET", "ClusterInfo", "LocalCluster", "NodeInfo", "PartitionState", "partition_state"]
