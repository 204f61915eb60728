"""A real Apache Kafka broker (KRaft mode, one node), run from jars in Maven Central.

Kafka is packaged neither by Debian nor by PyPI, and there is no Docker here, so
this module resolves the broker with Maven (``pom.xml`` beside this file) and runs
it with the system Java. Nothing lands in the git tree::

    ${FAUST_SEMANTICS_HOME:-~/.cache/faust-semantics}/
        kafka-<version>/libs/       jars, resolved once by ``ensure_jars``
        kafka-broker-<port>/        one broker per port, so ports never share state
            server.properties       rewritten on every start
            broker.pid              pid of the running JVM
            server.log              broker log of the current run (the previous one is server.log.1)
            data/                   log.dirs: topic partitions and the KRaft metadata log

Command line::

    python -m infra.kafka start|stop|status|reset|jars [--port P] [--brokers N]

A cluster of several nodes (``--brokers 3``; broker faults, replication) is
``infra/kafka/cluster.py``, built on the functions here.

Version: Kafka 4.4.0
--------------------
The newest release on Maven Central (``versions:display-dependency-updates`` on
``pom.xml`` lists nothing newer), and aiokafka 0.14.0 works with it, so no older
line was needed. Kafka 4 removed old protocol versions (KIP-896), but since 0.13
aiokafka no longer guesses the broker version: each connection sends ApiVersions
and each request uses the newest version both sides support (``api_version=`` is
a deprecated no-op). Every aiokafka request type shares a version with 4.4.0; the
transactional ones all go out as v0 (InitProducerId, AddPartitionsToTxn,
AddOffsetsToTxn, EndTxn, TxnOffsetCommit), which 4.4.0 still serves.
``tests/integration/test_local_kafka.py`` asserts this for every request type.

Evidence, against 4.4.0 on this machine (Java 17, 2 cores):

* at least once: admin create/delete topics, producer ``acks="all"``, consumer
  group join, commit and ``committed()``;
* exactly once: transactional producer ``begin`` / ``send`` /
  ``send_offsets_to_transaction`` / ``commit``, then ``abort``: a
  ``read_committed`` reader sees only the committed records, a
  ``read_uncommitted`` one the aborted ones too, and the group offset sent in the
  transaction is committed; ``read_committed`` stops at an open transaction;
* faust-streaming 0.15.3 worker (``store="memory://"``, one agent, one table, one
  sink topic, run as ``python -m faust -A app worker``) under
  ``processing_guarantee="at_least_once"`` and then ``"exactly_once"``: creates
  its leader and changelog topics, starts one transactional producer per assigned
  partition number under exactly_once, processes 20 messages (all 20 in the sink
  for ``read_committed``), commits source offsets 5 + 15 = 20, exits 0 on SIGTERM;
  no warning or error in its log nor in the broker's. (Under exactly_once its
  changelog carries transaction markers, 22 offsets for 20 records, but the sink
  has none, 20 offsets for 20 records: Faust sends to a topic the app does not
  consume outside the transaction, upstream issue #177, not a broker matter.)

New 4.4 clusters are formatted with ``transaction.version=2`` (KIP-890 part 2);
clients on the v0 transaction requests above get the previous protocol, as the
tests show. Only 4.x releases fit this pom and ``log4j2.yaml``: 3.x brokers log
through log4j 1 (reload4j) and would need a ``log4j.properties`` instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from infra import data_home

DEFAULT_VERSION = "4.4.0"
DEFAULT_PORT = 9092
HOST = "127.0.0.1"
LOG_TAIL_LINES = 40
STOP_TIMEOUT_S = 30.0
# Start-up waits while the broker's log grows (log recovery of many partitions), up to this.
START_CEILING_S = 600.0
# Modest heap and G1 with short pauses: the broker shares 2 cores with the app under test.
JVM_OPTIONS = ("-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
INSTALL_HINT = (
    "install Java 17+ and Maven (apt-get install openjdk-17-jre-headless maven), "
    "or point BROKER_URL=kafka://host:port at an existing Kafka cluster instead"
)

_HERE = Path(__file__).resolve().parent
POM = _HERE / "pom.xml"
LOG4J_CONFIG = _HERE / "log4j2.yaml"

# The brokers this process launched, by pid. Outliving us is the point; holding the
# Popen also stops Python from warning "subprocess N is still running" when an
# unreferenced Popen of a live child is garbage collected.
_LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}


class KafkaToolingError(RuntimeError):
    """Java or Maven is missing, or the Kafka jars could not be resolved."""


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message quotes its log's first error and tail."""


@dataclass(frozen=True)
class BrokerInfo:
    """A running local broker and how to reach it.

    Besides the main listener on ``port`` the broker has a ``PROXIED`` listener for
    fault injection: it listens on ``proxied_listener_port`` but advertises
    ``proxied_bootstrap``, where a TCP proxy is expected to listen and forward to
    ``proxied_listener_port``. Clients bootstrapping at ``proxied_bootstrap`` are then
    told to reconnect through the proxy, so every byte they exchange crosses it.
    """

    bootstrap: str
    port: int
    controller_port: int
    proxied_listener_port: int
    proxied_advertised_port: int
    proxied_bootstrap: str
    pid: int
    data_dir: Path
    log_path: Path


@dataclass(frozen=True)
class _Layout:
    """The files of the broker for one port, all under ``root``."""

    port: int
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def log_dirs(self) -> Path:
        return self.root / "data"

    def info(self, pid: int) -> BrokerInfo:
        return BrokerInfo(
            bootstrap=f"{HOST}:{self.port}",
            port=self.port,
            controller_port=self.port + 1,
            proxied_listener_port=self.port + 2,
            proxied_advertised_port=self.port + 3,
            proxied_bootstrap=f"{HOST}:{self.port + 3}",
            pid=pid,
            data_dir=self.root,
            log_path=self.log_path,
        )


def broker_dir(port: int = DEFAULT_PORT, home: Path | str | None = None) -> Path:
    """Return the directory of the broker for ``port`` (it may not exist yet)."""
    return data_home(home) / f"kafka-broker-{port}"


def ensure_jars(version: str = DEFAULT_VERSION, home: Path | str | None = None) -> Path:
    """Return the directory holding the broker and tools jars of ``version``.

    The first call resolves them with Maven into a scratch directory that is renamed
    into place only when complete, so an interrupted download is never mistaken for a
    finished one; later calls return at once. A file lock serialises concurrent callers.
    """
    libs = data_home(home) / f"kafka-{version}" / "libs"
    if libs.is_dir():
        return libs
    _tool("java")  # Maven needs it too, and its own message about it is obscure
    mvn = _tool("mvn")
    with _exclusive(libs.parent / ".lock"):
        if not libs.is_dir():
            _resolve_jars(mvn, version, libs)
    return libs


def start(
    port: int = DEFAULT_PORT,
    home: Path | str | None = None,
    wait: float = 60.0,
    version: str = DEFAULT_VERSION,
) -> BrokerInfo:
    """Start the broker for ``port`` (formatting its storage on first use) and wait for it.

    Returns once a real Metadata request succeeds. Harmless when the broker is
    already up (its info is returned) or being started by another process (this
    call waits for it). Raises :class:`BrokerStartError` with the log tail when the
    JVM exits, or when it is not serving and its log has been silent for ``wait``
    seconds: a broker still loading thousands of partition logs keeps writing
    progress lines and is given up to :data:`START_CEILING_S`. The broker runs in
    its own session and outlives the caller; stop it with :func:`stop`.
    """
    layout = _layout(port, home)
    layout.root.mkdir(parents=True, exist_ok=True)
    with _exclusive(layout.root / ".lock"):
        pid = _running_pid(layout)
        if pid is None:
            pid = _launch(layout, ensure_jars(version, home))
    _wait_until_serving(layout, pid, wait)
    return layout.info(pid)


def status(port: int = DEFAULT_PORT, home: Path | str | None = None) -> BrokerInfo | None:
    """Return the broker for ``port`` if its process runs and it answers a Metadata request."""
    layout = _layout(port, home)
    pid = _running_pid(layout)
    if pid is None or not _serving(layout.port, timeout=5.0):
        return None
    return layout.info(pid)


def stop(port: int = DEFAULT_PORT, home: Path | str | None = None, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """Stop the broker for ``port`` and return its pid, or None if it was not running.

    SIGTERM lets Kafka shut down cleanly (flush logs, write the clean-shutdown
    marker, so the next start does not recover segments); SIGKILL follows only
    if it is still alive after ``timeout`` seconds.
    """
    layout = _layout(port, home)
    if not layout.root.is_dir():
        return None
    with _exclusive(layout.root / ".lock"):
        pid = _running_pid(layout)
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            if not _wait_for_exit(pid, layout, timeout):
                _signal(pid, signal.SIGKILL)
                _wait_for_exit(pid, layout, STOP_TIMEOUT_S)
        layout.pid_file.unlink(missing_ok=True)
    return pid


def reset(port: int = DEFAULT_PORT, home: Path | str | None = None) -> int | None:
    """Stop the broker for ``port`` and delete its data (topics, offsets, cluster id).

    The next :func:`start` formats fresh storage. The jars are kept. Returns the pid
    that was stopped, or None. For a clean slate (CI does it on every run) and for a
    data directory grown large with the topics of many lab and benchmark runs.
    """
    pid = stop(port, home)
    layout = _layout(port, home)
    if layout.root.is_dir():
        with _exclusive(layout.root / ".lock"):
            shutil.rmtree(layout.log_dirs, ignore_errors=True)
            for path in (layout.config, layout.log_path, layout.pid_file):
                path.unlink(missing_ok=True)
    return pid


async def metadata_ok(bootstrap: str, timeout: float = 5.0) -> bool:
    """Return whether ``bootstrap`` answers a Metadata request naming at least one broker.

    An open port is not enough: a starting broker accepts connections before it
    serves requests. This is the check :func:`start` and :func:`status` rely on,
    usable from async code too.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            cluster = await admin.describe_cluster()
        return bool(cluster["brokers"])
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()


def _layout(port: int, home: Path | str | None) -> _Layout:
    return _Layout(port=port, root=broker_dir(port, home))


def _tool(name: str) -> str:
    """Return the path of ``java`` or ``mvn``, raising :class:`KafkaToolingError` if missing.

    ``java`` is taken from ``JAVA_HOME`` when set, as Maven does.
    """
    java_home = os.environ.get("JAVA_HOME")
    if name == "java" and java_home and os.access(Path(java_home, "bin", "java"), os.X_OK):
        return str(Path(java_home, "bin", "java"))
    path = shutil.which(name)
    if path is None:
        raise KafkaToolingError(f"'{name}' is not on PATH: {INSTALL_HINT}.")
    return path


def _resolve_jars(mvn: str, version: str, libs: Path) -> None:
    """Copy ``version``'s broker and tools jars with their dependencies into ``libs``."""
    scratch = libs.with_name(libs.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    command = [
        mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
        f"-Dkafka.version={version}", f"-DoutputDirectory={scratch}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
        output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise KafkaToolingError(
            f"Maven could not resolve Kafka {version} (exit {result.returncode}); "
            f"is Maven Central reachable? Otherwise {INSTALL_HINT}.\n{output}"
        )
    scratch.rename(libs)


def _server_properties(layout: _Layout) -> str:
    """Return the config of a one-node cluster that is both broker and controller.

    Every listener binds 127.0.0.1 only. Internal topics get replication factor 1
    (and min ISR 1), without which transactions and group commits cannot work on a
    single node. ``group.initial.rebalance.delay.ms=0`` spares each test the default
    3 s wait before the first group assignment.
    """
    port = layout.port
    return "\n".join(
        (
            "# Written by infra/kafka/__init__.py on every start; edits are lost.",
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{HOST}:{port + 1}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{port + 1},PROXIED://{HOST}:{port + 2}",
            f"advertised.listeners=PLAINTEXT://{HOST}:{port},PROXIED://{HOST}:{port + 3}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT",
            f"log.dirs={layout.log_dirs}",
            "auto.create.topics.enable=true",
            "group.initial.rebalance.delay.ms=0",
            *replication_properties(1),
            "",
        )
    )


def replication_defaults(brokers: int) -> tuple[int, int]:
    """Return (replication factor, min.insync.replicas) fit for a cluster of ``brokers``.

    One broker: 1/1, the only choice. Three or more: 3/2, the usual production pair:
    an acks=all write survives the loss of one broker and the partition stays
    writable while one replica is down. Two: 2/1 (2/2 would stop every write while
    either broker is down). The broker defaults of local clusters and the
    REPLICATION_FACTOR / MIN_INSYNC_REPLICAS defaults of the app both come from here.
    """
    replication = max(1, min(brokers, 3))
    return replication, (2 if replication >= 3 else 1)


def replication_properties(brokers: int) -> tuple[str, ...]:
    """Broker config lines for the replication of ``brokers`` nodes: topic defaults and internal topics.

    Without internal topics the cluster can host (replication factor <= brokers),
    transactions and group commits cannot work at all.
    """
    replication, min_isr = replication_defaults(brokers)
    return (
        f"default.replication.factor={replication}",
        f"min.insync.replicas={min_isr}",
        f"offsets.topic.replication.factor={replication}",
        f"transaction.state.log.replication.factor={replication}",
        f"transaction.state.log.min.isr={min_isr}",
        f"share.coordinator.state.topic.replication.factor={replication}",
        f"share.coordinator.state.topic.min.isr={min_isr}",
    )


def _launch(
    layout: _Layout, libs: Path, properties: str | None = None, cluster_id: str | None = None,
    jvm_options: tuple[str, ...] = JVM_OPTIONS,
) -> int:
    """Write the config, format storage if new, start the JVM detached and return its pid.

    ``properties`` defaults to the one-node config and ``cluster_id`` to a fresh id;
    the nodes of a cluster (``infra.kafka.cluster``) pass their own config and the
    cluster's shared id. The JVM's stdout and stderr both go to ``server.log``
    (``log4j2.yaml`` logs to stdout), so the file also shows failures that happen
    before logging is set up.
    """
    java = _tool("java")
    classpath = ["-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]
    layout.config.write_text(properties or _server_properties(layout), encoding="utf-8")
    if layout.log_path.exists():
        layout.log_path.replace(layout.log_path.with_name(layout.log_path.name + ".1"))
    with layout.log_path.open("ab") as log:
        if not (layout.log_dirs / "meta.properties").exists():
            _format_storage([java, *classpath], layout, log, cluster_id or _new_cluster_id())
        process = subprocess.Popen(
            [java, *jvm_options, *classpath, "kafka.Kafka", str(layout.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=layout.root,  # where a crashing JVM writes hs_err_pid*.log
            start_new_session=True,  # a Ctrl-C in the caller's terminal must not reach the broker
        )
    _LAUNCHED[process.pid] = process
    layout.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
    return process.pid


def _format_storage(java_command: list[str], layout: _Layout, log: IO[bytes], cluster_id: str) -> None:
    """Format ``log.dirs`` for a new KRaft node of cluster ``cluster_id``."""
    command = [*java_command, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(layout.config)]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise BrokerStartError(
            f"formatting {layout.log_dirs} failed (exit {result.returncode}). {_log_excerpt(layout.log_path)}"
        )


def _new_cluster_id() -> str:
    """Return a Kafka Uuid string: URL-safe base64 of 16 random bytes, unpadded.

    Like Kafka's ``Uuid.randomUuid`` it never starts with '-', which the command
    line parser would take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _running_pid(layout: _Layout) -> int | None:
    """Return the pid in the pid file if that process is still this port's broker."""
    try:
        pid = int(layout.pid_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return pid if _is_broker(pid, layout) else None


def _is_broker(pid: int, layout: _Layout) -> bool:
    """Return whether ``pid`` is alive and is this port's broker JVM.

    For a broker this process launched, its Popen is the authority (and polling it
    reaps an exited one, which would otherwise linger as a zombie that looks alive).
    Any other pid is checked in /proc, since a stale pid file may name a pid that
    has been reused: its command line must name this port's config. That test can
    only misfire while the exec is still under way, when the command line reads
    empty for an instant; ``start`` launches under a file lock, so another process
    could only see that in the microseconds before the lock is released. The
    process name and working directory are no better identities: the name changes
    late in exec, and the JVM briefly chdirs to /tmp/hsperfdata_<user> at start-up.
    """
    process = _LAUNCHED.get(pid)
    if process is not None:
        if process.poll() is None:
            return True
        del _LAUNCHED[pid]
        return False
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(layout.config).encode() in command_line.split(b"\0")


def _serving(port: int, timeout: float) -> bool:
    """Return whether the main listener on ``port`` answers a Metadata request.

    The port is tried first so that a down broker stays quiet: aiokafka would log
    a connection error for every attempt.
    """
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError:
        return False
    return asyncio.run(metadata_ok(f"{HOST}:{port}", timeout))


def _wait_until_serving(layout: _Layout, pid: int, wait: float) -> None:
    """Poll until the broker serves Metadata; raise with its log if it dies or stalls.

    The clock restarts whenever the broker log grows, so a broker recovering a big
    data directory is not declared dead while it is visibly making progress.
    """
    started = last_progress = time.monotonic()
    log_size = _size(layout.log_path)
    while True:
        if not _is_broker(pid, layout):
            raise BrokerStartError(f"Kafka broker (pid {pid}) exited during start-up. {_log_excerpt(layout.log_path)}")
        now = time.monotonic()
        if (size := _size(layout.log_path)) != log_size:
            log_size, last_progress = size, now
        remaining = min(wait - (now - last_progress), START_CEILING_S - (now - started))
        if _serving(layout.port, timeout=max(1.0, min(5.0, remaining))):
            return
        if remaining <= 0:
            raise BrokerStartError(
                f"Kafka broker (pid {pid}) not serving on {HOST}:{layout.port} after {now - started:.0f} s "
                f"(log silent for {now - last_progress:.0f} s). If its data directory {layout.log_dirs} "
                f"holds thousands of old topics, `faust -A streams_app kafka reset` starts afresh. "
                f"{_log_excerpt(layout.log_path)}"
            )
        time.sleep(0.25)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _log_excerpt(path: Path) -> str:
    """Return the error that stopped a broker (or its log's first ERROR) and the log's tail.

    The tail alone often misleads: a broker that fails to start logs a hundred lines
    of orderly shutdown after the error that matters. The first ERROR can mislead too: a
    node starting beside others may log a passing one first (NotControllerException while
    the quorum elects). So the last fatal ERROR (Kafka's "Exiting Kafka due to fatal
    exception") is quoted with the root cause of its stack trace, if there is one.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"No broker log: {exc}"
    errors = [i for i, line in enumerate(lines) if " ERROR " in line or " FATAL " in line]
    fatal = [i for i in errors if "fatal" in lines[i].lower()]
    if fatal:
        at = fatal[-1]
        trace = list(itertools.takewhile(lambda line: not line.startswith("["), lines[at + 1:]))
        causes = [line for line in trace if line.startswith("Caused by:")]
        quoted = "\n".join([lines[at], *trace[:1], *causes[-1:]])
        heading = "The error that stopped it"
    else:
        quoted = "\n".join(lines[errors[0] : errors[0] + 2]) if errors else "(none)"
        heading = "First error"
    tail = lines[-LOG_TAIL_LINES:]
    return f"{heading}, in {path}:\n{quoted}\n--- last {len(tail)} lines ---\n" + "\n".join(tail)


def _signal(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``, ignoring a process that has just exited."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_for_exit(pid: int, layout: _Layout, timeout: float) -> bool:
    """Return True once ``pid`` is no longer the broker, False if still after ``timeout``."""
    deadline = time.monotonic() + timeout
    while _is_broker(pid, layout):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock, serialising processes that set up the same thing."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield
