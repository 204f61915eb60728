"""The systems under test, each started as its own process from a clean slate.

Every deployment gets a fresh consumer group, fresh output topics and a fresh
state directory, so nothing of an earlier run (committed offsets, RocksDB rows,
changelogs) can make a later one faster. All run as subprocesses forked onto
the SUT cores (:mod:`bench.affinity`) and are stopped with SIGTERM, so each gets
its graceful shutdown (final commit) exactly as in production.

- ``raw``: :mod:`bench.raw_loop`, reading the shared backlog topic.
- ``quix``: :mod:`bench.quix_pipeline`, reading the shared backlog topic.
- ``faust_min``: :mod:`bench.faust_minimal`, one stock Faust agent, reading its
  own copy of the backlog's first ``faust_records`` records.
- ``faust``: this project's worker, ``faust -A streams_app worker`` started by
  :class:`lab.workers.WorkerProcess` exactly as the lab and the tests start it,
  with a fresh APP_ID and TOPIC_PREFIX. Its input is ``{prefix}.raw``, so the
  benchmark copies the backlog (its first ``faust_records``) into it before the
  worker starts. By default it runs the dedup stage only (``STAGES=dedup``: the
  work the raw loop and Quix do: validate, dedup by event id in a changelogged
  table, forward), read on ``{prefix}.unique``; the ``_pipeline`` variants run
  the whole pipeline (dedup -> apply -> sink, one process and event loop),
  read on ``{prefix}.applied``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from lab.workers import REPO, PipelineConfig, WorkerProcess

from .affinity import Pinning
from .config import APP_DEFAULT, FAUST_DEFAULT_COMMIT_INTERVAL, PIPELINE, SHORT, FaustVariant, Guarantee
from .kafka_io import create_topics
from .raw_loop import DEFAULT_BATCH, changelog_topic

Kind = Literal["raw", "quix", "faust", "faust_min"]
KIND_LABEL = {"raw": "raw aiokafka loop", "quix": "Quix Streams", "faust": "Faust, this project's",
              "faust_min": "minimal Faust agent (stock Faust, one hop)"}
STOP_TIMEOUT_S = 45.0
#: What discard_state keeps: worker logs and py-spy profiles.
KEEP_SUFFIXES = (".log", ".txt")


def _app_default(name: str) -> int:
    """A setting's default in the pipeline (the benchmark does not set it)."""
    import dataclasses

    from streams_app.settings import Settings

    return int(next(f.default for f in dataclasses.fields(Settings) if f.name == name))


def _fetch_size() -> int:
    """The pipeline's fetch size per partition."""
    return _app_default("consumer_max_fetch_size")


def _poll_text() -> str:
    """The pipeline's bound on records per poll, as the label says it (0: none)."""
    bound = _app_default("max_poll_records")
    return f"{bound:,}" if bound else "unbounded"


@dataclass(frozen=True)
class SystemSpec:
    """A system and its settings: one row of the report."""

    kind: Kind
    guarantee: Guarantee
    variant: FaustVariant = field(default_factory=FaustVariant)

    @property
    def key(self) -> str:
        """The JSON key: ``raw_alo``, ``faust_eos``, ``faust_alo_ci0.1_buf131072``..."""
        return f"{self.kind}_{SHORT[self.guarantee]}{self.variant.suffix}"

    @property
    def label(self) -> str:
        text = f"{KIND_LABEL[self.kind]}, {self.guarantee}"
        if self.kind == "faust":
            text += " whole pipeline" if self.variant.stages == PIPELINE else " dedup stage"
            text += (f" (commit interval {self.commit_interval_s:g} s, "
                     f"stream buffer {self.variant.buffer_maxsize}, "
                     f"fetch {_fetch_size() // 2**20:g} MiB per partition, "
                     f"{_poll_text()} records per poll"
                     + (f", {self.variant.workers} worker processes)" if self.variant.workers > 1 else ")"))
        return text

    @property
    def commit_interval_s(self) -> float:
        """The pipeline's commit interval in this variant (its own default unless set)."""
        if self.variant.commit_interval != APP_DEFAULT:
            return float(self.variant.commit_interval)
        from streams_app.settings import DEFAULT_COMMIT_INTERVAL

        return DEFAULT_COMMIT_INTERVAL[self.guarantee]

    @property
    def reads_backlog(self) -> bool:
        """Whether it reads the shared backlog topic; the Faust systems get their own copy
        of it (its first ``faust_records`` records when set): their input topic is their own."""
        return self.kind in ("raw", "quix")

    @property
    def settings(self) -> dict[str, object]:
        """The knobs that matter for this system's figures, for the report."""
        if self.kind == "faust":
            return {"broker_commit_interval_s": self.commit_interval_s,
                    "stream_buffer_maxsize": int(self.variant.buffer_maxsize),
                    "consumer_max_fetch_size": _fetch_size(),
                    "broker_max_poll_records": _app_default("max_poll_records"),
                    "worker_processes": self.variant.workers,
                    "stages": "dedup -> apply -> sink" if self.variant.stages == PIPELINE else "dedup"}
        if self.kind in ("quix", "faust_min"):
            return {"commit_interval_s": float(FAUST_DEFAULT_COMMIT_INTERVAL)}
        return {"commit": f"per batch of up to {DEFAULT_BATCH} records"}

    def deploy(self, run_id: str, workdir: Path, bootstrap: str, partitions: int,
               shared_input: str | None = None) -> Deployment:
        """A deployment of this system named ``run_id``; ``shared_input`` is the
        topic to read (not the Faust pipeline's), else a fresh, empty input topic."""
        if self.kind == "faust":
            return FaustDeployment(self, run_id, workdir, bootstrap, partitions)
        return ScriptDeployment(self, run_id, workdir, bootstrap, partitions, shared_input)


class Deployment(ABC):
    """One system instance: its topics, group and state directory, and its process."""

    input_topic: str
    output_topic: str
    #: The topic its first stage writes: where processing shows first (the output
    #: itself for one-hop systems, {prefix}.unique for the Faust pipeline).
    first_hop_topic: str
    group: str
    #: True when the input topic is this deployment's own (the benchmark fills it).
    owns_input: bool

    def __init__(self, spec: SystemSpec, run_id: str, workdir: Path, bootstrap: str, partitions: int) -> None:
        self.spec = spec
        self.run_id = run_id
        self.workdir = workdir / run_id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap = bootstrap
        self.partitions = partitions
        self._process: subprocess.Popen[bytes] | None = None
        #: Processes of the system beyond the first (more workers of one group).
        self._others: list[subprocess.Popen[bytes]] = []
        #: Set when the last stop was not graceful (SIGTERM ignored, killed).
        self.stop_problem: str | None = None

    @abstractmethod
    async def prepare(self) -> None:
        """Create the topics the system reads and writes."""

    @abstractmethod
    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the system's process (in its own session)."""

    @property
    @abstractmethod
    def log_path(self) -> Path: ...

    def _spawn_others(self) -> list[subprocess.Popen[bytes]]:
        """Start the system's further processes, if it has any (more workers of one group)."""
        return []

    def start(self, pinning: Pinning) -> None:
        with pinning.for_child():
            self._process = self._spawn()
            self._others = self._spawn_others()

    @property
    def _processes(self) -> list[subprocess.Popen[bytes]]:
        return ([] if self._process is None else [self._process]) + self._others

    @property
    def pid(self) -> int:
        """The first process (the one profiled)."""
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def pids(self) -> list[int]:
        """Every process of the system (CPU and memory are their sum)."""
        assert self._process is not None, "not started"
        return [process.pid for process in self._processes]

    def alive(self) -> bool:
        return self._process is not None and all(process.poll() is None for process in self._processes)

    @property
    def exit_code(self) -> int | None:
        """The exit code of the first process that exited; None while all run."""
        return next((code for process in self._processes if (code := process.poll()) is not None), None)

    def stop(self) -> float:
        """SIGTERM, the graceful stop, to every process; return how long it took. A process
        still alive after STOP_TIMEOUT_S has its stacks dumped into its log and is killed."""
        started = time.monotonic()
        self.stop_problem = None
        running = [process for process in self._processes if process.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)
        for process in running:
            try:
                process.wait(timeout=max(1.0, STOP_TIMEOUT_S - (time.monotonic() - started)))
            except subprocess.TimeoutExpired:
                try:
                    self._dump_stacks(process.pid)
                finally:  # whatever the dump did, the process must not outlive the run
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=30)
                self.stop_problem = (f"ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s and was killed "
                                     f"(py-spy dump in {self.log_path})")
        return time.monotonic() - started

    def _dump_stacks(self, pid: int) -> None:
        py_spy = Path(sys.executable).with_name("py-spy")
        try:
            dump = subprocess.run([str(py_spy), "dump", "--pid", str(pid)],
                                  capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            dump = subprocess.CompletedProcess([], 1, "", f"py-spy dump failed: {exc!r}")
        with self.log_path.open("a") as log:
            log.write(f"\n==== py-spy dump after SIGTERM was ignored\n{dump.stdout}{dump.stderr}\n")

    def discard_state(self) -> None:
        """Delete the run's state directories and databases; keep its logs."""
        for path in self.workdir.iterdir():
            if path.suffix not in KEEP_SUFFIXES:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


class ScriptDeployment(Deployment):
    """One of the benchmark's own systems: ``python -m bench.raw_loop``,
    ``python -m bench.quix_pipeline`` or ``faust -A bench.faust_minimal worker``."""

    MODULES: ClassVar[dict[str, str]] = {"raw": "bench.raw_loop", "quix": "bench.quix_pipeline"}

    def __init__(self, spec: SystemSpec, run_id: str, workdir: Path, bootstrap: str, partitions: int,
                 shared_input: str | None) -> None:
        super().__init__(spec, run_id, workdir, bootstrap, partitions)
        self.owns_input = shared_input is None
        self.input_topic = shared_input or f"{run_id}.in"
        self.output_topic = self.first_hop_topic = f"{run_id}.out"
        self.group = run_id

    @property
    def log_path(self) -> Path:
        return self.workdir / "system.log"

    async def prepare(self) -> None:
        topics = [self.output_topic]
        if self.owns_input:
            topics.append(self.input_topic)
        if self.spec.kind == "raw":
            topics.append(changelog_topic(self.group))
        await create_topics(self.bootstrap, topics, self.partitions)

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of the process."""
        state_dir = str(self.workdir / "state")
        if self.spec.kind == "faust_min":
            return [sys.executable, "-m", "faust", "-A", "bench.faust_minimal", "worker", "-l", "warn"], {
                **os.environ, "BENCH_BOOTSTRAP": self.bootstrap, "BENCH_INPUT": self.input_topic,
                "BENCH_OUTPUT": self.output_topic, "BENCH_GROUP": self.group, "BENCH_STATE_DIR": state_dir,
                "BENCH_PARTITIONS": str(self.partitions), "BENCH_GUARANTEE": self.spec.guarantee,
            }
        return [
            sys.executable, "-m", self.MODULES[self.spec.kind], "--bootstrap", self.bootstrap,
            "--input", self.input_topic, "--output", self.output_topic, "--group", self.group,
            "--state-dir", state_dir, "--guarantee", self.spec.guarantee,
        ], dict(os.environ)

    def _spawn(self) -> subprocess.Popen[bytes]:
        command, env = self.command()
        with self.log_path.open("ab") as log:
            return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)


class FaustDeployment(Deployment):
    """The real pipeline: one ``faust -A streams_app worker`` via lab.workers."""

    def __init__(self, spec: SystemSpec, run_id: str, workdir: Path, bootstrap: str, partitions: int) -> None:
        super().__init__(spec, run_id, workdir, bootstrap, partitions)
        env = {
            "STREAM_BUFFER_MAXSIZE": spec.variant.buffer_maxsize,
            "STORE_URL": "rocksdb://",
            "STAGES": spec.variant.stages,
        }
        if spec.variant.commit_interval != APP_DEFAULT:
            env["BROKER_COMMIT_INTERVAL"] = spec.variant.commit_interval
        self.config = PipelineConfig(
            run_id=run_id, workdir=self.workdir, bootstrap=bootstrap, guarantee=spec.guarantee,
            partitions=partitions, sink_db=f"sqlite:///{self.workdir / 'sink.db'}", extra_env=env,
        )
        self.worker = WorkerProcess(self.config)
        #: More workers of the same group (the variant's worker processes beyond the first).
        self.others = [WorkerProcess(self.config, name=f"w{n}") for n in range(2, spec.variant.workers + 1)]
        self.owns_input = True
        self.input_topic = self.config.topic("raw")
        # The dedup stage's output (validated, deduplicated), or the whole pipeline's (also
        # applied to the balances).
        self.first_hop_topic = self.config.topic("unique")
        self.output_topic = self.config.topic("applied" if spec.variant.stages == PIPELINE else "unique")
        self.group = self.config.app_id

    @property
    def log_path(self) -> Path:
        return self.worker.log_path

    @property
    def table_dir(self) -> Path:
        """Where the worker keeps its RocksDB tables (APP_DATADIR of lab.workers)."""
        return self.workdir / f"{self.worker.name}-data"

    async def prepare(self) -> None:
        # The worker would create them too, but the benchmark fills {prefix}.raw first.
        names = [self.config.topic(s) for s in ("raw", "dlq", "events", "unique", "applied")]
        await create_topics(self.bootstrap, names, self.partitions)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.worker.start()
        assert self.worker.process is not None
        return self.worker.process

    def _spawn_others(self) -> list[subprocess.Popen[bytes]]:
        processes = []
        for worker in self.others:
            worker.start()
            assert worker.process is not None
            processes.append(worker.process)
        return processes
