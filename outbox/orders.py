"""The write side: an order and its ``OrderPlaced`` outbox row, committed together or not at all.

Routes, added to any aiohttp application by :func:`add_routes` (``python -m
outbox serve`` adds them to the payment API)::

    POST /v1/orders          {"customer_id", "amount", "currency"} -> 201 order
    GET  /v1/orders/{id}     -> 200 order, 404 if unknown

Guarantee: :func:`place_order` writes the ``orders`` row and the ``outbox`` row
in ONE database transaction, so the event exists if and only if the order
does. There is no Kafka call in the request path: a broker outage cannot fail
or slow an order, and no order can be announced and then rolled back.

* A failure before the commit (a bad request is refused before the
  transaction; an order over the customer's credit limit is refused after
  both inserts, by a check on the written state) rolls back both rows:
  nothing exists for the relay to publish. This is the first fault case.
* A crash after the commit leaves an unsent outbox row; the relay publishes
  it whenever it next runs (the second case, see :mod:`outbox.relay`).

The event's aggregate is the customer: its id is the record key, so one
customer's orders land in one partition and are consumed in the order they
were placed. That order must be the outbox id order, which concurrent
writers could break on PostgreSQL (transaction A takes id 10, B takes id 11,
B commits first: the relay sees 11 before 10). So :func:`add_outbox_event`
locks the aggregate (``pg_advisory_xact_lock``) until the transaction ends: one
customer's ids are then handed out in commit order, and the credit check that
follows cannot race either. On SQLite, ``BEGIN IMMEDIATE`` already serialises
all writers.

Errors are JSON, ``{"error": {"type", "message"}}`` as in the payment API:
400 ``invalid_json`` / ``invalid_request``, 404 ``not_found``, 422
``credit_limit_exceeded``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from outbox import ORDER_PLACED
from outbox.schema import Connection, Dialect, connect, create_outbox_schema, iso_utc

MAX_AMOUNT: Final = 10**12
DEFAULT_CREDIT_LIMIT: Final = 10**9
"""Largest sum of order amounts per customer (minor units)."""


class OrderRequest(BaseModel):
    """Body of ``POST /v1/orders``; strict, unknown fields are errors."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    customer_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]
    amount: Annotated[int, Field(gt=0, le=MAX_AMOUNT, description="minor units, e.g. cents")]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]


class Order(BaseModel):
    """An order as stored, as returned by the API and as the ``OrderPlaced`` payload."""

    model_config = ConfigDict(frozen=True)

    id: str
    customer_id: str
    amount: int
    currency: str
    created_at: str

    @classmethod
    def create(cls, request: OrderRequest, now: float) -> Order:
        return cls(
            id=f"ord_{secrets.token_hex(12)}",
            customer_id=request.customer_id,
            amount=request.amount,
            currency=request.currency,
            created_at=iso_utc(now),
        )


class CreditLimitExceeded(Exception):
    """The order would take the customer's total over the limit; nothing was written."""

    def __init__(self, customer_id: str, total: int, limit: int) -> None:
        super().__init__(f"customer {customer_id}: orders would total {total}, over the limit of {limit}")


async def place_order(
    conn: Connection, request: OrderRequest, *, credit_limit: int = DEFAULT_CREDIT_LIMIT, now: float | None = None
) -> Order:
    """Write the order and its outbox row in one transaction; raise :class:`CreditLimitExceeded` (rolled back)."""
    order = Order.create(request, time.time() if now is None else now)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO orders (id, customer_id, amount, currency, created_at) VALUES (%s, %s, %s, %s, %s)",
            (order.id, order.customer_id, order.amount, order.currency, order.created_at),
        )
        await add_outbox_event(conn, order.customer_id, ORDER_PLACED, order.model_dump_json(), order.created_at)
        total = await conn.fetchone("SELECT sum(amount) FROM orders WHERE customer_id = %s", (order.customer_id,))
        assert total is not None
        if int(total[0]) > credit_limit:
            raise CreditLimitExceeded(order.customer_id, int(total[0]), credit_limit)
    return order


async def add_outbox_event(conn: Connection, aggregate_id: str, event_type: str, payload: str, created_at: str) -> int:
    """Insert an unsent outbox row and return its id; call it inside the business transaction.

    On PostgreSQL it first locks the aggregate until the transaction ends, so
    that the aggregate's ids are handed out in commit order (module docstring).
    """
    if conn.dialect is Dialect.POSTGRESQL:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (aggregate_id,))
    row = await conn.fetchone(
        "INSERT INTO outbox (aggregate_id, type, payload, created_at) VALUES (%s, %s, %s, %s) RETURNING id",
        (aggregate_id, event_type, payload, created_at),
    )
    assert row is not None
    return int(row[0])


async def get_order(conn: Connection, order_id: str) -> Order | None:
    async with conn.transaction(write=False):
        row = await conn.fetchone(
            "SELECT id, customer_id, amount, currency, created_at FROM orders WHERE id = %s", (order_id,)
        )
    if row is None:
        return None
    order_id, customer_id, amount, currency, created_at = row
    return Order(id=order_id, customer_id=customer_id, amount=amount, currency=currency, created_at=created_at)


# --------------------------------------------------------------------------- HTTP


@dataclass
class OrdersService:
    """What the routes need, stored in the app before it starts; the connection is opened at startup."""

    db_url: str
    credit_limit: int
    conn: Connection | None = None

    def connection(self) -> Connection:
        if self.conn is None:
            raise RuntimeError("the orders database is not open: the application has not started")
        return self.conn


ORDERS: Final = web.AppKey("outbox_orders", OrdersService)


def add_routes(app: web.Application, db_url: str, *, credit_limit: int = DEFAULT_CREDIT_LIMIT) -> None:
    """Serve the orders routes from ``app``, on a connection to ``db_url`` opened at startup."""
    app[ORDERS] = OrdersService(db_url, credit_limit)
    app.cleanup_ctx.append(_orders_database)
    app.add_routes([web.post("/v1/orders", create_order), web.get("/v1/orders/{order_id}", read_order)])


async def create_order(request: web.Request) -> web.Response:
    """``POST /v1/orders``: validate, then place the order (201) or refuse it (4xx, nothing written)."""
    try:
        order_request = OrderRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        return _validation_error(exc)
    try:
        service = request.app[ORDERS]
        order = await place_order(service.connection(), order_request, credit_limit=service.credit_limit)
    except CreditLimitExceeded as exc:
        return _error(422, "credit_limit_exceeded", str(exc))
    return web.json_response(order.model_dump(), status=201)


async def read_order(request: web.Request) -> web.Response:
    """``GET /v1/orders/{order_id}``."""
    order = await get_order(request.app[ORDERS].connection(), request.match_info["order_id"])
    if order is None:
        return _error(404, "not_found", "no such order")
    return web.json_response(order.model_dump())


async def _orders_database(app: web.Application) -> AsyncIterator[None]:
    service = app[ORDERS]
    conn = await connect(service.db_url)
    await create_outbox_schema(conn)
    service.conn = conn
    yield
    service.conn = None
    await conn.close()


def _validation_error(exc: ValidationError) -> web.Response:
    errors = exc.errors(include_url=False)
    error_type = "invalid_json" if errors[0]["type"] == "json_invalid" else "invalid_request"
    return _error(400, error_type, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors))


def _error(status: int, error_type: str, message: str) -> web.Response:
    body: dict[str, Any] = {"error": {"type": error_type, "message": message}}
    return web.json_response(body, status=status)
