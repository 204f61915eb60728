"""Prometheus metrics of the worker, declared once, served at ``/metrics``.

Why one module: a dashboard, an alert and a test must agree on every name, so
each metric is declared here and nowhere else (the Grafana dashboard in
ops/grafana/ is checked against :func:`metric_names`). Everything lives in this
module's own :class:`~prometheus_client.CollectorRegistry`, not the library's
global one: importing this module declares metrics and does nothing else (no
server, no patching, no connection).

Three kinds of source feed it:

- **Faust's own sensor metrics** (``payments_faust_*``): Faust's
  ``PrometheusMonitor`` with this registry (the app's ``monitor``), so messages
  received, events, table operations, sends and their latencies (Faust
  observes those in milliseconds: its names, not ours).
- **The pipeline's, as they happen**: :class:`PipelineSensor` (Faust's sensor
  extension point, ``app.sensors.add``) counts records consumed and acked per
  topic, commit latency and rebalances; ``processing.dead_letter()`` counts
  dead letters by stage and code; ``tables.counters.count()`` mirrors every
  pipeline counter (``payments_stage_records_total{stage, outcome}``); the fixes
  of faust_guarantees report to :func:`fix_intervened`; the sink its retries.
- **Read at scrape time** (:func:`refresh`, awaited by the ``/metrics`` view):
  charges counted by the external system itself, true lag per partition, the
  dedup table's key count, the sink's outage state, the worker's memory by part
  and its open table stores (streams_app/memory.py).

These are per-process counters: they start at 0 when the worker starts (use
``rate()``/``increase()``), and they count processing, not unique events:
under at_least_once a record redelivered after a crash is counted again, and
under exactly_once a record whose transaction was aborted was still counted
here (the ``pipeline-counters`` table behind ``/api/stats`` commits with the
events instead).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from faust.sensors import Monitor, Sensor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from faust_guarantees.sensors import BatchSensor

#: The content type of Prometheus' text format (what ``generate_latest`` writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PREFIX = "payments"

REGISTRY = CollectorRegistry(auto_describe=True)


class Tally:
    """Per-record metric updates kept in plain numbers and moved into their Prometheus
    children when the registry is collected (a scrape), or every ``FLUSH_EVERY`` updates.

    prometheus_client takes a lock on every ``inc``/``set``/``observe``: at some ten
    updates per record that was 7 % of a batched worker's time (py-spy, bench one
    faust_alo). Registered in :data:`REGISTRY` before every metric, so a scrape flushes
    first and reads current values. Only the event loop's thread records and scrapes.
    """

    FLUSH_EVERY = 4096

    def __init__(self) -> None:
        self._added: dict[Any, float] = {}
        self._latest: dict[Any, float] = {}
        self._observed: list[tuple[Any, float]] = []
        self._updates = 0

    def add(self, child: Any, amount: float = 1) -> None:
        """``child.inc(amount)`` (a gauge's may be negative), later."""
        self._added[child] = self._added.get(child, 0) + amount
        self._count()

    def set(self, child: Any, value: float) -> None:
        """``child.set(value)``, later (the last value wins)."""
        self._latest[child] = value
        self._count()

    def observe(self, child: Any, value: float) -> None:
        """``child.observe(value)``, later."""
        self._observed.append((child, value))
        self._count()

    def _count(self) -> None:
        self._updates += 1
        if self._updates >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        added, latest, observed = self._added, self._latest, self._observed
        self._added, self._latest, self._observed, self._updates = {}, {}, [], 0
        for child, amount in added.items():
            if amount:
                child.inc(amount)
        for child, value in latest.items():
            child.set(value)
        for child, value in observed:
            child.observe(value)

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        self.flush()
        return []


#: First in the registry: a scrape flushes it before reading any metric.
TALLY = Tally()
REGISTRY.register(TALLY)

#: Faust's own sensor metrics, prefixed ``payments_faust_``.
FAUST = FaustMetrics.create(REGISTRY, f"{PREFIX}_faust")

#: The standard ``process_*`` metrics (CPU seconds, resident memory, open files), as every
#: Prometheus client exports them, for the dashboards that expect them.
ProcessCollector(registry=REGISTRY)

_LATENCY_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RECORDS_CONSUMED = Counter(
    f"{PREFIX}_records_consumed", "Records fetched and handed to a stream, per topic "
    "(a record delivered again after a seek is counted again)", ["topic"], registry=REGISTRY)
RECORDS_ACKED = Counter(
    f"{PREFIX}_records_acked", "Records every stream of this worker finished (acked), per topic",
    ["topic"], registry=REGISTRY)
STAGE_RECORDS = Counter(
    f"{PREFIX}_stage_records", "The pipeline counters (tables/counters.py) as they are counted: "
    "ingest valid, dedup unique / duplicates, apply applied, <stage> dead_lettered, dlq references",
    ["stage", "outcome"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    f"{PREFIX}_dead_letters", "Records sent to the DLQ, by the stage that refused them and the reason "
    "code (x-dlq-code)", ["stage", "code"], registry=REGISTRY)
COMMIT_SECONDS = Histogram(
    f"{PREFIX}_commit_duration_seconds", "Offset commits of this worker; under exactly_once each is "
    "the commit of the open transactions", ["guarantee"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY)
REBALANCES = Counter(
    f"{PREFIX}_rebalances", "Rebalances this worker took part in", registry=REGISTRY)
REBALANCE_SECONDS = Histogram(
    f"{PREFIX}_rebalance_duration_seconds", "From a rebalance's start to the end of table recovery",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120), registry=REGISTRY)
TRANSACTIONS_ABORTED = Counter(
    f"{PREFIX}_transactions_aborted", "exactly_once transactions this worker abandoned uncommitted "
    "(the broker aborts them): fenced, or a final commit that failed", ["reason"], registry=REGISTRY)
FIX_INTERVENTIONS = Counter(
    f"{PREFIX}_fix_interventions", "Times a fix of faust_guarantees changed what stock Faust "
    "would have done", ["fix", "action"], registry=REGISTRY)
SINK_RETRIES = Counter(
    f"{PREFIX}_sink_retries", "Waits before a charge was tried again (database or payment API "
    "unavailable)", ["target"], registry=REGISTRY)
SINK_OUTAGE = Gauge(
    f"{PREFIX}_sink_outage", "1 while the database or payment API is unavailable to the sink",
    ["target"], registry=REGISTRY)
CHARGES = Gauge(
    f"{PREFIX}_sink_charges", "Charges counted by the external system itself (database rows or the "
    "payment API's charges)", ["target"], registry=REGISTRY)
CHARGED_EVENTS = Gauge(
    f"{PREFIX}_sink_charged_events", "Distinct event ids charged, counted by the external system",
    ["target"], registry=REGISTRY)
DUPLICATE_CHARGES = Gauge(
    f"{PREFIX}_sink_duplicate_charges", "Charges minus distinct event ids charged: must stay 0",
    ["target"], registry=REGISTRY)
LAG = Gauge(
    f"{PREFIX}_consumer_lag_records", "Records of a stream partition not yet committed: high watermark "
    "minus committed offset, minus one offset under exactly_once (the commit marker of the last "
    "transaction)", ["topic", "partition"], registry=REGISTRY)
DEDUP_KEYS = Gauge(
    f"{PREFIX}_dedup_keys", "Event ids in the local seen-events store, per partition (RocksDB's "
    "estimate)", ["partition"], registry=REGISTRY)
DEDUP_SWEPT = Counter(
    f"{PREFIX}_dedup_swept_keys", "Event ids older than DEDUP_HORIZON deleted by the sweep",
    registry=REGISTRY)
DEDUP_SWEEP_PASSES = Counter(
    f"{PREFIX}_dedup_sweep_passes", "Full passes of the sweep over a local seen-events partition "
    "(it looks at SWEEP_BUDGET rows per partition and tick)", registry=REGISTRY)
DEDUP_SWEEP_LAST = Gauge(
    f"{PREFIX}_dedup_sweep_last_run_timestamp_seconds", "When the sweep last ran (Unix time)",
    registry=REGISTRY)
MEMORY = Gauge(
    f"{PREFIX}_memory_bytes", "The worker's memory by part: rss, rss_anon (its heap), malloc_in_use "
    "and malloc_free_held (glibc's malloc: live, and freed but kept), python_arenas, python_allocated "
    "and python_arenas_highwater (Python's small-object arenas, outside malloc: held, their live "
    "objects, the most ever held), rocksdb_memtables, "
    "rocksdb_block_cache, rocksdb_table_readers (summed over the table stores)", ["part"],
    registry=REGISTRY)
STORES = Gauge(
    f"{PREFIX}_table_stores", "RocksDB stores (one per table and partition) held by the tables, and "
    "open in the process (held=process: more than held=tables is a store dropped but not closed)",
    ["held"], registry=REGISTRY)


def metric_names() -> set[str]:
    """Every series name this registry can export (``_total``, ``_bucket``... included)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "gauge": ("",), "summary": ("_sum", "_count", "_created")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


class _Children:
    """prometheus_client's ``labels()`` validates, locks and hashes on every call: 6.5 %
    of a batched worker's time (py-spy), called several times per record. The child of
    each label set is looked up once and kept."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[Any, ...]], Any] = {}

    def __call__(self, metric: Any, *labels: Any) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class LeanPrometheusMonitor(BatchSensor, PrometheusMonitor):
    """Faust's PrometheusMonitor, same metrics, with the per-record label lookups cached
    (:class:`_Children`, and each stream's label once), the per-record updates tallied
    (:class:`Tally`), and a batch of the kit's counted at once (the batch hooks of
    faust_guarantees/sensors.py: the same figures as Faust's per-record hooks)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._child = _Children()
        self._stream_events: dict[Any, Any] = {}  # stream -> its events counter child

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_in(self, tp, offset, message)
        m = self._metrics
        TALLY.add(m.messages_received)
        TALLY.add(m.active_messages)
        TALLY.add(self._child(m.messages_received_per_topics, tp.topic))
        TALLY.set(self._child(m.messages_received_per_topics_partition, tp.topic, tp.partition), offset)

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        m = self._metrics
        TALLY.add(m.total_events)
        TALLY.add(m.total_active_events)
        child = self._stream_events.get(stream)
        if child is None:  # Faust normalises the label with a regex on every event
            child = self._stream_events[stream] = self._child(
                m.total_events_per_stream, f"stream.{self._stream_label(stream)}.events")
        TALLY.add(child)
        return state

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        Monitor.on_stream_event_out(self, tp, offset, stream, event, state)
        TALLY.add(self._metrics.total_active_events, -1)
        if state is not None:
            TALLY.observe(self._metrics.events_runtime_latency, self.secs_to_ms(self.events_runtime[-1]))

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        Monitor.on_message_out(self, tp, offset, message)
        TALLY.add(self._metrics.active_messages, -1)

    def on_batch_in(self, stream: Any, messages: Sequence[Any], events: Sequence[Any]) -> None:
        m, child = self._metrics, self._child
        if messages:
            n, now, last = len(messages), self.time(), {}
            self.messages_received_total += n
            self.messages_active += n
            for message in messages:
                message.time_in = now
                last[message.tp] = message.offset
            self.tp_read_offsets.update(last)
            for tp, offset in last.items():
                TALLY.set(child(m.messages_received_per_topics_partition, tp.topic, tp.partition), offset)
            for topic, k in collections.Counter(message.topic for message in messages).items():
                self.messages_received_by_topic[topic] += k
                TALLY.add(child(m.messages_received_per_topics, topic), k)
            TALLY.add(m.messages_received, n)
            TALLY.add(m.active_messages, n)
        n = len(events)
        self.events_total += n
        self.events_active += n
        inbound = time.monotonic()
        for tp in {event.message.tp for event in events}:
            self.stream_inbound_time[tp] = inbound
        key = self.stream_lookup.get(stream)
        if key is None:
            key = self.stream_lookup[stream] = str(stream)
        self.events_by_stream[key] += n
        task = self.task_lookup.get(stream.task_owner)
        if task is None:
            task = self.task_lookup[stream.task_owner] = str(stream.task_owner)
        self.events_by_task[task] += n
        TALLY.add(m.total_events, n)
        TALLY.add(m.total_active_events, n)
        stream_child = self._stream_events.get(stream)
        if stream_child is None:
            stream_child = self._stream_events[stream] = child(
                m.total_events_per_stream, f"stream.{self._stream_label(stream)}.events")
        TALLY.add(stream_child, n)

    def on_batch_out(self, stream: Any, events: Sequence[Any], acked: Sequence[Any]) -> None:
        # Monitor.on_stream_event_out does nothing without a state, and Stream.ack passes none.
        TALLY.add(self._metrics.total_active_events, -len(events))
        if acked:
            now = self.time()
            self.messages_active -= len(acked)
            for message in acked:
                message.time_out = now
                if message.time_in is not None:
                    message.time_total = now - message.time_in
            TALLY.add(self._metrics.active_messages, -len(acked))

    def on_table_get(self, table: Any, key: Any) -> None:
        Monitor.on_table_get(self, table, key)
        TALLY.add(self._child(self._metrics.table_operations, f"table.{table.name}", self.KEYS_RETRIEVED))

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        Monitor.on_table_set(self, table, key, value)
        TALLY.add(self._child(self._metrics.table_operations, f"table.{table.name}", self.KEYS_UPDATED))

    def on_table_del(self, table: Any, key: Any) -> None:
        Monitor.on_table_del(self, table, key)
        TALLY.add(self._child(self._metrics.table_operations, f"table.{table.name}", self.KEYS_DELETED))

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        TALLY.add(self._child(self._metrics.topic_messages_sent, f"topic.{topic}"))
        return Monitor.on_send_initiated(self, producer, topic, message, keysize, valsize)

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        Monitor.on_send_completed(self, producer, state, metadata)
        TALLY.add(self._metrics.total_sent_messages)
        TALLY.observe(self._metrics.producer_send_latency, self.ms_since(state))

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        # Faust calls this for every record it fetches, with the partition's high watermark:
        # the same value for a whole fetched batch (2 % of the dedup stage, py-spy).
        if self.tp_end_offsets.get(tp) == offset:
            return
        Monitor.track_tp_end_offset(self, tp, offset)
        TALLY.set(self._child(self._metrics.topic_partition_end_offset, tp.topic, tp.partition), offset)


def faust_monitor() -> PrometheusMonitor:
    """The app's Faust monitor: Faust's own sensor metrics, in this registry."""
    return LeanPrometheusMonitor(metrics=FAUST)


class PipelineSensor(BatchSensor, Sensor):
    """Faust's sensor hooks, counted in the pipeline's metrics."""

    def __init__(self, *, guarantee: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guarantee = guarantee
        self._child = _Children()

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        TALLY.add(self._child(RECORDS_CONSUMED, tp.topic))

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        TALLY.add(self._child(RECORDS_ACKED, tp.topic))

    def on_batch_in(self, stream: Any, messages: Sequence[Any], events: Sequence[Any]) -> None:
        for topic, n in collections.Counter(message.topic for message in messages).items():
            TALLY.add(self._child(RECORDS_CONSUMED, topic), n)

    def on_batch_out(self, stream: Any, events: Sequence[Any], acked: Sequence[Any]) -> None:
        for topic, n in collections.Counter(message.topic for message in acked).items():
            TALLY.add(self._child(RECORDS_ACKED, topic), n)

    def on_commit_initiated(self, consumer: Any) -> Any:
        return time.monotonic()

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        if isinstance(state, float):
            COMMIT_SECONDS.labels(self._guarantee).observe(time.monotonic() - state)

    def on_rebalance_start(self, app: Any) -> dict:
        REBALANCES.inc()
        return {"time_start": time.monotonic()}

    def on_rebalance_end(self, app: Any, state: dict) -> None:
        started = state.get("time_start") if isinstance(state, dict) else None
        if started is not None:
            REBALANCE_SECONDS.observe(time.monotonic() - started)


def install(app: Any, *, guarantee: str) -> None:
    """Add :class:`PipelineSensor` to ``app`` (called when the worker starts)."""
    if not any(isinstance(sensor, PipelineSensor) for sensor in app.sensors):
        app.sensors.add(PipelineSensor(guarantee=guarantee))


# -- the calls the pipeline makes: one line at each place ---------------------------------

def counted(name: str, by: int = 1) -> None:
    """A pipeline counter ``stage.outcome`` went up (tables/counters.py ``count``)."""
    stage, _, outcome = name.partition(".")
    STAGE_RECORDS.labels(stage, outcome).inc(by)


def dead_lettered(stage: str, code: str) -> None:
    DEAD_LETTERS.labels(stage, code).inc()


def fix_intervened(fix: str, action: str = "applied") -> None:
    """A fix of faust_guarantees did something stock Faust would not have."""
    FIX_INTERVENTIONS.labels(fix, action).inc()


def transaction_aborted(reason: str, n: int = 1) -> None:
    TRANSACTIONS_ABORTED.labels(reason).inc(n)


def sink_waiting(target: str) -> None:
    """The sink waits before trying a charge again: the external system is unavailable."""
    SINK_RETRIES.labels(target).inc()
    SINK_OUTAGE.labels(target).set(1)


def sink_answered(target: str) -> None:
    SINK_OUTAGE.labels(target).set(0)


def swept(passes: int, deleted: int, now: float) -> None:
    DEDUP_SWEEP_PASSES.inc(passes)
    DEDUP_SWEPT.inc(deleted)
    DEDUP_SWEEP_LAST.set(now)


# -- read at scrape time -------------------------------------------------------------------

def true_lag(committed: int | None, highwater: int | None, *, exactly_once: bool,
             position: int | None = None, read: int | None = None) -> int | None:
    """Records of a partition not yet committed, or None when the high watermark is unknown.

    at_least_once: high watermark minus committed offset. exactly_once: every
    transaction ends with a commit marker that takes an offset, and a partition
    written by several transactional producers (one per source partition) can end
    with several markers after its last record, so the same subtraction showed 3
    for a drained partition. There the lag is what the client has not fetched yet
    (high watermark minus its ``position``, which moves past the markers it
    fetched) plus what was delivered and is not committed (``read``, the last
    offset delivered, + 1 minus committed). Markers inside either range still
    count: exact when drained, an upper bound while behind. Without a position,
    one offset of slack is assumed (one marker).
    """
    if highwater is None:
        return None
    base = committed or 0
    if not exactly_once:
        return max(0, highwater - base)
    if position is None:
        return max(0, highwater - base - 1)
    delivered_uncommitted = max(0, read + 1 - base) if read is not None else 0
    return max(0, highwater - position) + delivered_uncommitted


def set_lag(positions: Iterable[tuple[Any, int | None, int | None]], *, exactly_once: bool,
            fetched: Callable[[Any], tuple[int | None, int | None]] = lambda tp: (None, None)) -> None:
    """``positions`` as health.stream_positions gives them; ``fetched(tp)``: the client's
    position and the last offset delivered, for exactly_once."""
    LAG.clear()  # revoked partitions disappear
    for tp, committed, highwater in positions:
        position, read = fetched(tp) if exactly_once else (None, None)
        lag = true_lag(committed, highwater, exactly_once=exactly_once, position=position, read=read)
        if lag is not None:
            LAG.labels(tp.topic, str(tp.partition)).set(lag)


def set_dedup_keys(dbs: dict[int, Any] | None, fallback: Callable[[], int]) -> None:
    """Key counts of the seen-events store: RocksDB's estimate per partition (counting
    a million keys at every scrape would hold the event loop), else ``fallback()``."""
    DEDUP_KEYS.clear()
    if not dbs:
        DEDUP_KEYS.labels("all").set(fallback())
        return
    for partition, db in list(dbs.items()):
        DEDUP_KEYS.labels(str(partition)).set(db.property_int_value("rocksdb.estimate-num-keys") or 0)


def set_memory(parts: dict[str, float]) -> None:
    """Publish :func:`streams_app.memory.breakdown`'s parts."""
    for part, value in parts.items():
        if part == "table_stores":
            STORES.labels("tables").set(value)
        elif part == "open_stores":
            STORES.labels("process").set(value)
        else:
            MEMORY.labels(part).set(value)


def set_charges(target: str, charges: int, charged_events: int, duplicate_charges: int) -> None:
    CHARGES.labels(target).set(charges)
    CHARGED_EVENTS.labels(target).set(charged_events)
    DUPLICATE_CHARGES.labels(target).set(duplicate_charges)


def sync_counter(counter: Counter, labels: tuple[str, ...], total: int, seen: dict[tuple, int]) -> None:
    """Add to ``counter`` what a cumulative ``total`` kept elsewhere grew by since the last call."""
    delta = total - seen.get(labels, 0)
    if delta > 0:
        counter.labels(*labels).inc(delta)
    seen[labels] = max(total, seen.get(labels, 0))


async def exposition(refresh: Callable[[], Awaitable[None]]) -> bytes:
    """The text a scrape gets: the scrape-time values refreshed first."""
    await refresh()
    return generate_latest(REGISTRY)
