"""Run one lab experiment: pipeline up, traffic in, fault injected, drain, count.

``run_experiment`` is what ``faust -A streams_app lab run`` calls. Each run
gets its own topics, consumer group, tables and sink database (names embed a
run id), so runs never see each other's data. The story of a run:

1. create the topics, generate seeded traffic (valid payments, exact re-sends,
   malformed records);
2. inject the fault: a worker armed with a crash point kills itself with
   SIGKILL at the Nth pass (restarted K times), or the runner SIGKILLs workers
   at seeded random moments, or a second worker dies and a third joins, or a
   TCP proxy drops produce answers;
3. wait until the consumer group has committed past every record of every
   pipeline topic (read back from Kafka, not asked of the workers);
4. stop the workers cleanly and count with :mod:`lab.checker`.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from common.readback import committed_offsets, read_topic, uncommitted
from infra.kafka.cluster import LocalCluster
from streams_app.admin import delete_topics_containing, ensure_topics, send_records
from streams_app.settings import Settings
from streams_app.traffic import Traffic, generate

from .apps import chunks
from .checker import check, duplicate_counted_topics
from .proxy import FaultProxy
from .scenarios import (
    API_SINKS,
    DB_SINKS,
    FAULTS,
    GUARANTEES,
    SINKS,
    Fault,
    Prediction,
    applies,
    predict,
    sink_env,
)
from .workers import PaymentApiProcess, PipelineConfig, WorkerProcess

SOURCE_TOPICS = ("raw", "events", "unique", "applied")


@dataclass
class Injected:
    kills: int = 0
    restarts: int = 0
    rebalances: int = 0
    retries: int = 0


@dataclass
class ExperimentResult:
    guarantee: str
    sink: str
    fault: str
    seed: int
    faust_fixes: str
    producer_idempotence: bool
    counts: dict
    injected: Injected
    prediction: Prediction
    drained: bool
    seconds: float
    run_id: str
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> dict[str, bool]:
        return self.prediction.holds(self.counts)

    @property
    def as_predicted(self) -> bool:
        return self.drained and all(self.verdict.values())

    def as_json(self) -> dict:
        return {
            "guarantee": self.guarantee, "sink": self.sink, "fault": self.fault,
            **{k: v for k, v in self.counts.items() if k != "mismatch_examples"},
            **asdict(self.injected),
            "seed": self.seed, "faust_fixes": self.faust_fixes,
            "producer_idempotence": self.producer_idempotence,
            "drained": self.drained, "seconds": round(self.seconds, 1),
            "predicted": self.prediction.expect, "why": self.prediction.why,
            "as_predicted": self.as_predicted, "run_id": self.run_id,
            "mismatch_examples": self.counts.get("mismatch_examples", []),
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, data: dict) -> ExperimentResult:
        """The inverse of :meth:`as_json` (a saved matrix cell, for ``lab matrix --resume``)."""
        meta = {"guarantee", "sink", "fault", "seed", "faust_fixes", "producer_idempotence", "drained",
                "seconds", "predicted", "why", "as_predicted", "run_id", "notes", "cell", "code"}
        injected = {f.name for f in fields(Injected)}
        counts = {k: v for k, v in data.items() if k not in meta | injected}
        return cls(
            guarantee=data["guarantee"], sink=data["sink"], fault=data["fault"], seed=data["seed"],
            faust_fixes=data["faust_fixes"], producer_idempotence=data["producer_idempotence"],
            counts=counts, injected=Injected(**{k: data[k] for k in injected}),
            prediction=Prediction(data["predicted"], data["why"]), drained=data["drained"],
            seconds=data["seconds"], run_id=data["run_id"], notes=data.get("notes", []),
        )


def run_experiment(
    guarantee: str, sink: str, fault: str, *, events: int = 300, kills: int = 2, seed: int = 1,
    bootstrap: str = "127.0.0.1:9092", workdir: Path | None = None, partitions: int = 4,
    faust_fixes: str = "all", producer_idempotence: bool = True, drain_timeout: float = 180.0,
    keep_topics: bool = False,
) -> ExperimentResult:
    """Run one cell of the matrix and return its counts and verdict.

    The run's topics (named after its unique ``run_id``) are deleted once counted,
    unless ``keep_topics``: kept, they let you inspect the run with Kafka's tools.
    """
    if guarantee not in GUARANTEES or sink not in SINKS or fault not in FAULTS:
        raise ValueError(f"unknown guarantee/sink/fault: {guarantee}/{sink}/{fault}")
    if not applies(sink, fault):
        needs = "a database sink (" + ", ".join(DB_SINKS) + ")" if FAULTS[fault].needs == "postgres" \
            else "an API sink (" + ", ".join(API_SINKS) + ")"
        raise ValueError(f"the fault {fault} needs {needs}, not {sink}")
    run_id = _run_id(guarantee, sink, fault, seed)
    workdir = (workdir or Path("lab-runs")) / run_id
    env = sink_env(sink)
    config = PipelineConfig(
        run_id=run_id, workdir=workdir, bootstrap=bootstrap, guarantee=guarantee,
        sink_mode=env["SINK_MODE"], sink_target=env["SINK_TARGET"], partitions=partitions,
        faust_fixes=faust_fixes,
        extra_env={"PRODUCER_IDEMPOTENCE": "true" if producer_idempotence else "false"},
    )
    if FAULTS[fault].needs == "postgres":
        config.sink_db = lab_database(run_id)
    traffic = generate(events, duplicate_rate=0.2, bad_rate=0.05, seed=seed, id_prefix=run_id)
    run = _Run(config, traffic, FAULTS[fault], kills, random.Random(seed))
    started = time.monotonic()
    create_topics(config)
    try:
        if config.sink_target == "api":
            run.start_payment_api()
        inject = _FAULT_RUNNERS.get(fault, _crash_points)
        workers = inject(run)
        # The budget grows with the input: 5,000 events take minutes on two shared cores.
        drained = wait_drained(config, workers, max(drain_timeout, 0.1 * events), run.notes, run.injected)
        if fault == "store-error":  # the restarts the failed writes caused, as the worker logged them
            run.injected.restarts += sum(w.log_path.read_text(errors="replace").count("FAULT: write")
                                         for w in workers)
    finally:
        run.close()
    counts = asyncio.run(check(config, traffic)).as_dict()
    if not keep_topics:
        asyncio.run(delete_topics_containing(bootstrap, run_id))
    return ExperimentResult(
        guarantee=guarantee, sink=sink, fault=fault, seed=seed, faust_fixes=faust_fixes,
        producer_idempotence=producer_idempotence, counts=counts, injected=run.injected,
        prediction=predict(guarantee, sink, fault, producer_idempotence),
        drained=drained, seconds=time.monotonic() - started, run_id=run_id, notes=run.notes,
    )


@dataclass
class _Run:
    """One experiment in progress: what it runs on and what it has done so far."""

    config: PipelineConfig
    traffic: Traffic
    fault: Fault
    kills: int
    rng: random.Random
    injected: Injected = field(default_factory=Injected)
    notes: list[str] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    proxy: FaultProxy | None = None
    proxies: list[FaultProxy] = field(default_factory=list)  # network-partition: one per broker
    payment_api: PaymentApiProcess | None = None

    def start_payment_api(self) -> None:
        """The external system of an API sink; the API's own faults start armed."""
        faults = {"api-timeout": {"delay_ms": API_SLOW_MS},
                  "api-drop-after-commit": {"drop_after_commit": API_FAULTY_CHARGES}}.get(self.fault.name, {})
        self.payment_api = PaymentApiProcess(self.config.workdir, **faults).start()
        self.config.payment_api_url = self.payment_api.url
        self.config.payment_api_db = self.payment_api.db_url
        self.config.extra_env["PAYMENT_API_TIMEOUT"] = str(API_TIMEOUT_S)

    def worker(self, name: str = "w1") -> WorkerProcess:
        worker = WorkerProcess(self.config, name)
        self.workers.append(worker)
        return worker

    def send(self, records: list) -> None:
        asyncio.run(send_records(self.config.bootstrap, self.config.topic("raw"), records))

    def close(self) -> None:
        """Stop every worker cleanly (SIGTERM) and the proxy, whatever happened."""
        for worker in self.workers:
            try:
                worker.stop()
            except TimeoutError as exc:
                self.notes.append(str(exc).splitlines()[0])
        if self.proxy is not None:
            stats = self.proxy.stats
            self.injected.retries = stats.dropped_responses
            if stats.dropped_responses or stats.spared_responses:
                prefix = f"{self.config.run_id}"
                topics = ", ".join(f"{topic.removeprefix(prefix).lstrip('.-')} {n}"
                                   for topic, n in sorted(stats.dropped_topics.items()))
                self.notes.append(f"fault proxy: {stats.dropped_responses} answers dropped (partitions of: "
                                  f"{topics or 'none'}), {stats.spared_responses} others passed on (nothing appended, or no counted topic)")
            self.proxy.stop()
        for proxy in self.proxies:
            proxy.stop()
        if self.payment_api is not None:
            self.payment_api.stop()
            self.injected.retries += sum(
                w.log_path.read_text(errors="replace").count("as it raised RetryableError")
                for w in self.workers if w.log_path.exists()
            )


def _run_id(guarantee: str, sink: str, fault: str, seed: int) -> str:
    short = {"at_least_once": "alo", "exactly_once": "eos", "at_most_once": "amo"}[guarantee]
    return re.sub(r"[^A-Za-z0-9-]", "-", f"lab-{short}-{sink}-{fault}-{seed}-{uuid.uuid4().hex[:6]}")


def create_topics(config: PipelineConfig) -> None:
    """Create the run's topics as its workers would: from the settings a worker of the
    run reads (partitions, and on a cluster REPLICATION_FACTOR / MIN_INSYNC_REPLICAS)."""
    settings = Settings.from_env(config.env("topics", web_port=1))
    asyncio.run(ensure_topics(settings))


# -- fault injection ---------------------------------------------------------------


def _crash_points(run: _Run) -> list[WorkerProcess]:
    """A worker armed with the fault's crash point SIGKILLs itself there, K times."""
    run.send(run.traffic.records)  # a backlog: the worker is busy from its first second
    worker = run.worker()
    if run.fault.crash_point is not None:
        crash_at = run.fault.crash_point[run.config.guarantee]
        top = max(2, min(25, len(run.traffic.unique_events) // (3 * max(run.kills, 1))))
        for _ in range(run.kills):
            nth = run.rng.randint(2, top)
            worker.start(crash_at=f"{crash_at}:{nth}")
            if not _wait_for_crash(worker, run.config, timeout=90.0):
                run.notes.append(f"crash point {crash_at}:{nth} not reached before the drain")
                return [worker]
            run.injected.kills += 1
            run.injected.restarts += 1
    worker.start()
    worker.wait_ready()
    return [worker]


def _wait_for_crash(worker: WorkerProcess, config: PipelineConfig, timeout: float) -> bool:
    """True once the worker died by SIGKILL; False if it drained without crashing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = worker.wait_exit(1.0)
        if code is not None:
            if code == -9:
                return True
            raise RuntimeError(f"worker exited with {code}, not by its crash point:\n{worker.log_tail()}")
        if worker.running and uncommitted_records(config) == 0:
            return False
    raise TimeoutError(f"worker neither crashed nor drained in {timeout} s:\n{worker.log_tail()}")


def _random_kills(run: _Run) -> list[WorkerProcess]:
    """SIGKILL at a seeded random moment while each chunk of traffic is processed."""
    worker = run.worker()
    worker.start()
    worker.wait_ready()
    parts = chunks(run.traffic.records, run.kills + 1)
    for chunk in parts[:-1]:
        run.send(chunk)
        time.sleep(run.rng.uniform(0.05, 1.0))
        worker.kill()
        run.injected.kills += 1
        worker.start()
        run.injected.restarts += 1
        worker.wait_ready()
    run.send(parts[-1])
    return [worker]


def _rebalance(run: _Run) -> list[WorkerProcess]:
    """Two workers share the partitions; one is SIGKILLed mid-traffic, a third joins."""
    w1, w2 = run.worker("w1"), run.worker("w2")
    for w in (w1, w2):
        w.start()
    for w in (w1, w2):
        w.wait_ready()
    first, second, third = chunks(run.traffic.records, 3)
    run.send(first)
    time.sleep(run.rng.uniform(0.1, 0.8))
    w2.kill()
    run.injected.kills += 1
    run.injected.rebalances += 1  # the group drops w2 after its session timeout
    run.send(second)
    w3 = run.worker("w3")
    w3.start()
    w3.wait_ready()
    run.injected.rebalances += 1
    run.send(third)
    return [w1, w3]


def _producer_retry(run: _Run) -> list[WorkerProcess]:
    """The worker talks to Kafka through a proxy that loses some produce answers."""
    from infra import kafka

    hosts = run.config.bootstrap.split(",")
    info = kafka.status(int(hosts[0].rsplit(":", 1)[1])) if len(hosts) == 1 else None
    if info is None:
        raise RuntimeError(
            f"producer-retry needs the local single broker (its PROXIED listener), not {run.config.bootstrap}"
        )
    run.proxy = FaultProxy(
        listen_port=info.proxied_advertised_port, target_port=info.proxied_listener_port,
        drop_rate=0.0, max_drops=max(3, run.kills * 3), seed=run.rng.randrange(1 << 30),
        topics=frozenset(duplicate_counted_topics(run.config)),
    ).start()
    # A short request timeout notices a lost answer in seconds, not Faust's 20 minutes.
    run.config.extra_env.update({
        "PRODUCER_REQUEST_TIMEOUT": "3", "BROKER_URL": f"kafka://{info.proxied_bootstrap}",
    })
    worker = run.worker()
    worker.start()
    worker.wait_ready()
    # Answers are lost only from now on: the drops go to the traffic's produce requests, not
    # to start-up's (the full matrix on dfbb7b9 had a run whose 6 drops all missed the outputs:
    # 0 duplicates; rerun: 143). Only requests for a counted topic are candidates, and a run of
    # a few hundred events makes only a handful: one in two of them (up to max_drops).
    run.proxy.drop_rate = 0.5
    run.send(run.traffic.records)
    return [worker]


#: The sink's HTTP timeout in the lab, and how slow the API is under api-timeout.
API_TIMEOUT_S = 0.5
API_SLOW_MS = 1500
#: Charges that meet the API's fault (slow, or answer dropped after the commit).
API_FAULTY_CHARGES = 5


def _api_faults(run: _Run) -> list[WorkerProcess]:
    """The payment API misbehaves for its first charges (armed at its start), then recovers."""
    worker = run.worker()
    worker.start()
    worker.wait_ready()
    run.send(run.traffic.records)
    assert run.payment_api is not None
    if run.fault.name == "api-timeout":
        deadline = time.monotonic() + 120.0
        while run.payment_api.stats()["charges"] < API_FAULTY_CHARGES and time.monotonic() < deadline:
            time.sleep(0.2)
        run.payment_api.set_faults(delay_ms=0)
    return [worker]


#: How long a broker, the database or the payment API stays down, and a zombie paused
#: (past the workers' 10 s session timeout in the lab).
OUTAGE_S = 20.0
PAUSE_S = 30.0
ZOMBIE_PAUSE_S = 25.0
#: How long every broker stays out of a worker's reach (kafka-outage): past the session
#: timeout, its producer's request timeout and a restart's start-up.
KAFKA_AWAY_S = 40.0
#: The lab's own PostgreSQL server (db-outage stops it: never the shared one of the tests).
LAB_PG_PORT = 5435


def local_cluster(bootstrap: str) -> LocalCluster | None:
    """The local cluster ``bootstrap`` names (three or more hosts, all local), or None."""
    hosts = bootstrap.split(",")
    if len(hosts) < 3 or any(not h.startswith(("127.0.0.1:", "localhost:")) for h in hosts):
        return None
    return LocalCluster(tuple(int(h.rsplit(":", 1)[1]) for h in hosts))


def _cluster(run: _Run) -> LocalCluster:
    cluster = local_cluster(run.config.bootstrap)
    if cluster is None:
        raise RuntimeError(
            f"{run.fault.name} needs the local 3-broker cluster, not {run.config.bootstrap}: start it with "
            "`faust -A streams_app kafka start --brokers 3` and pass BROKER_URL (or --bootstrap) listing its hosts"
        )
    return cluster


def _one_worker_half_the_traffic(run: _Run) -> tuple[WorkerProcess, list]:
    """Start a worker, send the first half of the traffic; return it and the second half."""
    worker = run.worker()
    worker.start()
    worker.wait_ready()
    first, second = chunks(run.traffic.records, 2)
    run.send(first)
    time.sleep(run.rng.uniform(0.2, 1.0))  # the fault lands while the first half is processed
    return worker, second


def _broker_faults(run: _Run) -> list[WorkerProcess]:
    """A broker dies (broker-kill, controller-kill) or hangs (broker-pause) mid-stream: its
    partitions get new leaders from the in-sync replicas; the pipeline must not notice more
    than a pause. The second half of the traffic is sent while it is down."""
    cluster = _cluster(run)
    worker, rest = _one_worker_half_the_traffic(run)
    name = run.fault.name
    node = cluster.active_controller() if name == "controller-kill" else \
        cluster.leader_of(run.config.topic("applied"), 0)
    run.notes.append(f"{name}: node {node}")
    if name == "broker-pause":
        cluster.pause(node)
        # The traffic's producer waits, as any would, for the partitions the paused leader
        # holds (its requests hang until the broker answers or they time out): sent beside
        # the pause, not before it ends, or the send outlives its timeout while paused.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-send") as sender:
            sent = sender.submit(run.send, rest)
            time.sleep(PAUSE_S)
            cluster.resume(node)
            sent.result()
    else:
        cluster.kill(node)
        run.injected.kills += 1
        run.send(rest)
        time.sleep(OUTAGE_S)
        cluster.restart(node)
    run.injected.restarts += 1
    return [worker]


def _proxies_to_every_broker(run: _Run, cluster: LocalCluster) -> dict[int, FaultProxy]:
    """The worker reaches each broker through its own fault proxy (every node advertises its
    proxy on its PROXIED listener); the lab itself still reaches the brokers directly."""
    proxies = {}
    for node in cluster.node_ids:
        advertised, listener = cluster.proxied_ports(node)
        proxies[node] = FaultProxy(listen_port=advertised, target_port=listener, drop_rate=0.0).start()
    run.proxies.extend(proxies.values())
    run.config.extra_env["BROKER_URL"] = "kafka://" + ";".join(cluster.proxied_bootstrap.split(","))
    return proxies


def _network_partition(run: _Run) -> list[WorkerProcess]:
    """The proxy to the leader of applied[0] cuts everything for PAUSE_S while the cluster
    itself sees that broker alive."""
    cluster = _cluster(run)
    proxies = _proxies_to_every_broker(run, cluster)
    worker, rest = _one_worker_half_the_traffic(run)
    node = cluster.leader_of(run.config.topic("applied"), 0)
    run.notes.append(f"network-partition: worker cut from node {node}")
    proxies[node].cut()
    run.send(rest)
    time.sleep(PAUSE_S)
    proxies[node].heal()
    return [worker]


def _kafka_outage(run: _Run) -> list[WorkerProcess]:
    """Every broker out of the worker's reach for KAFKA_AWAY_S (a link down, a cluster
    restarting, as the worker sees it) while the rest of the traffic reaches the cluster;
    halfway through, the worker is SIGKILLed and started again: a worker starting while Kafka
    is away must wait for it, not exit."""
    cluster = _cluster(run)
    proxies = _proxies_to_every_broker(run, cluster)
    worker, rest = _one_worker_half_the_traffic(run)
    for proxy in proxies.values():
        proxy.cut()
    run.send(rest)
    time.sleep(KAFKA_AWAY_S / 2)
    worker.kill()
    run.injected.kills += 1
    worker.start()
    run.injected.restarts += 1
    time.sleep(KAFKA_AWAY_S / 2)
    if not worker.running:
        run.notes.append(f"kafka-outage: the worker restarted while Kafka was away exited ({worker.returncode})")
    for proxy in proxies.values():
        proxy.heal()
    return [worker]


def _zombie(run: _Run) -> list[WorkerProcess]:
    """One of two workers is paused past its session timeout while it processes (its open
    transactions hold outputs), the other takes its partitions; then it wakes up fenced."""
    w1, w2 = run.worker("w1"), run.worker("w2")
    for w in (w1, w2):
        w.start()
    for w in (w1, w2):
        w.wait_ready()
    first, second = chunks(run.traffic.records, 2)
    run.send(first)
    time.sleep(run.rng.uniform(0.2, 0.8))
    w1.pause()
    run.injected.rebalances += 1
    run.send(second)
    time.sleep(ZOMBIE_PAUSE_S)
    w1.resume()
    run.injected.rebalances += 1
    return [w1, w2]


def _db_outage(run: _Run) -> list[WorkerProcess]:
    """The sink's PostgreSQL stops mid-stream (fast shutdown: connections cut) and comes back."""
    from infra import postgres

    worker, rest = _one_worker_half_the_traffic(run)
    postgres.stop(LAB_PG_PORT)
    run.send(rest)
    time.sleep(OUTAGE_S)
    postgres.start(LAB_PG_PORT)
    return [worker]


#: store-error: which write of seen ids fails, in how many of the worker's first lifetimes.
STORE_ERROR_AT = "3:3"


def _store_error(run: _Run) -> list[WorkerProcess]:
    """The disk under the dedup state fills up in the middle of a batch, three times
    (streams_app/faults.py, FAULT_STORE_ERROR_AT): the worker must restart each time and
    the batch come again, with nothing dead-lettered (faust_guarantees/dependencies.py)."""
    run.config.extra_env["FAULT_STORE_ERROR_AT"] = STORE_ERROR_AT
    run.send(run.traffic.records)
    worker = run.worker()
    worker.start()
    worker.wait_ready()
    return [worker]


def _api_outage(run: _Run) -> list[WorkerProcess]:
    """The payment API goes down mid-stream and comes back on the same port and data."""
    worker, rest = _one_worker_half_the_traffic(run)
    assert run.payment_api is not None
    run.payment_api.stop()
    run.send(rest)
    time.sleep(OUTAGE_S)
    run.payment_api.start()
    return [worker]


def lab_database(run_id: str) -> str:
    """A fresh database for the run on the lab's own PostgreSQL server (started if needed)."""
    from urllib.parse import urlsplit

    import psycopg
    from psycopg import sql

    from infra import postgres

    server = postgres.start(LAB_PG_PORT)
    name = re.sub(r"[^a-z0-9_]", "_", run_id.lower())[:60]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlsplit(server.dsn)._replace(path=f"/{name}").geturl()


_FAULT_RUNNERS = {
    "broker-kill": _broker_faults,
    "broker-pause": _broker_faults,
    "controller-kill": _broker_faults,
    "network-partition": _network_partition,
    "kafka-outage": _kafka_outage,
    "zombie": _zombie,
    "db-outage": _db_outage,
    "api-outage": _api_outage,
    "store-error": _store_error,
    "api-timeout": _api_faults,
    "api-drop-after-commit": _api_faults,
    "random-kills": _random_kills,
    "rebalance": _rebalance,
    "producer-retry": _producer_retry,
}


# -- drain -----------------------------------------------------------------------------


def uncommitted_records(config: PipelineConfig) -> int:
    """Records of the source topics past the group's committed offsets."""
    async def count() -> int:
        committed = await committed_offsets(config.bootstrap, config.app_id)  # first: see module doc
        total = 0
        for suffix in SOURCE_TOPICS:
            total += uncommitted(await read_topic(config.bootstrap, config.topic(suffix)), committed)
        return total

    return asyncio.run(count())


def wait_drained(
    config: PipelineConfig, workers: list[WorkerProcess], timeout: float,
    notes: list[str] | None = None, injected: Injected | None = None,
) -> bool:
    """Wait until the group committed past every record, twice, 2 s apart.

    Reading the committed offsets BEFORE the topics makes this exact under
    at_least_once and exactly_once: every output of a committed record was
    written before its commit, so it is in the topics read afterwards. Under
    at_most_once offsets are committed before the work, so the wait adds a
    settle time for the work in flight.
    """
    notes = [] if notes is None else notes
    deadline = time.monotonic() + timeout
    clean_reads = 0
    while time.monotonic() < deadline:
        for worker in workers:
            if not worker.running:  # died where nobody asked it to: restart, and say so
                notes.append(f"{worker.name} exited unexpectedly ({worker.returncode}); restarted")
                worker.start()
                if injected is not None:
                    injected.restarts += 1
                try:
                    worker.wait_ready()
                except RuntimeError:  # died again while starting: the next pass restarts it
                    continue
        if uncommitted_records(config) == 0:
            clean_reads += 1
            if clean_reads == 2:
                if config.guarantee == "at_most_once":
                    time.sleep(3.0)
                return True
        else:
            clean_reads = 0
        time.sleep(2.0 if clean_reads else 1.0)
    notes.append(f"not drained after {timeout:.0f} s: {uncommitted_records(config)} records uncommitted")
    for worker in workers:  # the evidence of a stall, before the stop changes it
        if (stacks := worker.dump_stacks()) is not None:
            notes.append(f"{worker.name}'s stacks: {stacks}")
    return False
