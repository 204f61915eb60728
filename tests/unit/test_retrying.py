"""The outage retry policy, on a fake clock: bounded backoff with jitter, and
no retry at all for an error that is not an outage."""

import asyncio
import sqlite3

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolClosed

from streams_app.ledger import is_transient
from streams_app.retrying import RetryPolicy


class FakeClock:
    """Records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def call_failing(policy: RetryPolicy, errors_first: list[BaseException]) -> tuple[str, int]:
    """Run an operation that raises ``errors_first`` in turn, then returns "done"."""
    calls = 0
    async for attempt in policy.retrying(retry_on=is_transient):
        with attempt:
            calls += 1
            if calls <= len(errors_first):
                raise errors_first[calls - 1]
            result = "done"
    return result, calls


def test_waits_grow_exponentially_with_jitter_and_never_exceed_the_cap():
    clock = FakeClock()
    policy = RetryPolicy(first_wait=0.1, max_wait=5.0, sleep=clock.sleep)
    outage = [psycopg.OperationalError("connection refused")] * 40

    result, calls = asyncio.run(call_failing(policy, outage))

    assert (result, calls) == ("done", 41)  # never gave up: the default lasts as long as the outage
    assert len(clock.waits) == 40
    for n, wait in enumerate(clock.waits, start=1):
        assert 0 <= wait <= min(5.0, 0.1 * 2 ** (n - 1)) + 1e-9, (n, wait)
    capped = clock.waits[10:]  # 0.1 * 2**10 > 5: every later wait is drawn from [0, 5]
    assert len(set(capped)) > 1, "jitter: capped waits are not all the same"
    assert max(capped) > 2.5 and min(capped) < 2.5  # spread over the range (30 draws)


@pytest.mark.parametrize("refusal", [
    errors.UniqueViolation("duplicate key value violates unique constraint"),
    errors.NotNullViolation("null value in column \"event_id\""),
    errors.NumericValueOutOfRange("bigint out of range"),
    sqlite3.IntegrityError("NOT NULL constraint failed: charges.event_id"),
    PoolClosed("the pool 'ledger' is already closed"),
])
def test_a_refusal_is_raised_at_once_without_a_retry(refusal):
    clock = FakeClock()
    policy = RetryPolicy(sleep=clock.sleep)

    with pytest.raises(type(refusal)):
        asyncio.run(call_failing(policy, [refusal]))
    assert clock.waits == []


@pytest.mark.parametrize("outage", [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    errors.AdminShutdown("terminating connection due to administrator command"),
    errors.CannotConnectNow("the database system is starting up"),
    sqlite3.OperationalError("database is locked"),
])
def test_an_outage_is_retried(outage):
    clock = FakeClock()
    result, calls = asyncio.run(call_failing(RetryPolicy(sleep=clock.sleep), [outage, outage]))
    assert (result, calls, len(clock.waits)) == ("done", 3, 2)


def test_a_bounded_policy_gives_up_with_the_last_error():
    policy = RetryPolicy(first_wait=0.001, max_wait=0.001, give_up_after=0.0)
    with pytest.raises(psycopg.OperationalError, match="still down"):
        asyncio.run(call_failing(policy, [psycopg.OperationalError("still down")] * 5))


def test_a_policy_that_could_not_wait_says_what_to_change():
    with pytest.raises(ValueError, match="first_wait <= max_wait"):
        RetryPolicy(first_wait=10.0, max_wait=5.0)
