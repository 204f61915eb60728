"""The lab for any Faust app: its real workers, SIGKILLed at random, then what it wrote, read back.

The payments pipeline is one user of the lab (lab/runner.py, with its named crash points
and faults). Any other Faust app gets the same engine here: its workers run as
``faust -A APP worker`` subprocesses configured through Faust's own environment variables
(BROKER_URL, PROCESSING_GUARANTEE, TOPIC_PARTITIONS, APP_DATADIR, WEB_PORT, and static
membership so a restarted worker takes its partitions back at once) plus the app's own
(``env``); records go into its input topic in chunks with a SIGKILL and a restart at a
seeded random moment during each; once its group has committed past every input record,
its output topics are read back with ``read_committed`` (what a downstream exactly-once
reader sees), and the user's invariant says what is wrong. With ``--workers 2`` the kills
also rebalance the partitions between the workers.

With ``--crash-at NAME`` the kills are the app's own: its code marks the moments worth a
crash with ``faust_guarantees.crashpoints.crashpoint("NAME")`` (e.g. after an output is
sent, before its offset is committed), and each worker start is armed to SIGKILL itself on
a seeded random pass (1-10) there; all records go in at once, and the lab restarts each
worker that killed itself, armed again, until ``--kills`` crashes happened.

    python -m lab run --app examples.order_dedup --input orders --output orders.unique \\
        --invariant lab.apps:each_key_once --count 2000 --kills 5 --env ORDERS_PREFIX=orders \
        [--crash-at orders.after_forward]

An invariant is a function ``(inputs, outputs) -> list of problems`` over the records read
back (``inputs``: the input topic's; ``outputs``: each output topic's, by name);
:func:`each_key_once` is the common one: every input key exactly once in the first output.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from common.readback import committed_offsets, read_topic, uncommitted
from faust_guarantees import crashpoints

from .workers import FaustWorker

#: ``(inputs, outputs by topic) -> problems``; no problem: the invariant holds.
Invariant = Callable[[list[ConsumerRecord], Mapping[str, list[ConsumerRecord]]], list[str]]


def each_key_once(inputs: list[ConsumerRecord], outputs: Mapping[str, list[ConsumerRecord]]) -> list[str]:
    """Every key of the input (records without a key aside) comes out exactly once in the
    first output topic, and nothing else does: dedup by key, exactly once."""
    expected = {record.key for record in inputs if record.key}
    out = Counter(record.key for record in next(iter(outputs.values()), []))
    missing = sorted(expected - set(out))
    repeated = sorted(key for key, n in out.items() if n > 1)
    unexpected = sorted(set(out) - expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys lost (never in the output), e.g. {missing[:3]}")
    if repeated:
        problems.append(f"{len(repeated)} keys repeated in the output, e.g. {repeated[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys in the output that no input had, e.g. {unexpected[:3]}")
    return problems


def load(spec: str) -> Any:
    """``"package.module:attribute"`` -> the attribute."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass
class AppRun:
    """One run of a Faust app under the lab."""

    app: str
    input_topic: str
    output_topics: Sequence[str]
    group: str
    bootstrap: str
    workdir: Path
    guarantee: str = "exactly_once"
    partitions: int = 4
    env: Mapping[str, str] = field(default_factory=dict)

    def worker_env(self, name: str, web_port: int, crash_at: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "BROKER_URL": f"kafka://{self.bootstrap}",
            "PROCESSING_GUARANTEE": self.guarantee,
            "TOPIC_PARTITIONS": str(self.partitions),
            "APP_DATADIR": str(self.workdir / f"{name}-data"),
            "WEB_PORT": str(web_port),
            "WEB_BIND": "127.0.0.1",
            "CONSUMER_GROUP_INSTANCE_ID": f"{self.group}-{name}",
            "BROKER_SESSION_TIMEOUT": "10",
            "BROKER_HEARTBEAT_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        })
        if crash_at:
            env[crashpoints.ENV] = crash_at
        env.update(self.env)
        return env


@dataclass
class AppResult:
    problems: list[str]
    inputs: int
    outputs: dict[str, int]
    kills: int
    restarts: int
    drained: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return self.drained and not self.problems

    def summary(self) -> str:
        verdict = "invariant holds" if self.holds else "INVARIANT BROKEN" if self.problems else "NOT DRAINED"
        lines = [f"{verdict}: {self.inputs} input records, outputs {self.outputs}, {self.kills} SIGKILLs, "
                 f"{self.restarts} restarts, {self.seconds:.0f} s"]
        lines += [f"  - {problem}" for problem in self.problems] + [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def run(app_run: AppRun, records: Sequence[tuple[bytes | None, bytes | None]], invariant: Invariant, *,
        kills: int = 5, seed: int = 1, workers: int = 1, drain_timeout: float = 180.0,
        crash_at: str | None = None) -> AppResult:
    """Run ``app_run``'s app on ``records`` with ``kills`` SIGKILLs; check ``invariant``.

    With ``workers`` > 1 the workers share the partitions (one consumer group), and each
    kill hits one of them at random: every kill and restart is also a rebalance. With
    ``crash_at`` (a crash point's name) the workers kill themselves there instead."""
    started = time.monotonic()
    rng = random.Random(seed)
    shutil.rmtree(app_run.workdir, ignore_errors=True)
    app_run.workdir.mkdir(parents=True)
    asyncio.run(_create_topics(app_run))
    pool = [FaustWorker(app_run.app, app_run.workdir, f"w{n + 1}", app_run.worker_env) for n in range(workers)]
    notes: list[str] = []
    killed, restarted, drained = 0, 0, False
    try:
        if crash_at:
            killed = _run_crash_points(app_run, pool, records, crash_at, kills, rng, drain_timeout, notes)
        else:
            killed = _run_random_kills(app_run, pool, chunks(list(records), kills + 1), rng)
        drained, restarted = _wait_drained(app_run, pool, drain_timeout, notes)
        for worker in pool:
            worker.stop()
    finally:
        for worker in pool:
            worker.kill()
    inputs = asyncio.run(read_topic(app_run.bootstrap, app_run.input_topic))
    outputs = {topic: asyncio.run(read_topic(app_run.bootstrap, topic)) for topic in app_run.output_topics}
    return AppResult(
        problems=invariant(inputs, outputs), inputs=len(inputs),
        outputs={topic: len(found) for topic, found in outputs.items()}, kills=killed,
        restarts=killed + restarted, drained=drained, seconds=time.monotonic() - started, notes=notes,
    )


def _run_random_kills(app_run: AppRun, pool: list[FaustWorker], parts: list[list], rng: random.Random) -> int:
    """Each chunk but the last goes in, then a worker is SIGKILLed at a random moment and
    restarted; then the last chunk. Returns the kills."""
    for worker in pool:
        worker.start()
    for worker in pool:
        worker.wait_ready()
    for chunk in parts[:-1]:
        asyncio.run(_produce(app_run, chunk))
        time.sleep(rng.uniform(0.05, 1.0))
        victim = rng.choice(pool)
        victim.kill()
        victim.start()
        victim.wait_ready()
    asyncio.run(_produce(app_run, parts[-1]))
    return len(parts) - 1


def _run_crash_points(app_run: AppRun, pool: list[FaustWorker], records: Sequence[Any], point: str,
                      kills: int, rng: random.Random, timeout: float, notes: list[str]) -> int:
    """Workers armed to kill themselves at crash point ``point`` (on a random pass, 1-10),
    restarted armed until ``kills`` crashes; returns how many happened."""
    def arm() -> str:
        return f"{point}:{rng.randint(1, 10)}"

    for worker in pool:
        worker.start(crash_at=arm())
    for worker in pool:
        worker.wait_ready()
    asyncio.run(_produce(app_run, records))
    crashed = 0
    deadline = time.monotonic() + timeout
    while crashed < kills and time.monotonic() < deadline:
        for worker in pool:
            if worker.running:
                continue
            if worker.returncode == -signal.SIGKILL:
                crashed += 1
            else:
                notes.append(f"{worker.name} exited on its own ({worker.returncode}); restarted")
            worker.start(crash_at=arm() if crashed < kills else None)
            try:
                worker.wait_ready()
            except RuntimeError:  # it reached its crash point before it said Ready: seen next turn
                continue
        if crashed < kills and _uncommitted(app_run) == 0:
            break
        time.sleep(0.2)
    if crashed < kills:
        notes.append(f"crash point {point!r} was reached {crashed} of {kills} times before the input was "
                     f"processed: is it spelled as in the app, on a path every record takes?")
    return crashed


def chunks(records: list, n: int) -> list[list]:
    """``records`` in ``n`` chunks of (nearly) equal size, in order."""
    size = -(-len(records) // n)
    return [records[i:i + size] for i in range(0, len(records), size)] or [[]]


async def _create_topics(app_run: AppRun) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=app_run.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(topic, app_run.partitions, 1) for topic in (app_run.input_topic, *app_run.output_topics)
               if topic not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def _produce(app_run: AppRun, records: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=app_run.bootstrap, enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(app_run.input_topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _uncommitted(app_run: AppRun) -> int:
    async def count() -> int:
        committed = await committed_offsets(app_run.bootstrap, app_run.group)  # first: see lab/runner.py
        return uncommitted(await read_topic(app_run.bootstrap, app_run.input_topic), committed)

    return asyncio.run(count())


def _wait_drained(app_run: AppRun, pool: list[FaustWorker], timeout: float, notes: list[str]) -> tuple[bool, int]:
    """Wait until the group committed past every input record, twice, 2 s apart; a worker
    that died on its own is restarted (and said so). Returns (drained, restarts)."""
    deadline = time.monotonic() + timeout
    clean, restarts = 0, 0
    while time.monotonic() < deadline:
        for worker in pool:
            if not worker.running:
                notes.append(f"{worker.name} exited on its own ({worker.returncode}); restarted")
                worker.start()
                restarts += 1
                try:
                    worker.wait_ready()
                except (RuntimeError, TimeoutError):
                    continue
        if _uncommitted(app_run) == 0:
            clean += 1
            if clean == 2:
                return True, restarts
        else:
            clean = 0
        time.sleep(2.0 if clean else 1.0)
    notes.append(f"not drained after {timeout:.0f} s: {_uncommitted(app_run)} input records uncommitted")
    return False, restarts


def order_records(n: int, duplicates: float = 0.2, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """``n`` orders keyed by id, a share of them sent again (the re-sends a dedup must drop)."""
    rng = random.Random(seed)
    records: list[tuple[bytes, bytes]] = []
    for i in range(n):
        if records and rng.random() < duplicates:
            records.append(rng.choice(records))
        else:
            key = f"order-{seed}-{i}".encode()
            records.append((key, b'{"order": "%s", "amount": %d}' % (key, rng.randint(1, 500))))
    return records
