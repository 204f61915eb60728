"""The factory of this project's Faust application: :func:`create_app`.

Settings are read and validated once (:mod:`streams_app.settings`); Faust gets
the validated values explicitly and an environment without the variables we
own, so the guarantee shown on the dashboard is the one in force. Nothing here
runs at import: ``streams_app`` (the ``faust -A`` entry point) builds the app
when it is first asked for, and only then are its topics, tables, agents, views
and commands declared on it.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Set
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

import faust_guarantees
from faust_guarantees.brokers import wait_for_brokers

from . import faults, logs, memory, metrics
from .admin import partition_rule
from .exceptions import PartitionsAdded, SettingsError, UnverifiedUpstream
from .health import HealthMonitor
from .settings import Settings
from .stores import StoreMemory, Table, drop_ttl_stores


def load_settings() -> Settings:
    """Validate the configuration or stop with a message that says what to change."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"streams_app: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


StartCheck = Callable[[], Awaitable[None]]


class PaymentsApp(faust.App):
    """faust.App plus start checks: coroutines a module registers that run when a worker
    starts, before any table or agent. One that raises SettingsError refuses the start; the
    worker exits with its message. :attr:`start_checks` (the sink: the payment API's key
    retention) run first; then the worker waits for Kafka for as long as it takes
    (:func:`faust_guarantees.brokers.wait_for_brokers`), then :attr:`kafka_checks` run (the
    topics' partition counts)."""

    def __init__(self, *args: Any, settings: Settings, health: HealthMonitor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_checks: list[StartCheck] = []
        self.kafka_checks: list[StartCheck] = []
        self.settings = settings
        self.health = health
        #: What the tables' stores hold in memory together (streams_app/stores.py).
        self.store_memory = StoreMemory(settings.store_memory_mb * 2**20)
        #: The kit installed into this app (set by create_app).
        self.guarantees: faust_guarantees.Guarantees | None = None

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        # Faust's, with the Event class looked up once: its settings resolve each attribute
        # through a registry, on every record (decision 0042's profile: ~2 % of a stage).
        event_class = self.__dict__.get("_event_class")
        if event_class is None:
            event_class = self.__dict__["_event_class"] = self.conf.Event
        return event_class(self, key, value, headers, message)

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        # Faust's hook for an agent that raised out of its loop (docs: agent-errors).
        self.health.agent_crashed(agent.name, exc)
        await super()._on_agent_error(agent, exc)

    async def _on_partitions_assigned(self, assigned: Set[TP], generation_id: int = 0) -> None:
        # Faust's rebalance callback (the consumer's on_partitions_assigned), before any of it.
        beyond = sorted(tp for tp in assigned if tp.partition >= self.settings.partitions)
        if beyond:
            await self.crash(PartitionsAdded(partitions_added(beyond, self.settings.partitions)))
            return
        await super()._on_partitions_assigned(assigned, generation_id)

    async def on_started(self) -> None:
        await super().on_started()
        if self.settings.gc_tuning:
            tune_gc()

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.settings.mmap_threshold:
            memory.fix_mmap_threshold(self.settings.mmap_threshold)
        metrics.install(self, guarantee=self.settings.processing_guarantee)
        for check in self.start_checks:
            await check()
        # The kit's kafka-wait-at-start waits before the producer starts; the Kafka checks
        # come before that, so they wait here (a settings error above is refused at once).
        await wait_for_brokers(self.settings.bootstrap)
        for check in self.kafka_checks:
            await check()
        drop_ttl_stores(Path(self.conf.tabledir))


def partitions_added(beyond: list[TP], partitions: int) -> str:
    """Why a worker assigned ``beyond`` (partitions numbered from TOPIC_PARTITIONS on) stops.

    Partitions were added to a topic while the pipeline ran (the start check refuses other
    counts; Kafka only ever adds), which breaks :func:`~streams_app.admin.partition_rule`.
    Kafka Streams stops a task whose source topic changed its partition count, for the
    same reason."""
    topics = sorted({tp.topic for tp in beyond})
    return (f"partitions were added to {', '.join(topics)} while the worker ran (assigned "
            f"{', '.join(f'{tp.topic}[{tp.partition}]' for tp in beyond[:4])}); {partition_rule(partitions)}. "
            f"Stopped without committing anything of those partitions. To go on: move the pipeline to "
            f"new topics with the new count (another TOPIC_PREFIX and APP_ID, TOPIC_PARTITIONS set), "
            f"or recreate these topics with {partitions} partitions")


#: gc thresholds once started: a young generation of 50,000 allocations (Python's default 700
#: collected ~100 times a second at 7,000 events/s), the older ones as Python's.
GC_THRESHOLDS = (50_000, 10, 10)


def tune_gc() -> None:
    """Freeze what start-up built (modules, Faust's app and services: the bulk of the heap,
    which every full collection would scan again) and collect the young generation less
    often. Measured on the dedup stage (bench one faust_alo, 80,000 records, gc callbacks
    timed after start-up): the collector's share of CPU 9.5 % -> 0.5 %."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def durable_topic_class(configs: dict[str, str]) -> type[faust.Topic]:
    """Return the Topic class of the app: Faust's, with ``configs`` under every topic's own.

    Every topic Faust creates goes through this class: the pipeline topics (declared
    ``internal=True`` in streams_app/topics.py), each table's changelog (tables pass
    their ``extra_topic_configs`` as the topic's config) and Faust's own leader topic.
    Faust has ``topic_replication_factor`` for the replica count but no setting for
    ``min.insync.replicas``, so it goes here, once, instead of into every declaration.
    """

    class DurableTopic(faust.Topic):
        def __init__(self, *args: Any, config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, config={**configs, **(config or {})}, **kwargs)

    return DurableTopic


def create_app(settings: Settings) -> PaymentsApp:
    """The app for ``settings``, with the kit (faust_guarantees) installed and the lab's
    seek-back fault armed when configured; its topics, tables and agents are declared by
    ``streams_app`` (the entry point) once it exists."""
    app = PaymentsApp(
        settings.app_id,
        settings=settings,
        health=HealthMonitor(exactly_once=settings.faust_guarantee == "exactly_once"),
        # Every host of BROKER_URL, as a list: no second parse of the text by Faust. Host and
        # port only (credentials go in broker_credentials): the worker banner prints these.
        broker=[f"kafka://{host}" for host in settings.broker_hosts],
        processing_guarantee=settings.faust_guarantee,
        broker_commit_interval=settings.commit_interval,
        producer_linger=settings.producer_linger,
        consumer_max_fetch_size=settings.consumer_max_fetch_size,
        broker_max_poll_records=settings.max_poll_records or None,
        store=settings.store,
        datadir=str(settings.table_dir),
        topic_partitions=settings.partitions,
        # REPLICATION_FACTOR / MIN_INSYNC_REPLICAS (1/1 for one broker, 3/2 for a cluster)
        # for every topic the app creates, changelogs included.
        topic_replication_factor=settings.replication_factor,
        Topic=durable_topic_class(settings.topic_configs),
        # RocksDB stores written without their write-ahead log: the changelog is the log.
        Table=Table,
        # Faust binds 0.0.0.0 by default; a dashboard of table state stays local
        # unless the operator asks for more.
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        # table_route forwards a request to the worker owning the key through its
        # canonical URL, so it must be an address the other workers can reach.
        web_host="127.0.0.1" if settings.web_bind in {"127.0.0.1", "0.0.0.0"} else settings.web_bind,
        web_tables_enabled=settings.web_tables_enabled,
        # Ask for acks from all in-sync replicas: an acknowledged output is durable.
        producer_acks=-1,
        # Agents, tables, views and commands are imported explicitly by the
        # package (streams_app/__init__.py): no scanning, no surprises.
        autodiscover=False,
        env=settings.faust_env(os.environ),
        # Faust's own sensor metrics, in the registry /metrics serves (streams_app/metrics.py).
        monitor=metrics.faust_monitor(),
        # LOG_FORMAT=json: the worker's log handlers write one JSON object per line.
        logging_config=logs.logging_config(settings.log_format),
    )

    try:
        guarantees = faust_guarantees.install(
            app, settings.faust_fixes, guarantee=settings.processing_guarantee,
            producer_idempotence=settings.producer_idempotence, on_unverified=settings.faust_fixes_unverified,
            request_timeout=settings.kafka_request_timeout,
        )
    except faust_guarantees.UnverifiedUpstream as exc:
        raise UnverifiedUpstream(exc.problems) from None
    guarantees.on_fence(app.health.fenced)
    guarantees.on_intervention(metrics.fix_intervened)
    app.guarantees = guarantees
    faults.install_seek_backs(app)
    faults.install_slow_restore(app)
    return app


_current: PaymentsApp | None = None


def current_app() -> PaymentsApp:
    """The one app of this process, built from the environment's settings the first time it
    is asked for. Only the composition root (``streams_app._build``, behind the ``faust -A``
    entry point ``streams_app.app``) asks: it declares the pipeline on it."""
    global _current
    if _current is None:
        _current = create_app(load_settings())
    return _current
