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

Counters come from the ``pipeline-counters`` table on this worker (active and
standby partitions); charges are counted in the database itself, so the two
sides of "exactly once" are measured independently.
"""

from __future__ import annotations

import heapq
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web
from faust.web import Request, Response, View

from tables.balances import balances
from tables.counters import totals
from tables.seen_events import seen_events

from streams_app import metrics
from streams_app.ledger import ChargeStats
from streams_app.application import current_app
from streams_app.dlq import dlq_place, latest_dead_letters
from streams_app.health import SAMPLE_S, started, stream_positions


app = current_app()
settings = app.settings

log = logging.getLogger(__name__)

DASHBOARD = (Path(__file__).parent / "dashboard.html").read_text()


#: What the charges card counts, by sink target: the external system's own count.
CHARGES_LABEL = {"database": "charges (database rows)", "api": "charges (payment API)"}
TOP_BALANCES = 5
EXACTLY_ONCE = settings.faust_guarantee == "exactly_once"


def _lags(positions: list[tuple[Any, int | None, int | None]]) -> dict[Any, int | None]:
    """True lag of each stream partition (metrics.true_lag): records, not transaction markers."""
    lags = {}
    for tp, committed, highwater in positions:
        position, read = _fetched(tp) if EXACTLY_ONCE else (None, None)
        lags[tp] = metrics.true_lag(committed, highwater, exactly_once=EXACTLY_ONCE, position=position, read=read)
    return lags


def lag_rows() -> list[dict[str, Any]]:
    return [{"topic": tp.topic, "partition": tp.partition, "lag": lag}
            for tp, lag in _lags(stream_positions(app)).items()]


def top_balances(n: int = TOP_BALANCES) -> list[dict[str, Any]]:
    """The largest balances among the accounts this worker holds (one pass over its table)."""
    entries = ((account, currency, amount) for account, by_currency in balances.items()
               for currency, amount in dict(by_currency).items())
    return [{"account": a, "currency": c, "amount": v}
            for a, c, v in heapq.nlargest(n, entries, key=lambda e: e[2])]


def _sink() -> ModuleType | None:
    """The sink stage (its clients of the external system) when this worker runs it, else
    None: importing agents.sink declares its agent, which a worker without the stage must not."""
    if "sink" not in settings.stages:
        return None
    import agents.sink

    return agents.sink


async def _charges() -> tuple[ChargeStats | None, str | None]:
    """The external system's own counts, or why it cannot say (an outage must not take the
    dashboard down with it: the other stages go on, and the page says what is unknown)."""
    sink = _sink()
    if sink is None:
        return None, f"the sink stage does not run on this worker (STAGES={','.join(settings.stages)})"
    try:
        return await sink.charge_stats(), None
    except Exception as exc:  # noqa: BLE001 - any failure to ask: unavailable, with the reason
        return None, f"{settings.sink_target} unavailable: {type(exc).__name__}"


async def stats() -> dict[str, Any]:
    counts = totals()
    charges, unavailable = await _charges()
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
        "lag": lag_rows(),
        "top_balances": top_balances(),
        "health": app.health.report()[1],
    }


@app.timer(SAMPLE_S)
async def _sample_health() -> None:
    positions = stream_positions(app)
    app.health.sample(started=started(app), positions=positions, lags=_lags(positions))


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
        return self.json(await stats())


@app.page("/api/dedup")
class Dedup(View):
    async def get(self, request: Request) -> Response:
        counts = totals()
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
        charges, unavailable = await _charges()
        sink = _sink()
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




_ledger_retries_seen: dict[tuple, int] = {}


def _fetched(tp: Any) -> tuple[int | None, int | None]:
    """The client's fetch position of ``tp`` (past the transaction markers it fetched) and
    the last offset Faust delivered; None where unknown (not yet sought, no client)."""
    from aiokafka import TopicPartition

    read = app.consumer._read_offset.get(tp)
    try:
        client = app.consumer._thread._ensure_consumer()
        state = client._fetcher._subscriptions.subscription.assignment.state_value(
            TopicPartition(tp.topic, tp.partition))
    except AttributeError:
        return None, read
    if state is None or not state.has_valid_position:
        return None, read
    return state.position, read


async def _refresh_metrics() -> None:
    """The values /metrics reads at scrape time: from the external system, the consumer
    and the stores. An external system that does not answer leaves its last values."""
    metrics.set_lag(stream_positions(app), exactly_once=EXACTLY_ONCE, fetched=_fetched)
    metrics.set_dedup_keys(getattr(seen_events.data, "_dbs", None), lambda: len(seen_events))
    sink = _sink()
    if sink is None:
        return
    if settings.sink_target == "database":
        metrics.sync_counter(metrics.SINK_RETRIES, ("database",), sink.ledger.retries, _ledger_retries_seen)
        metrics.SINK_OUTAGE.labels("database").set(int(sink.ledger.outage))
    try:
        charges = await sink.charge_stats()
    except Exception as exc:  # noqa: BLE001 - an outage must not fail the scrape
        log.warning("metrics: charges not refreshed: %s", exc)
    else:
        metrics.set_charges(settings.sink_target, charges.charges, charges.charged_events,
                            charges.duplicate_charges)


@app.page("/metrics")
class Metrics(View):
    async def get(self, request: Request) -> Response:
        body = await metrics.exposition(_refresh_metrics)
        # aiohttp's own Response: Faust's self.bytes() refuses a content type with parameters.
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


#: Read the DLQ's tail at most this often, whoever asks (the dashboard asks every 5 s).
DEAD_LETTERS_TTL_S = 3.0
_dead_letters_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])


async def dead_letter_rows(limit: int = 20) -> list[dict[str, Any]]:
    global _dead_letters_cache
    read_at, rows = _dead_letters_cache
    if time.monotonic() - read_at >= DEAD_LETTERS_TTL_S:
        rows = [{
            "stage": d.stage, "code": d.code, "reason": d.reason,  # masked when the letter was made
            "source": d.place, "dlq": dlq_place(d), "timestamp": d.original_timestamp,
            "reference": d.reference is not None,
            "replay": f"faust -A streams_app dlq replay --source '{d.place}'",
        } for d in await latest_dead_letters(settings, limit)]
        _dead_letters_cache = (time.monotonic(), rows)
    return rows[:limit]


@app.page("/api/dead-letters")
class DeadLetters(View):
    async def get(self, request: Request) -> Response:
        return self.json({"dead_letters": await dead_letter_rows(),
                          "replay_help": "faust -A streams_app dlq replay --code CODE | --source PLACE [--dry-run]"})
