"""Faust workers as subprocesses: start, wait until ready, stop cleanly or SIGKILL.

The lab and the integration tests run the real ``faust -A APP worker`` command (the
payments pipeline's ``streams_app``, or any other Faust app: lab/apps.py), configured
only through its environment, exactly as a user runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PipelineConfig:
    """One isolated pipeline: its own topics, group, tables and sink database."""

    run_id: str
    workdir: Path
    bootstrap: str = "127.0.0.1:9092"
    guarantee: str = "at_least_once"
    sink_mode: str = "idempotent"
    sink_target: str = "database"
    #: the payment API the sink calls when sink_target is "api", and its database
    payment_api_url: str = ""
    payment_api_db: str = ""
    partitions: int = 4
    sink_db: str = ""
    faust_fixes: str = "all"
    store: str = "rocksdb://"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute: the workers run in the repository (REPO), the lab wherever it was started,
        # and both must mean the same sink database and data directories.
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.sink_db:
            self.sink_db = f"sqlite:///{self.workdir / 'sink.db'}"

    @property
    def app_id(self) -> str:
        return self.run_id

    def topic(self, suffix: str) -> str:
        return f"{self.run_id}.{suffix}"

    def env(self, name: str, web_port: int, crash_at: str | None = None) -> dict[str, str]:
        """The environment of worker ``name``: everything the app reads, and nothing stale."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAULT_")}
        env.update({
            "APP_ID": self.app_id,
            "TOPIC_PREFIX": self.run_id,
            "BROKER_URL": f"kafka://{self.bootstrap}",
            "PROCESSING_GUARANTEE": self.guarantee,
            "SINK_MODE": self.sink_mode,
            "SINK_TARGET": self.sink_target,
            "SINK_DB": self.sink_db,
            "STORE_URL": self.store,
            "TOPIC_PARTITIONS": str(self.partitions),
            "APP_DATADIR": str(self.workdir / f"{name}-data"),
            "WEB_PORT": str(web_port),
            "FAUST_FIXES": self.faust_fixes,
            # Static membership: a worker restarted after SIGKILL takes back its
            # place at once instead of waiting for the session timeout.
            "CONSUMER_GROUP_INSTANCE_ID": f"{self.run_id}-{name}",
            "BROKER_SESSION_TIMEOUT": "10",
            "BROKER_HEARTBEAT_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        })
        if self.payment_api_url:
            env["PAYMENT_API_URL"] = self.payment_api_url
        if crash_at:
            env["FAULT_CRASH_AT"] = crash_at
        env.update(self.extra_env)
        return env


class FaustWorker:
    """One ``faust -A APP worker`` subprocess of any Faust app, configured only through its
    environment; restartable under the same name and web port. Ready once this start has
    logged "Worker: Ready" (table recovery is over)."""

    def __init__(self, app: str, workdir: Path, name: str, env: Callable[[str, int, str | None], dict[str, str]]) -> None:
        self.app = app
        self.name = name
        self.web_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self._env = env
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, crash_at: str | None = None) -> None:
        assert not self.running, f"{self.name} is already running"
        log = self.log_path.open("ab")
        log.write(f"\n==== start #{self.starts + 1} crash_at={crash_at}\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", self.app, "worker", "-l", "info"],
            cwd=REPO, env=self._env(self.name, self.web_port, crash_at),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def answers(self) -> bool:
        """The worker's web server answers (checked once the log says Ready)."""
        return True

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until this start logged "Worker: Ready" and :meth:`answers`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"worker {self.name} exited with {self.returncode}:\n{self.log_tail()}")
            if self._ready_since_last_start() and self.answers():
                return
            time.sleep(0.25)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def _ready_since_last_start(self) -> bool:
        try:
            log = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return "[^Worker]: Ready" in log.rsplit("==== start #", 1)[-1]

    def wait_exit(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 60.0) -> int | None:
        """Graceful stop (SIGTERM): Faust commits, flushes and closes its tables."""
        if not self.running:
            return self.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        code = self.wait_exit(timeout)
        if code is None:
            self.kill()
            raise TimeoutError(f"worker {self.name} ignored SIGTERM for {timeout} s:\n{self.log_tail()}")
        return code

    def pause(self) -> None:
        """SIGSTOP: the process and its sockets stay, it answers nothing (a long GC pause)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no shutdown hook, as in a power cut."""
        if self.running:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def dump_stacks(self) -> Path | None:
        """What a worker that stopped making progress waits on: every asyncio task's stack,
        which the worker writes into its own log on SIGUSR1 (mode's Worker), and every
        thread's (py-spy, if installed) into ``{name}.stacks.txt`` beside the log; that file,
        or None if py-spy could not run."""
        if not self.running:
            return None
        os.kill(self.process.pid, signal.SIGUSR1)
        py_spy = Path(sys.executable).with_name("py-spy")
        if not py_spy.exists():
            return None
        out = self.log_path.with_suffix(".stacks.txt")
        try:
            result = subprocess.run([str(py_spy), "dump", "--pid", str(self.process.pid)],
                                    capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        out.write_text(result.stdout + result.stderr)
        return out

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class WorkerProcess(FaustWorker):
    """A worker of the payments pipeline (``faust -A streams_app worker``) of one
    :class:`PipelineConfig`; ready once its ``/api/stats`` answers too."""

    def __init__(self, config: PipelineConfig, name: str = "w1") -> None:
        super().__init__("streams_app", config.workdir, name, config.env)
        self.config = config

    def answers(self) -> bool:
        try:
            self.stats()
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/stats", timeout=5) as response:
            return json.load(response)

    def get_json(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"{}")
            except ValueError:  # aiohttp's own 404 page is plain text
                return exc.code, {"text": body.decode(errors="replace")}


class PaymentApiProcess:
    """The payment API (``python -m payment_api serve``) as a subprocess with its own SQLite file.

    It stands for the external system of an API sink; its database is read back
    by the checker, never the sink's own account of what it did.
    """

    def __init__(self, workdir: Path, delay_ms: int = 0, drop_after_commit: int = 0) -> None:
        self.port = free_port()  # kept across a stop and a start: the sink's URL stays valid
        self.db_path = workdir / "payment-api.db"
        self.log_path = workdir / "payment-api.log"
        self.args = ["--delay-ms", str(delay_ms), "--drop-after-commit", str(drop_after_commit)]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def start(self, timeout: float = 30.0) -> PaymentApiProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "payment_api", "serve", "--port", str(self.port), "--db", self.db_url,
                 *self.args],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"payment API exited with {self.process.returncode}; see {self.log_path}")
            try:
                self.stats()
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"payment API not answering after {timeout} s; see {self.log_path}")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/v1/stats", timeout=5) as response:
            return json.load(response)

    def set_faults(self, **faults: int | bool) -> dict:
        request = urllib.request.Request(
            f"{self.url}/v1/_faults", data=json.dumps(faults).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
