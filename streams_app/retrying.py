"""How the project waits out an outage of something outside Kafka.

An outage of the sink's database or of the payment API must delay a charge,
never skip it and never dead-letter it: the event stays unacked until the
external system takes the charge. So the default policy never gives up.

The waits are exponential with *full jitter* (each wait is uniform between 0
and ``min(max_wait, first_wait * 2**(try - 1))``): workers that lost the same
database at the same moment do not all come back at the same instants, and a
database that is back is used again within ``max_wait`` seconds. A fixed
doubling without jitter (what agents/sink.py had) makes every worker knock in
step.

Which errors are worth a retry is the caller's call (``retry_on``): an outage
is, a refusal (a constraint violation, a 4xx) is not, because trying again
cannot change the answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)

#: Called before each wait with tenacity's state (attempt_number, outcome, next_action.sleep).
BeforeSleep = Callable[[RetryCallState], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter.

    ``give_up_after`` (seconds) of ``None`` retries for as long as the outage
    lasts: what a charge needs. ``sleep`` is injectable so tests need no clock.
    """

    first_wait: float = 0.1
    max_wait: float = 5.0
    give_up_after: float | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        if not 0 < self.first_wait <= self.max_wait:
            raise ValueError(
                f"RetryPolicy needs 0 < first_wait <= max_wait, got first_wait={self.first_wait} "
                f"and max_wait={self.max_wait}: raise max_wait or lower first_wait"
            )
        if self.give_up_after is not None and self.give_up_after < 0:
            raise ValueError(
                f"RetryPolicy.give_up_after must be None (never give up) or >= 0 seconds, "
                f"got {self.give_up_after}"
            )

    def retrying(
        self, *, retry_on: Callable[[BaseException], bool], before_sleep: BeforeSleep | None = None
    ) -> AsyncRetrying:
        """Return a tenacity controller: ``async for attempt in policy.retrying(...): with attempt: ...``.

        An exception for which ``retry_on`` is false, or the last one when the
        policy gives up, is raised as it is (``reraise``), never wrapped in
        tenacity's RetryError.
        """
        return AsyncRetrying(
            retry=retry_if_exception(retry_on),
            wait=wait_random_exponential(multiplier=self.first_wait, max=self.max_wait),
            stop=stop_never if self.give_up_after is None else stop_after_delay(self.give_up_after),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    async def run(
        self, call: Callable[[], Awaitable[T]], *, retry_on: Callable[[BaseException], bool],
        before_sleep: BeforeSleep | None = None,
    ) -> T:
        """``await call()`` under this policy, the first try without tenacity.

        The same outcome as ``async for attempt in self.retrying(...)``, but tenacity's
        per-attempt machinery (a controller, a state, callbacks) costs more than a local
        database insert: 15 % of a worker's time when the sink went through it for
        every charge (py-spy, reports/bench.md). Only a failure that is worth a retry
        enters it, with what is left of ``give_up_after``, and its first retry waits
        as any other.
        """
        started = time.monotonic()
        try:
            return await call()
        except BaseException as exc:
            if not retry_on(exc):
                raise
            first = exc
        wait = random.uniform(0, self.first_wait)  # tenacity's first wait: full jitter
        if self.give_up_after is not None and time.monotonic() - started + wait >= self.give_up_after:
            raise first
        if before_sleep is not None:
            before_sleep(_FirstFailure(first, wait))
        await self.sleep(wait)
        policy = self
        if self.give_up_after is not None:
            policy = replace(self, give_up_after=max(0.0, self.give_up_after - (time.monotonic() - started)))
        async for attempt in policy.retrying(retry_on=retry_on, before_sleep=before_sleep):
            with attempt:
                return await call()
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover


class _FirstFailure:
    """What ``before_sleep`` reads of tenacity's state, for the first (tenacity-free) try."""

    def __init__(self, error: BaseException, sleep: float) -> None:
        self.attempt_number = 1
        self.outcome = _Outcome(error)
        self.next_action = _Next(sleep)


class _Outcome:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    def exception(self) -> BaseException:
        return self._error


class _Next:
    def __init__(self, sleep: float) -> None:
        self.sleep = sleep
