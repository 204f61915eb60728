"""The payment API must remember an idempotency key as long as the pipeline may send it again.

The sink's ``Idempotency-Key`` is the event id. Dedup remembers event ids for
``DEDUP_HORIZON`` (7 days by default), and within that window an event can
reach the sink again: a reset or re-read of ``{prefix}.applied``, a restore, a
consumer group that starts over. The API answers such a retry with the first
charge only while it still has the key; once it has pruned the key (it used
to do so after 24 h) the retry is a second charge. So a worker with
``SINK_TARGET=api`` and ``SINK_MODE=idempotent`` refuses to start when the
API keeps keys for less than ``DEDUP_HORIZON``, with a message that says
which of the two to change. (``SINK_MODE=naive`` sends no key: nothing to
check.)

Why the worker asks the API (``GET /v1/config``, ``key_retention_seconds``)
rather than both reading one shared setting: the payment API is a separate
system, deployed and configured on its own (docker-compose runs it as its
own service; in production it is a provider such as Stripe, whose key
retention is its promise, not our configuration). A shared setting would only
say what we *believe* the API does and drift silently the day one side is
redeployed; asking checks what the running API actually does. The shared
default (7 days on both sides) and the demo, which starts the API with
``--key-retention`` = ``DEDUP_HORIZON``, keep a fresh setup consistent.

When the check runs (:class:`KeyRetentionGuard`):

* at the worker's start, before any table or agent (``PaymentsApp.start_checks``):
  a too-short retention, or an API that does not say (no ``/v1/config``, or none
  with ``key_retention_seconds``), stops the start (SettingsError); an API that
  does not answer yet (no answer, 5xx, 401/403, 408, 429, a
  gateway's page) is logged as a warning and the start goes on;
* before a charge, when the last successful check is missing or older than
  ``recheck_interval`` (the API may have started late, or been restarted with
  other settings): an API that does not answer, or no longer says, is a
  retryable error (the sink retries the charge later, as for any outage; no
  charge is made unchecked), and a too-short retention stops the worker
  instead of charging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from common.durations import format_duration
from payment_api.errors import RequestRejected, RetryableError

from .exceptions import SettingsError

log = logging.getLogger(__name__)

#: Seconds a successful check is trusted before the next charge checks again.
RECHECK_INTERVAL = 300.0


class ConfigSource(Protocol):
    """What the guard needs of :class:`payment_api.client.PaymentClient`."""

    async def config(self) -> dict[str, Any]: ...


def retention_problem(retention_s: float, dedup_horizon_s: float, api_url: str) -> str | None:
    """The refusal message when the API keeps keys for less than DEDUP_HORIZON, else None."""
    if retention_s >= dedup_horizon_s:
        return None
    retention, horizon = format_duration(retention_s), format_duration(dedup_horizon_s)
    return (
        f"the payment API at PAYMENT_API_URL={api_url} keeps idempotency keys for {retention}, less than "
        f"DEDUP_HORIZON={horizon}: an event delivered again after {retention} would be charged twice. "
        f"Start the API with --key-retention {horizon} (or IDEMPOTENCY_KEY_RETENTION={horizon}), "
        f"or set DEDUP_HORIZON to at most {retention}"
    )


class KeyRetentionGuard:
    """Checks the API's key retention at start and before charges; see the module docstring."""

    def __init__(
        self,
        api: ConfigSource,
        *,
        dedup_horizon: float,
        api_url: str,
        on_refusal: Callable[[SettingsError], Awaitable[None]],
        recheck_interval: float = RECHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._horizon = dedup_horizon
        self._api_url = api_url  # as it may be printed: masked by the caller
        self._on_refusal = on_refusal
        self._recheck_interval = recheck_interval
        self._clock = clock
        self._verified_at: float | None = None

    @property
    def verified(self) -> bool:
        """Whether a check passed within the last ``recheck_interval`` seconds."""
        return self._verified_at is not None and self._clock() - self._verified_at < self._recheck_interval

    async def at_start(self) -> None:
        """The worker's start check: SettingsError refuses the start; no answer is a warning."""
        try:
            await self.verify()
        except RetryableError as exc:
            log.warning(
                "cannot check the payment API's idempotency key retention at start (%s); "
                "checking again before the first charge", exc,
            )

    async def before_charge(self) -> None:
        """Check again when due. RetryableError: the API does not answer, or no longer says
        how long it keeps keys (retry the charge later: charges wait, never made unchecked).
        A too-short retention is handed to ``on_refusal`` (which stops the worker) and then
        raised."""
        if self.verified:
            return
        try:
            await self.verify()
        except _Unsaid as exc:
            # The start check passed, so this API said it before: a gateway's route, a
            # deploy in progress. Wait, as for an outage, rather than stop the worker.
            raise RetryableError(f"{exc.problems[0]}; the charges wait until it says") from None
        except SettingsError as exc:
            await self._on_refusal(exc)
            raise

    async def verify(self) -> None:
        """Ask the API; SettingsError if its keys do not outlive DEDUP_HORIZON or it does
        not say how long it keeps them."""
        try:
            config = await self._api.config()
        except RequestRejected as exc:
            raise _Unsaid(self._api_url, f"GET /v1/config: {exc}") from None
        try:
            retention = float(config["key_retention_seconds"])
        except (KeyError, TypeError, ValueError):
            raise _Unsaid(self._api_url, f"GET /v1/config answered {str(config)[:200]!r}") from None
        problem = retention_problem(retention, self._horizon, self._api_url)
        if problem:
            raise SettingsError([problem])
        if self._verified_at is None:
            log.info("payment API keeps idempotency keys %s >= DEDUP_HORIZON %s",
                     format_duration(retention), format_duration(self._horizon))
        self._verified_at = self._clock()


class _Unsaid(SettingsError):
    """The API does not say how long it keeps idempotency keys."""

    def __init__(self, api_url: str, what: str) -> None:
        super().__init__([f"the payment API at PAYMENT_API_URL={api_url} does not say how long it keeps "
                          f"idempotency keys ({what}); run a version that serves /v1/config"])
