"""Async client of the payment API, as used by the Faust sink agents.

:meth:`PaymentClient.charge` retries every failure that is not the request's
own (timeouts, dropped connections, ``409`` (the key is busy), ``5xx``, any
other status but the refusals ``400``/``413``/``422``, and a ``201`` whose
body is not a charge), with jittered exponential backoff. After a timeout or a
dropped connection the client cannot know whether the charge happened, so whether a retry is safe depends only on
the key:

* naive mode (``idempotency_key=None``): a retry is a new request and may
  charge the customer twice;
* idempotent mode (key = the Kafka event's id): the server answers a retry
  with the first response (``replayed=True``), so at-least-once delivery of
  events gives exactly-once charges.

Example::

    async with PaymentClient("http://127.0.0.1:8081", timeout=2.0) as client:
        result = await client.charge(1999, "EUR", "acct-42", idempotency_key=event.id)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from common.redact import mask_url
from payment_api.errors import RequestRejected, RetryableError
from payment_api.models import IDEMPOTENCY_KEY_HEADER, REPLAYED_HEADER, Charge

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChargeResult:
    """Outcome of :meth:`PaymentClient.charge`."""

    charge: Charge
    replayed: bool
    """True when the server answered with the stored response of an earlier request."""
    attempts: int
    """HTTP requests sent, including the successful one."""


class PaymentClient:
    """HTTP client of the payment API; use as an async context manager or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        timeout: float = 5.0,
        *,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
    ) -> None:
        self._base_url = base_url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PaymentClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the underlying HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def charge(
        self,
        amount: int,
        currency: str,
        account: str,
        idempotency_key: str | None = None,
        retries: int = 3,
        reference: str | None = None,
    ) -> ChargeResult:
        """Charge ``amount`` minor units, retrying up to ``retries`` times.

        ``reference`` is stored with the charge for the caller's bookkeeping (the
        lab counts charges per event with it); it does not deduplicate anything.

        Raises :class:`RequestRejected` for a refused request and
        :class:`RetryableError` when every attempt failed in a retryable way.
        """
        payload: dict[str, Any] = {"amount": amount, "currency": currency, "account": account}
        if reference is not None:
            payload["reference"] = reference
        headers = {IDEMPOTENCY_KEY_HEADER: idempotency_key} if idempotency_key is not None else {}
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential(multiplier=self._backoff_initial_s, max=self._backoff_max_s)
            + wait_random(0, self._backoff_initial_s),
            retry=retry_if_exception_type(RetryableError),
            before_sleep=before_sleep_log(log, logging.INFO),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                charge, replayed = await self._post_charge(payload, headers)
        return ChargeResult(charge=charge, replayed=replayed, attempts=attempt.retry_state.attempt_number)

    async def list_charges(self, account: str | None = None, limit: int = 100) -> list[Charge]:
        """Return charges, oldest first, optionally of one account."""
        params: dict[str, str | int] = {"limit": limit} if account is None else {"limit": limit, "account": account}
        data = await self._get_json("/v1/charges", params)
        return [Charge.model_validate(item) for item in data["data"]]

    async def stats(self) -> dict[str, int]:
        """Return the server's totals (charges, keys, replays, conflicts, mismatches)."""
        data: dict[str, int] = await self._get_json("/v1/stats")
        return data

    async def config(self) -> dict[str, Any]:
        """Return the server's promises (``key_retention_seconds``...).

        :class:`RequestRejected` when the API says it has no such page (404, 405, 410, 501:
        a version too old to say); :class:`RetryableError` for every other answer that is
        not its JSON (no answer, 5xx, 408, 429, 401/403, a gateway's page, a body cut short):
        the promise is unknown for now, not refused."""
        status, body = await self._get("/v1/config")
        if status in NO_SUCH_PAGE:
            raise _rejection(status, body)
        if status == 200:
            try:
                data: dict[str, Any] = json.loads(body)
                return data
            except ValueError:
                pass
        raise RetryableError(f"payment API answered {status} to GET /v1/config: "
                             f"{body[:200].decode(errors='replace')!r}")

    async def set_faults(
        self, *, delay_ms: int | None = None, drop_after_commit: bool | int | None = None,
        fail_accounts: list[str] | None = None,
    ) -> dict[str, Any]:
        """Change the server's injected faults; return all of them."""
        update = {
            name: value
            for name, value in (("delay_ms", delay_ms), ("drop_after_commit", drop_after_commit),
                                ("fail_accounts", fail_accounts))
            if value is not None
        }
        async with self._http().post("/v1/_faults", json=update) as response:
            status, body = response.status, await response.read()
        if status != 200:
            raise _rejection(status, body)
        result: dict[str, Any] = json.loads(body)
        return result

    async def _post_charge(self, payload: dict[str, Any], headers: dict[str, str]) -> tuple[Charge, bool]:
        """Send one charge request; classify every failure as retryable or not."""
        try:
            async with self._http().post("/v1/charges", json=payload, headers=headers) as response:
                status, body = response.status, await response.read()
                replayed = response.headers.get(REPLAYED_HEADER) == "true"
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _no_answer(exc) from None
        if status == 201:
            try:
                return Charge.model_validate_json(body), replayed
            except ValidationError:
                # Not the API's answer (a gateway's page, a body cut short): the request is not
                # at fault, and with its idempotency key a retry is answered as a replay.
                raise RetryableError(f"payment API answered 201 without a charge: "
                                     f"{body[:200].decode(errors='replace')!r}") from None
        if status in REQUEST_REFUSED:
            raise _rejection(status, body)
        raise RetryableError(f"payment API answered {status}: {body.decode(errors='replace')}")

    async def _get_json(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        status, body = await self._get(path, params)
        if status != 200:
            raise _rejection(status, body)
        return json.loads(body)

    async def _get(self, path: str, params: dict[str, str | int] | None = None) -> tuple[int, bytes]:
        """GET ``path``: its status and body; RetryableError when no answer came."""
        try:
            async with self._http().get(path, params=params) as response:
                return response.status, await response.read()
        except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _no_answer(exc) from None

    def _http(self) -> aiohttp.ClientSession:
        """Return the session, created on first use so that it binds to the running loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(base_url=self._base_url, timeout=self._timeout)
        return self._session


#: What the API answers about the request itself: invalid (400), too large (413), an
#: Idempotency-Key reused with other parameters (422). Not retried: the request would be
#: refused again. Any other answer that is not a charge says the API cannot take charges
#: from this client now, whatever the request: a 5xx, 409 (the key is being processed),
#: 408 or 429, and 401, 403, 404, 405 (credentials taken away, a wrong URL or a proxy in
#: the way). Those are retried: refusing every payment for them would dead-letter a whole
#: stream for one broken dependency.
REQUEST_REFUSED = frozenset({400, 413, 422})
#: Answers to a GET saying the API has no such page: a version without it, not an outage.
NO_SUCH_PAGE = frozenset({404, 405, 410, 501})


def _no_answer(exc: BaseException) -> RetryableError:
    """The request may or may not have reached the API: retried (with its key, if any)."""
    return RetryableError(f"no response from the payment API: {mask_url(repr(exc))}")


def _rejection(status: int, body: bytes) -> RequestRejected:
    """Build the exception for an error response, using its JSON error when it has one."""
    try:
        error = json.loads(body)["error"]
        return RequestRejected(status, str(error["type"]), str(error["message"]))
    except (ValueError, TypeError, KeyError):
        return RequestRejected(status, "http_error", body.decode(errors="replace"))
