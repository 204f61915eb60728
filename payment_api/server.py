"""The payment API: an aiohttp application standing for an external payment provider.

Faust sink agents call it to charge accounts. Kafka gives them at-least-once
delivery, so the same event can reach a sink twice (redelivery after a crash
or rebalance, or the client's own retry after a timeout). Only an
idempotency key derived from the event makes the second call harmless.

Routes::

    POST /v1/charges           create a charge; optional Idempotency-Key header
    GET  /v1/charges/{id}      one charge (404 if unknown)
    GET  /v1/charges           ?account=...&limit=... oldest first
    GET  /v1/stats             {"charges", "idempotency_keys", "distinct_references", "total_amount",
                                "replays", "conflicts", "mismatches"}
    GET  /v1/config            {"key_retention_seconds", "lock_timeout_seconds", "prune_interval_seconds"}
    GET  /healthz              liveness
    GET|POST /v1/_faults       read / change the injected faults at runtime

Idempotency follows Stripe and the IETF draft
``draft-ietf-httpapi-idempotency-key-header``: the first request with a key
stores its response; a retry with the same key and parameters gets that
response again, byte for byte, with ``Idempotent-Replayed: true``; the same
key with other parameters gets 422; a retry arriving while the first request
is still running gets 409. A key is kept ``key_retention_s`` (default 7 days,
the pipeline's default ``DEDUP_HORIZON``) and then pruned: a request with a
pruned key is a new charge. ``GET /v1/config`` tells clients how long that is,
so a client that may send a key again later (the Faust sink: an event
re-read from Kafka) can check the promise instead of assuming it. The storage protocol that makes this hold under
concurrency and crashes is described in :mod:`payment_api.store`.

A request is fully validated (key format, then body) before storage is
touched, so a bad request never creates a charge nor burns a key.

Faults, for demonstrating delivery semantics, apply to requests that create
a charge (not to replays):

* ``delay_ms``: processing takes this long while the key is locked, so
  concurrent duplicates see 409 and client timeouts trigger retries.
* ``drop_after_commit``: after the charge is committed, the TCP connection is
  aborted without a response (``true``: every time; an integer ``n``: the
  next ``n`` charges). The client cannot tell whether it was charged; only
  its retry, with or without a key, decides whether a second charge happens.
* ``fail_accounts``: every charge request of these accounts, replays too, is answered 500 (a shard down, a
  bug for one customer) while the others go through: the sink must tell that from an
  outage (agents/failing_charges.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from payment_api.errors import ApiError, ErrorType, error_body
from payment_api.models import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED_HEADER,
    Charge,
    ChargeRequest,
)
from payment_api.store import (
    Acquired,
    InProgress,
    Mismatch,
    Replay,
    Store,
    store_from_url,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 16 * 1024
_KEY_FORMAT: Final = re.compile(r"[\x20-\x7e]{1,255}")

ModelT = TypeVar("ModelT", bound=BaseModel)


#: How long idempotency keys are kept unless configured: the pipeline's default DEDUP_HORIZON.
DEFAULT_KEY_RETENTION_S: Final = 7 * 86400.0


@dataclass(frozen=True)
class Settings:
    """Server configuration fixed at start."""

    db_url: str
    key_retention_s: float = DEFAULT_KEY_RETENTION_S
    lock_timeout_s: float = 30.0
    prune_interval_s: float = 300.0


@dataclass
class Faults:
    """Injected faults; mutable at runtime through ``POST /v1/_faults``."""

    delay_ms: int = 0
    drop_after_commit: bool | int = False
    #: accounts whose every charge fails with a 500 (a shard down, a bug for one customer):
    #: the other accounts' charges go through
    fail_accounts: list[str] = dataclasses.field(default_factory=list)

    def consume_drop(self) -> bool:
        """Return whether to drop the current response, using up one drop of a count."""
        if self.drop_after_commit is True:
            return True
        if self.drop_after_commit is not False and self.drop_after_commit > 0:
            self.drop_after_commit -= 1
            return True
        return False


class FaultsUpdate(BaseModel):
    """Body of ``POST /v1/_faults``; omitted fields keep their value."""

    model_config = ConfigDict(strict=True, extra="forbid")

    delay_ms: Annotated[int, Field(ge=0, le=600_000)] | None = None
    drop_after_commit: bool | Annotated[int, Field(ge=0)] | None = None
    fail_accounts: list[Annotated[str, Field(max_length=128)]] | None = None


class ChargeListQuery(BaseModel):
    """Query string of ``GET /v1/charges``."""

    model_config = ConfigDict(extra="forbid")

    account: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")] | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


STORE: Final = web.AppKey("store", Store)
SETTINGS: Final = web.AppKey("settings", Settings)
FAULTS: Final = web.AppKey("faults", Faults)


def create_app(settings: Settings, faults: Faults | None = None) -> web.Application:
    """Build the application; the store is opened on startup and closed on cleanup."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    app[SETTINGS] = settings
    app[FAULTS] = faults if faults is not None else Faults()
    app[STORE] = store_from_url(settings.db_url)
    app.cleanup_ctx.extend([_store_lifecycle, _pruner_lifecycle])
    app.add_routes(
        [
            web.post("/v1/charges", create_charge),
            web.get("/v1/charges", list_charges),
            web.get("/v1/charges/{charge_id}", get_charge),
            web.get("/v1/stats", get_stats),
            web.get("/v1/config", get_config),
            web.get("/v1/_faults", get_faults),
            web.post("/v1/_faults", update_faults),
            web.get("/healthz", healthz),
        ]
    )
    return app


async def prune_expired_keys(store: Store, retention_s: float, now: float | None = None) -> int:
    """Delete idempotency keys created more than ``retention_s`` before ``now``; return the count.

    After that a retry with an old key is a new request, which is why the
    window must exceed the longest time a client may keep retrying.
    """
    now = time.time() if now is None else now
    return await store.prune_keys(created_before=now - retention_s)


# --------------------------------------------------------------------------- handlers


async def create_charge(request: web.Request) -> web.Response:
    """``POST /v1/charges``: charge once per idempotency key, or on every call without one."""
    key = _idempotency_key(request)
    params = _parse(ChargeRequest, await request.read())
    if params.account in request.app[FAULTS].fail_accounts:
        raise ApiError(500, ErrorType.INTERNAL, f"account {params.account} cannot be charged (injected fault)")
    if key is None:
        return await _charge_without_key(request, params)
    return await _charge_with_key(request, params, key)


async def _charge_without_key(request: web.Request, params: ChargeRequest) -> web.Response:
    """Naive mode: every request, including a client's retry, is a new charge."""
    await _processing_delay(request.app)
    charge = Charge.create(params, time.time())
    await request.app[STORE].insert_charge(charge)
    return _committed_response(request, charge.model_dump_json())


async def _charge_with_key(request: web.Request, params: ChargeRequest, key: str) -> web.Response:
    """Claim the key, then replay, refuse, or charge while holding its lock."""
    claim = await request.app[STORE].claim_key(
        key, params.fingerprint(), time.time(), request.app[SETTINGS].lock_timeout_s
    )
    match claim:
        case Replay(status, body):
            return web.Response(
                status=status, text=body, content_type="application/json", headers={REPLAYED_HEADER: "true"}
            )
        case InProgress():
            raise ApiError(
                409,
                ErrorType.IDEMPOTENCY_KEY_IN_USE,
                "a request with this Idempotency-Key is being processed; retry later",
            )
        case Mismatch():
            raise ApiError(
                422,
                ErrorType.IDEMPOTENCY_KEY_REUSED,
                "this Idempotency-Key was already used with different parameters",
            )
        case Acquired(token):
            return await _charge_holding_key(request, params, key, token)


async def _charge_holding_key(request: web.Request, params: ChargeRequest, key: str, token: str) -> web.Response:
    """Create the charge and store it with the key's response in one transaction.

    If anything fails before that transaction, the key is released so that
    the client's retry need not wait for the lock timeout. Releasing after a
    commit whose acknowledgement was lost is harmless: it only deletes a key
    still ``in_progress``.
    """
    store = request.app[STORE]
    try:
        await _processing_delay(request.app)
        charge = Charge.create(params, time.time())
        body = charge.model_dump_json()
        completed = await store.complete_key(key, token, charge, 201, body)
    except BaseException:
        await store.release_key(key, token)
        raise
    if not completed:
        raise ApiError(
            409,
            ErrorType.IDEMPOTENCY_KEY_IN_USE,
            "the lock on this Idempotency-Key expired during processing and was taken over; retry",
        )
    return _committed_response(request, body)


async def get_charge(request: web.Request) -> web.Response:
    """``GET /v1/charges/{charge_id}``."""
    charge = await request.app[STORE].get_charge(request.match_info["charge_id"])
    if charge is None:
        raise ApiError(404, ErrorType.NOT_FOUND, "no such charge")
    return web.json_response(charge.model_dump())


async def list_charges(request: web.Request) -> web.Response:
    """``GET /v1/charges?account=...&limit=...``: ``{"data": [charge, ...]}``, oldest first."""
    try:
        query = ChargeListQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _validation_error(exc) from None
    charges = await request.app[STORE].list_charges(query.account, query.limit)
    return web.json_response({"data": [charge.model_dump() for charge in charges]})


async def get_stats(request: web.Request) -> web.Response:
    """``GET /v1/stats``."""
    return web.json_response(dataclasses.asdict(await request.app[STORE].stats()))


async def get_config(request: web.Request) -> web.Response:
    """``GET /v1/config``: the promises a client may depend on, in seconds."""
    settings = request.app[SETTINGS]
    return web.json_response({
        "key_retention_seconds": settings.key_retention_s,
        "lock_timeout_seconds": settings.lock_timeout_s,
        "prune_interval_seconds": settings.prune_interval_s,
    })


async def get_faults(request: web.Request) -> web.Response:
    """``GET /v1/_faults``."""
    return web.json_response(dataclasses.asdict(request.app[FAULTS]))


async def update_faults(request: web.Request) -> web.Response:
    """``POST /v1/_faults``: change the given faults, answer with all of them."""
    update = _parse(FaultsUpdate, await request.read())
    faults = request.app[FAULTS]
    if update.delay_ms is not None:
        faults.delay_ms = update.delay_ms
    if update.drop_after_commit is not None:
        faults.drop_after_commit = update.drop_after_commit
    if update.fail_accounts is not None:
        faults.fail_accounts = update.fail_accounts
    log.warning("faults changed: %s", faults)
    return web.json_response(dataclasses.asdict(faults))


async def healthz(_request: web.Request) -> web.Response:
    """``GET /healthz``."""
    return web.json_response({"status": "ok"})


# --------------------------------------------------------------------------- helpers


def _idempotency_key(request: web.Request) -> str | None:
    """Return the request's key, ``None`` without one; 400 for several or a malformed one."""
    values = request.headers.getall(IDEMPOTENCY_KEY_HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, ErrorType.INVALID_IDEMPOTENCY_KEY, f"send at most one {IDEMPOTENCY_KEY_HEADER} header")
    if not _KEY_FORMAT.fullmatch(values[0]):
        raise ApiError(
            400,
            ErrorType.INVALID_IDEMPOTENCY_KEY,
            f"{IDEMPOTENCY_KEY_HEADER} must be 1 to 255 printable ASCII characters",
        )
    return values[0]


def _parse(model: type[ModelT], raw: bytes) -> ModelT:
    """Parse and validate a JSON body, turning any problem into a 400."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _validation_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    error_type = ErrorType.INVALID_JSON if errors[0]["type"] == "json_invalid" else ErrorType.INVALID_REQUEST
    message = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
    return ApiError(400, error_type, message)


async def _processing_delay(app: web.Application) -> None:
    """Apply the ``delay_ms`` fault: the time a charge takes at the provider."""
    delay_ms = app[FAULTS].delay_ms
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)


def _committed_response(request: web.Request, body: str) -> web.Response:
    """Answer 201 for a committed charge, unless the ``drop_after_commit`` fault eats the answer.

    Aborting the transport makes aiohttp's write of the response fail quietly;
    the client sees the connection close with no status line.
    """
    if request.app[FAULTS].consume_drop() and request.transport is not None:
        log.warning("fault: dropping the connection after committing %s", body)
        request.transport.abort()
    return web.Response(status=201, text=body, content_type="application/json")


_HTTP_ERROR_TYPES: Final = {
    404: ErrorType.NOT_FOUND,
    405: ErrorType.METHOD_NOT_ALLOWED,
    413: ErrorType.PAYLOAD_TOO_LARGE,
}


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render :class:`ApiError` and aiohttp's own 4xx/5xx (unknown route, body too large) as JSON."""
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(error_body(exc.error_type, exc.message), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = _HTTP_ERROR_TYPES.get(exc.status, ErrorType.HTTP_ERROR)
        return web.json_response(error_body(error_type, exc.text or exc.reason), status=exc.status)


async def _store_lifecycle(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    await store.open()
    yield
    await store.close()


async def _pruner_lifecycle(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_prune_periodically(app[STORE], app[SETTINGS]), name="prune-idempotency-keys")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _prune_periodically(store: Store, settings: Settings) -> None:
    """Prune expired keys every ``prune_interval_s``; a failed run is logged and retried next time."""
    while True:
        await asyncio.sleep(settings.prune_interval_s)
        try:
            pruned = await prune_expired_keys(store, settings.key_retention_s)
        except Exception:
            log.exception("pruning idempotency keys failed")
        else:
            log.info("pruned %d expired idempotency keys", pruned)
