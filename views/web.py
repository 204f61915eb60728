"""Web views of table state, served by Faust's own web server (aiohttp).

    GET /                         HTML dashboard: the guarantee in force and live counts
    GET /api/stats                everything the dashboard shows, as JSON
    GET /api/dedup                dedup counters and horizon
    GET /api/accounts/{account}   one account's balance, answered by the worker that
                                  owns the account's partition (table_route forwards)
    GET /api/charges              charge counts from the external system (database or API)
    GET /health, /health/ready    200 when the worker can make progress, else 503 and why
    GET /health/live              200 while the worker answers (streams_app/health.py)
    GET /metrics                  Prometheus text format (streams_app/metrics.py)
    GET /api/dead-letters         the latest dead letters, with the command that replays each
    GET /debug/memory             where the Python heap was allocated, largest first, while
                                  tracemalloc traces (PYTHONTRACEMALLOC=4); ?by=traceback

Counters come from the ``pipeline-counters`` table on this worker (active and
standby partitions); charges are counted in the database itself, so the two
sides of "exactly once" are measured independently.
"""

from __future__ import annotations

import heapq
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiokafka import TopicPartition
from faust.web import Request, Response, View

from agents.sink import Sink
from streams_app import memory, metrics
from streams_app.dlq import dlq_place, latest_dead_letters
from streams_app.health import SAMPLE_S, started, stream_positions
from streams_app.ledger import ChargeStats
from streams_app.stores import open_databases
from tables import Tables

log = logging.getLogger(__name__)

DASHBOARD = (Path(__file__).parent / "dashboard.html").read_text()

#: What the charges card counts, by sink target: the external system's own count.
CHARGES_LABEL = {"database": "charges (database rows)", "api": "charges (payment API)"}
TOP_BALANCES = 5
#: Read the DLQ's tail at most this often, whoever asks (the dashboard asks every 5 s).
DEAD_LETTERS_TTL_S = 3.0


class WebViews:
    """What the pages of one app answer: read from its tables, its consumer and, when this
    worker runs the sink stage, the external system (``sink``; None otherwise)."""

    def __init__(self, app: Any, tables: Tables, sink: Sink | None) -> None:
        self.app = app
        self.settings = app.settings
        self.tables = tables
        self.sink = sink
        self.exactly_once = self.settings.faust_guarantee == "exactly_once"
        self._ledger_retries_seen: dict[tuple, int] = {}
        self._dead_letters_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def _lags(self, positions: list[tuple[Any, int | None, int | None]]) -> dict[Any, int | None]:
        """True lag of each stream partition (metrics.true_lag): records, not transaction markers."""
        lags = {}
        for tp, committed, highwater in positions:
            position, read = self._fetched(tp) if self.exactly_once else (None, None)
            lags[tp] = metrics.true_lag(committed, highwater, exactly_once=self.exactly_once,
                                        position=position, read=read)
        return lags

    def lag_rows(self) -> list[dict[str, Any]]:
        return [{"topic": tp.topic, "partition": tp.partition, "lag": lag}
                for tp, lag in self._lags(stream_positions(self.app)).items()]

    def top_balances(self, n: int = TOP_BALANCES) -> list[dict[str, Any]]:
        """The largest balances among the accounts this worker holds (one pass over its table)."""
        entries = ((account, currency, amount) for account, by_currency in self.tables.balances.table.items()
                   for currency, amount in dict(by_currency).items())
        return [{"account": a, "currency": c, "amount": v}
                for a, c, v in heapq.nlargest(n, entries, key=lambda e: e[2])]

    async def charges(self) -> tuple[ChargeStats | None, str | None]:
        """The external system's own counts, or why it cannot say (an outage must not take the
        dashboard down with it: the other stages go on, and the page says what is unknown)."""
        if self.sink is None:
            return None, f"the sink stage does not run on this worker (STAGES={','.join(self.settings.stages)})"
        try:
            return await self.sink.charge_stats(), None
        except Exception as exc:  # noqa: BLE001 - any failure to ask: unavailable, with the reason
            return None, f"{self.settings.sink_target} unavailable: {type(exc).__name__}"

    async def stats(self) -> dict[str, Any]:
        settings = self.settings
        counts = self.tables.counters.totals()
        charges, unavailable = await self.charges()
        return {
            "app_id": settings.app_id,
            "processing_guarantee": settings.processing_guarantee,
            "sink_mode": settings.sink_mode,
            "sink_target": settings.sink_target,
            "consumed": counts.get("ingest.valid", 0) + counts.get("ingest.dead_lettered", 0),
            "valid": counts.get("ingest.valid", 0),
            # every stage's: a record another stage could not decode or process is one too
            "dead_lettered": sum(n for name, n in counts.items() if name.endswith(".dead_lettered")),
            "dead_lettered_by_stage": {name.split(".")[0]: n for name, n in sorted(counts.items())
                                       if name.endswith(".dead_lettered")},
            "dead_letter_references": counts.get("dlq.references", 0),
            "duplicates_dropped": counts.get("dedup.duplicates", 0),
            "unique": counts.get("dedup.unique", 0),
            "applied": counts.get("apply.applied", 0),
            "charges": charges.charges if charges else None,
            "charged_events": charges.charged_events if charges else None,
            "duplicate_charges": charges.duplicate_charges if charges else None,
            "charged_amount": charges.total_amount if charges else None,
            "charges_unavailable": unavailable,
            "charges_label": CHARGES_LABEL[settings.sink_target],
            "lag": self.lag_rows(),
            "top_balances": self.top_balances(),
            "health": self.app.health.report()[1],
        }

    async def sample_health(self) -> None:
        positions = stream_positions(self.app)
        self.app.health.sample(started=started(self.app), positions=positions, lags=self._lags(positions))

    def _fetched(self, tp: Any) -> tuple[int | None, int | None]:
        """The client's fetch position of ``tp`` (past the transaction markers it fetched) and
        the last offset Faust delivered; None where unknown (not yet sought, no client)."""
        consumer = self.app.consumer
        read = consumer._read_offset.get(tp)
        try:
            client = consumer._thread._ensure_consumer()
            state = client._fetcher._subscriptions.subscription.assignment.state_value(
                TopicPartition(tp.topic, tp.partition))
        except AttributeError:
            return None, read
        if state is None or not state.has_valid_position:
            return None, read
        return state.position, read

    async def refresh_metrics(self) -> None:
        """The values /metrics reads at scrape time: from the external system, the consumer
        and the stores. An external system that does not answer leaves its last values."""
        metrics.set_lag(stream_positions(self.app), exactly_once=self.exactly_once, fetched=self._fetched)
        seen_events = self.tables.seen_events.table
        metrics.set_dedup_keys(open_databases(seen_events), lambda: len(seen_events))
        store_memory = getattr(self.app, "store_memory", None)
        metrics.set_memory(memory.breakdown(memory.table_stores(self.app.tables.values()),
                                            store_dir=Path(self.app.conf.tabledir),
                                            shared_cache=store_memory and store_memory.block_cache()))
        sink = self.sink
        if sink is None:
            return
        target = self.settings.sink_target
        if target == "database":
            metrics.sync_counter(metrics.SINK_RETRIES, ("database",), sink.ledger.retries,
                                 self._ledger_retries_seen)
            metrics.SINK_OUTAGE.labels("database").set(int(sink.ledger.outage))
        try:
            charges = await sink.charge_stats()
        except Exception as exc:  # noqa: BLE001 - an outage must not fail the scrape
            log.warning("metrics: charges not refreshed: %s", exc)
        else:
            metrics.set_charges(target, charges.charges, charges.charged_events, charges.duplicate_charges)

    async def dead_letter_rows(self, limit: int = 20) -> list[dict[str, Any]]:
        read_at, rows = self._dead_letters_cache
        if time.monotonic() - read_at >= DEAD_LETTERS_TTL_S:
            rows = [{
                "stage": d.stage, "code": d.code, "reason": d.reason,  # masked when the letter was made
                "source": d.place, "dlq": dlq_place(d), "timestamp": d.original_timestamp,
                "reference": d.reference is not None,
                "replay": f"faust -A streams_app dlq replay --source '{d.place}'",
            } for d in await latest_dead_letters(self.settings, limit)]
            self._dead_letters_cache = (time.monotonic(), rows)
        return rows[:limit]


def register(app: Any, tables: Tables, sink: Sink | None) -> WebViews:
    """Declare the pages (and the health sampler's timer) on ``app``."""
    views = WebViews(app, tables, sink)
    settings = app.settings
    balances = tables.balances.table

    @app.timer(SAMPLE_S, name="views.web.sample_health")
    async def _sample_health() -> None:
        await views.sample_health()

    @app.page("/health/live")
    class Live(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "live"})

    @app.page("/health/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            status, body = app.health.report()
            return self.json(body, status=status)

    @app.page("/health")
    class HealthView(Ready):
        pass

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            return self.html(DASHBOARD)

    @app.page("/api/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            return self.json(await views.stats())

    @app.page("/api/dedup")
    class Dedup(View):
        async def get(self, request: Request) -> Response:
            counts = tables.counters.totals()
            return self.json({
                "forwarded_unique": counts.get("dedup.unique", 0),
                "duplicates_dropped": counts.get("dedup.duplicates", 0),
                "horizon_seconds": settings.dedup_horizon,
            })

    @app.page("/api/accounts/{account}")
    class AccountBalance(View):
        @app.table_route(table=balances, match_info="account")
        async def get(self, request: Request, account: str) -> Response:
            if account not in balances:
                return self.error(404, f"no payments applied to account {account!r}")
            return self.json({
                "account": account, "balances": dict(balances[account]),
                "served_by": app.conf.canonical_url.human_repr(),
            })

    @app.page("/api/charges")
    class Charges(View):
        async def get(self, request: Request) -> Response:
            charges, unavailable = await views.charges()
            body = {
                "target": sink.effect_target() if sink else None,  # never echoes credentials
                "sink_target": settings.sink_target,
                "sink_mode": settings.sink_mode,
            }
            if charges is None:
                return self.json({**body, "error": unavailable}, status=503)
            return self.json({
                **body,
                "charges": charges.charges,
                "charged_events": charges.charged_events,
                "duplicate_charges": charges.duplicate_charges,
                "charged_amount": charges.total_amount,
            })

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            body = await metrics.exposition(views.refresh_metrics)
            # aiohttp's own Response: Faust's self.bytes() refuses a content type with parameters.
            return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    @app.page("/api/dead-letters")
    class DeadLetters(View):
        async def get(self, request: Request) -> Response:
            return self.json({
                "dead_letters": await views.dead_letter_rows(),
                "replay_help": "faust -A streams_app dlq replay --code CODE | --source PLACE [--dry-run]",
            })

    @app.page("/debug/memory")
    class PythonHeap(View):
        async def get(self, request: Request) -> Response:
            limit = request.query.get("limit", "")
            return self.json(memory.python_heap_top(int(limit) if limit.isdigit() else 25,
                                                    by=request.query.get("by", "lineno")))

    return views
