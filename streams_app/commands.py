"""Commands of ``faust -A streams_app ...`` besides Faust's own ``worker``.

    kafka start|stop|status|reset   the local Apache Kafka (KRaft) broker
    produce                         sample traffic with duplicates and malformed records
    demo                            everything at once: broker, worker, traffic, dashboard
    show-settings                   every setting, its value in force and its meaning
    dlq list|replay                 the dead letters, and an idempotent replay of chosen ones
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import click
from faust.cli import AppCommand, argument, option
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common.durations import format_duration
from common.redact import mask_url

from .admin import ensure_topics, send_records
from .settings import Settings
from .traffic import generate

#: Faust's ``@app.command`` without an app: the command registers itself with Faust's CLI
#: when its class is made, and finds the app the ``-A`` option names (``self.app``).
command = AppCommand.from_handler

console = Console(stderr=True)

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def local_broker_ports(s: Settings) -> tuple[int, ...] | None:
    """The ports of the local broker (one host) or cluster (several) BROKER_URL names,
    or None when any of its hosts is not local: then it is another cluster."""
    hosts = [host.rsplit(":", 1) for host in s.broker_hosts]
    if any(name not in LOCAL_HOSTS for name, _port in hosts):
        return None
    return tuple(int(port) for _name, port in hosts)


def start_local_broker(settings: Settings) -> None:
    """Start the embedded broker, or cluster, when every host of BROKER_URL is local; otherwise do nothing."""
    from infra import kafka
    from infra.kafka.cluster import LocalCluster

    ports = local_broker_ports(settings)
    if ports is None:
        console.print(f"BROKER_URL={settings.shown('broker_url')}: using that cluster, nothing started")
        return
    if len(ports) == 1:
        info = kafka.start(port=ports[0])
        console.print(f"Kafka {kafka.DEFAULT_VERSION} is up at {info.bootstrap} (log: {info.log_path})")
        return
    cluster = LocalCluster(ports).start()
    console.print(f"Kafka {kafka.DEFAULT_VERSION} cluster of {len(ports)} nodes is up at {cluster.bootstrap} "
                  f"(logs under {cluster.root})")


def _kafka_ports(settings: Settings, brokers: int | None) -> tuple[int, ...]:
    """The client ports ``kafka --brokers N`` manages: BROKER_URL's hosts, or N ports from its one port.

    One place for the fact: with BROKER_URL=kafka://127.0.0.1:29092, ``--brokers 3`` is
    the cluster on 29092-29094; with the three hosts listed, ``--brokers`` may be left out.
    """
    ports = local_broker_ports(settings)
    if ports is None:
        console.print(
            f"BROKER_URL={settings.shown('broker_url')} names another cluster: there is no "
            "local broker to manage. Unset BROKER_URL to use the embedded one."
        )
        raise SystemExit(1)
    if brokers is None or brokers == len(ports):
        return ports
    if len(ports) == 1 and brokers > 1:
        return tuple(range(ports[0], ports[0] + brokers))
    console.print(
        f"BROKER_URL={settings.shown('broker_url')} lists {len(ports)} hosts but --brokers is {brokers}: "
        "leave --brokers out, or set BROKER_URL to one host (the first port of the cluster)"
    )
    raise SystemExit(1)


@command(
    argument("action", type=click.Choice(["start", "stop", "status", "reset"])),
    option("--brokers", type=click.IntRange(min=1), default=None,
           help="Nodes: 1 is the single broker; N > 1 a KRaft cluster on N consecutive ports from "
                "BROKER_URL's port (default: as many as BROKER_URL lists, 1 by default)."),
)
async def kafka(self: AppCommand, action: str, brokers: int | None) -> None:
    """Start, stop, query or reset (stop and delete all data of) the local Kafka broker or cluster (KRaft mode)."""
    from infra import kafka as local

    settings = self.app.settings
    ports = _kafka_ports(settings, brokers)
    if len(ports) > 1:
        await asyncio.to_thread(_cluster_action, settings, action, ports)
        return
    port = ports[0]
    # infra.kafka is synchronous (it runs its own event loop): keep it off Faust's.
    if action == "start":
        await asyncio.to_thread(start_local_broker, settings)
    elif action == "stop":
        await asyncio.to_thread(local.stop, port=port)
        console.print(f"Kafka on port {port} stopped")
    elif action == "reset":
        await asyncio.to_thread(local.reset, port=port)
        # The tables' RocksDB files remember changelog offsets of topics that no longer
        # exist; Faust would refuse to start on them (ConsistencyError).
        await asyncio.to_thread(shutil.rmtree, settings.table_dir, True)
        console.print(f"Kafka on port {port} stopped and its data deleted, and this app's table state "
                      f"({settings.table_dir}); the next start formats fresh storage")
    else:
        info = await asyncio.to_thread(local.status, port=port)
        if info is None:
            console.print(f"Kafka on port {port} is down")
            raise SystemExit(1)
        console.print(f"Kafka {local.DEFAULT_VERSION} is up at {info.bootstrap} (pid {info.pid}, log: {info.log_path})")


def _cluster_action(settings: Settings, action: str, ports: tuple[int, ...]) -> None:
    """``kafka start|stop|status|reset`` for the local cluster on ``ports`` (runs in a thread)."""
    from infra import kafka as local
    from infra.kafka.cluster import ClusterInfo, LocalCluster

    cluster = LocalCluster(ports)
    info: ClusterInfo | None = None
    if action == "start":
        began = time.monotonic()
        try:
            info = cluster.start()
        except local.BrokerStartError as exc:
            console.print(f"the Kafka cluster on {cluster.bootstrap} did not start:\n{exc}", markup=False)
            raise SystemExit(1) from None
        console.print(f"Kafka {local.DEFAULT_VERSION} cluster up in {time.monotonic() - began:.1f} s; "
                      f"BROKER_URL='{info.broker_url}'")
    elif action in {"stop", "reset"}:
        pids = cluster.stop() if action == "stop" else cluster.reset()
        if action == "reset":
            shutil.rmtree(settings.table_dir, True)  # see the single broker's reset
        what = "stopped" if action == "stop" else (
            f"stopped and its data deleted, and this app's table state ({settings.table_dir})"
        )
        stopped = ", ".join(map(str, pids)) or "none running"
        console.print(f"Kafka cluster on {cluster.bootstrap} {what} (pids: {stopped})")
        return
    info = info or cluster.status()
    try:
        controller = cluster.active_controller(timeout=10) if any(n.state == "serving" for n in info.nodes) else None
    except RuntimeError:
        controller = None  # no quorum (or an election under way): the table's states say why
    table = Table(title=f"Kafka cluster {cluster.bootstrap}", caption=f"logs: {info.root}/node-<id>/server.log")
    for column in ("node", "state", "pid", "port", "controller port", "active controller"):
        table.add_column(column)
    for node in info.nodes:
        table.add_row(str(node.node_id), node.state, str(node.pid or "-"), str(node.port),
                      str(node.controller_port), "yes" if node.node_id == controller else "")
    Console().print(table)
    if not info.up:
        raise SystemExit(1)


@command(
    option("--count", type=int, default=1000, show_default=True, help="Records to send."),
    option("--duplicate-rate", type=float, default=0.2, show_default=True,
           help="Share of records that are exact re-sends of an earlier valid record."),
    option("--bad-rate", type=float, default=0.05, show_default=True,
           help="Share of records that are malformed (go to the DLQ)."),
    option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed, same traffic."),
    option("--accounts", type=int, default=50, show_default=True, help="Distinct accounts."),
    option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
)
async def produce(
    self: AppCommand, count: int, duplicate_rate: float, bad_rate: float, seed: int,
    accounts: int, as_json: bool,
) -> None:
    """Send sample payments to {prefix}.raw and print what was sent."""
    settings = self.app.settings
    traffic = generate(
        count, duplicate_rate=duplicate_rate, bad_rate=bad_rate, seed=seed,
        accounts=accounts, max_bytes=settings.max_record_bytes,
    )
    await ensure_topics(settings)
    topic = settings.topic("raw")
    with Progress(console=console, transient=as_json) as progress:
        task = progress.add_task(f"sending to {topic}", total=len(traffic.records))
        await send_records(
            settings.bootstrap, topic, traffic.records,
            on_sent=lambda n: progress.advance(task, n),
        )
    summary = traffic.summary()
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(title=f"sent to {topic}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("records", "unique_events", "duplicates", "bad", "total_amount"):
        table.add_row(key, str(summary[key]))
    for kind, n in summary["bad_by_kind"].items():
        table.add_row(f"  bad: {kind}", str(n))
    Console().print(table)


@command(
    argument("action", type=click.Choice(["list", "replay"])),
    option("--code", "codes", multiple=True, help="Only dead letters with this reason code (repeatable)."),
    option("--stage", "stages", multiple=True, help="Only those of this stage: ingest, dedup, apply, sink."),
    option("--source", "sources", multiple=True,
           help="Only the dead letter of this original record, e.g. payments.raw[2]@1045 (repeatable)."),
    option("--limit", type=int, default=50, show_default=True, help="list: show at most this many (newest)."),
    option("--dry-run", is_flag=True, help="replay: say what would be replayed, send nothing."),
)
async def dlq(self: AppCommand, action: str, codes: tuple[str, ...], stages: tuple[str, ...],
              sources: tuple[str, ...], limit: int, dry_run: bool) -> None:
    """List the dead letters, or replay chosen ones into their original topic (idempotently)."""
    from .dlq import Selection, read_dead_letters, replay

    settings = self.app.settings
    selection = Selection(frozenset(codes), frozenset(stages), frozenset(sources))
    if action == "list":
        letters = [d for d in await read_dead_letters(settings) if selection(d)]
        table = Table(title=f"{settings.topic('dlq')}: {len(letters)} dead letters")
        for column in ("from", "stage", "code", "reason", "bytes"):
            table.add_column(column, overflow="fold")
        for d in letters[-limit:]:
            size = d.reference["size"] if d.reference else len(d.value or b"")
            table.add_row(d.place, d.stage, d.code, d.reason, f"{size}{' (reference)' if d.reference else ''}")
        Console().print(table)
        return
    result = await replay(settings, selection, dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    console.print(f"{verb} {len(result.replayed)}; already replayed before: {len(result.already_replayed)}; "
                  f"references (too large to replay from the DLQ): {len(result.references)}")
    for d in result.replayed:
        console.print(f"  {d.place} ({d.code}) -> {d.original_topic}")


@command()
async def show_settings(self: AppCommand) -> None:
    """Print every setting with the value in force and what it does."""
    settings = self.app.settings
    table = Table(title="settings (environment variable = value in force)")
    for column in ("variable", "value", "meaning"):
        table.add_column(column, overflow="fold")
    for name, (env, _default, doc) in zip(Settings.field_names(), Settings.describe()):
        table.add_row(env, settings.shown(name), doc)  # passwords in URLs masked
    Console().print(table)


@command(
    option("--count", type=int, default=2000, show_default=True, help="Sample records to send."),
    option("--duplicate-rate", type=float, default=0.2, show_default=True),
    option("--bad-rate", type=float, default=0.05, show_default=True),
    option("--seed", type=int, default=int(time.time()) % 100_000, help="Random seed (default: new each run)."),
    option("--exit-when-done", is_flag=True, help="Stop the worker once every event is charged."),
)
async def demo(
    self: AppCommand, count: int, duplicate_rate: float, bad_rate: float, seed: int,
    exit_when_done: bool,
) -> None:
    """Broker, worker, sample traffic and the dashboard URL: the README's first command."""
    settings = self.app.settings
    await asyncio.to_thread(start_local_broker, settings)
    await ensure_topics(settings)
    log_path = Path("logs") / "worker.log"
    log_path.parent.mkdir(exist_ok=True)
    url = f"http://{settings.web_bind}:{settings.web_port}/"
    payment_api = await _start_payment_api(settings) if settings.sink_target == "api" else None
    console.print(f"starting the worker ({settings.processing_guarantee}, {settings.sink_mode} sink into the "
                  f"{settings.sink_target}); its log: {log_path}")
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "streams_app", "worker", "-l", "info"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        await _wait_for_web(url, worker)
        before = await _charged_events(url)  # the sink's database or the API keep earlier runs' charges
        traffic = generate(count, duplicate_rate=duplicate_rate, bad_rate=bad_rate, seed=seed)
        console.print(
            f"sending {len(traffic.records)} records: {len(traffic.unique_events)} unique payments, "
            f"{traffic.duplicates} re-sends, {sum(traffic.bad.values())} malformed"
        )
        await send_records(settings.bootstrap, settings.topic("raw"), traffic.records)
        console.print(f"[bold]dashboard: {url}[/bold]")
        await _watch(url, traffic, worker, exit_when_done, before)
    finally:
        for process in (worker, payment_api):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


async def _start_payment_api(settings: Settings) -> subprocess.Popen | None:
    """Start the payment API at PAYMENT_API_URL (it is the sink's external system);
    None when one already answers there or the URL is not local."""
    shown = settings.shown("payment_api_url")
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"{settings.payment_api_url}/healthz") as response:
                if response.status == 200:
                    console.print(f"payment API already up at {shown} (the worker checks its key retention)")
                    return None
        except aiohttp.ClientError:
            pass
    if urlparse(settings.payment_api_url).hostname not in LOCAL_HOSTS:
        raise click.ClickException(f"PAYMENT_API_URL={shown} does not answer")
    log_path = Path("logs") / "payment-api.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            payment_api_command(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    await _wait_until_answering(f"{settings.payment_api_url}/healthz", process, 30.0,
                                name="the payment API", log_path=log_path)
    console.print(f"payment API up at {shown}, keeping idempotency keys "
                  f"{format_duration(settings.dedup_horizon)} (DEDUP_HORIZON) (log: {log_path})")
    return process


def payment_api_command(s: Settings) -> list[str]:
    """``python -m payment_api serve`` at PAYMENT_API_URL, keeping idempotency keys as long
    as the pipeline may deliver an event again (DEDUP_HORIZON): the worker refuses a
    shorter retention at start (agents/sink.py)."""
    url = urlparse(s.payment_api_url)
    return [
        sys.executable, "-m", "payment_api", "serve", "--host", url.hostname or "127.0.0.1",
        "--port", str(url.port or 80), "--key-retention", format_duration(s.dedup_horizon),
    ]


async def _wait_for_web(url: str, worker: subprocess.Popen, timeout: float = 90.0) -> None:
    await _wait_until_answering(url + "api/stats", worker, timeout,
                                name="the worker", log_path=Path("logs") / "worker.log")


async def _wait_until_answering(
    url: str, process: subprocess.Popen, timeout: float, *, name: str, log_path: Path,
) -> None:
    """Poll ``url`` until it answers 200; fail clearly if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise click.ClickException(f"{name} exited with {process.returncode}; see {log_path}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise click.ClickException(f"{name} did not answer at {mask_url(url)} within {timeout:.0f} s; see {log_path}")


async def _charged_events(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url + "api/stats") as response:
        return int((await response.json())["charged_events"])


async def _watch(url: str, traffic, worker: subprocess.Popen, exit_when_done: bool, before: int) -> None:
    """Print the live counts until every unique event of this run is charged (and on,
    unless asked to exit). Counts are totals, earlier runs included."""
    expected = len(traffic.unique_events)
    done = False
    async with aiohttp.ClientSession() as session:
        while worker.poll() is None:
            try:
                async with session.get(url + "api/stats") as response:
                    stats = await response.json()
            except aiohttp.ClientError:
                await asyncio.sleep(1.0)  # the worker is stopping (the check below says why) or busy
                continue
            line = (
                f"consumed {stats['consumed']}  dead-lettered {stats['dead_lettered']}  "
                f"duplicates dropped {stats['duplicates_dropped']}  applied {stats['applied']}  "
                f"payments charged {stats['charged_events'] - before}/{expected}  "
                f"duplicate charges {stats['duplicate_charges']}"
            )
            if not done and stats["charged_events"] - before >= expected:
                done = True
                console.print(f"[green]all {expected} payments charged[/green]: {line}")
                if exit_when_done:
                    return
                console.print(f"dashboard: {url}  (Ctrl-C stops the worker)")
            elif not done:
                console.print(line)
            await asyncio.sleep(2.0)
    raise click.ClickException(f"the worker exited with {worker.returncode}; see logs/worker.log")
