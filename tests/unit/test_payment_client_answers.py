"""How the payment API client reads answers that are not a charge, against a real HTTP server
(aiohttp, in process) that answers like a gateway in front of the API would."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from payment_api.client import PaymentClient
from payment_api.errors import RequestRejected, RetryableError

CHARGE = {"id": "ch_1", "amount": 100, "currency": "EUR", "account": "acct-1",
          "created_at": "2026-12-06T00:00:00+00:00"}


async def _charge_through(answers: list[int | tuple[int, bytes]]) -> tuple[object, int]:
    """Charge once through a server answering ``answers`` in turn (a status, or a status and
    the body's bytes), then a charge (201); return the result or the exception, and how many
    requests the server saw."""
    seen = 0

    async def charges(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        answer = answers[seen - 1] if seen <= len(answers) else 201
        if isinstance(answer, tuple):
            return web.Response(status=answer[0], body=answer[1], content_type="application/json")
        if answer == 201:
            return web.json_response(CHARGE, status=201)
        return web.json_response({"error": {"type": "http_error", "message": f"answer {answer}"}}, status=answer)

    app = web.Application()
    app.router.add_post("/v1/charges", charges)
    async with TestServer(app) as server:
        client = PaymentClient(str(server.make_url("")), backoff_initial_s=0.001, backoff_max_s=0.001)
        try:
            result: object = await client.charge(100, "EUR", "acct-1", idempotency_key="evt-1", retries=3)
        except (RequestRejected, RetryableError) as exc:
            result = exc
        finally:
            await client.close()
    return result, seen


@pytest.mark.parametrize("status", [401, 403, 404, 405, 408, 409, 429, 500, 503])
def test_an_answer_about_the_api_not_the_request_is_retried(status):
    """Credentials taken away, a wrong URL or a proxy in the way, throttling, a key being
    processed, a server error: the request is not the problem, so it is tried again (the
    sink waits; it does not dead-letter every payment). 401-405 were refusals before."""
    result, seen = asyncio.run(_charge_through([status, status]))
    assert seen == 3 and result.charge.id == "ch_1"
    result, seen = asyncio.run(_charge_through([status] * 4))
    assert seen == 4 and isinstance(result, RetryableError) and str(status) in str(result)


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_refusal_of_the_request_itself_is_not_retried(status):
    result, seen = asyncio.run(_charge_through([status]))
    assert seen == 1 and isinstance(result, RequestRejected) and result.status == status


@pytest.mark.parametrize("answer", [
    (201, b"<html>gateway</html>"),                  # a proxy's page
    (201, b'{"id": "ch_1", "amount": 1'),             # cut short
    (201, b'{"charged": true}'),                      # not a charge
    (200, b""), (202, b'{"status": "queued"}'), (204, b""),  # not the answer the API gives
])
def test_an_answer_that_is_not_a_charge_is_retried_not_blamed_on_the_record(answer):
    """A success status whose body is not a charge, or another 2xx, comes from something in
    the way (a gateway, a cut connection, another version of the API): the request is not at
    fault, so the call is tried again (with the idempotency key, a charge already made is
    answered as a replay). Before, a 201 that was not a charge raised pydantic's
    ValidationError, which the sink dead-lettered as the record's processing error."""
    result, seen = asyncio.run(_charge_through([answer, answer]))
    assert seen == 3 and result.charge.id == "ch_1"
    result, seen = asyncio.run(_charge_through([answer] * 4))
    assert seen == 4 and isinstance(result, RetryableError), result
