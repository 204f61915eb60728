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
    # Not the record's fault either: the dependency is broken until an operator acts. These
    # were refusals: every record of the stream was dead-lettered one by one meanwhile.
    errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),  # a failover to a standby
    errors.IdleInTransactionSessionTimeout("terminating connection due to idle-in-transaction timeout"),
    errors.InsufficientPrivilege("permission denied for table charges"),
    errors.UndefinedTable('relation "charges" does not exist'),
    sqlite3.DatabaseError("file is not a database"),
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


def test_run_tries_once_without_tenacity_and_retries_only_what_is_worth_it(monkeypatch):
    """RetryPolicy.run: the same outcomes as the tenacity loop, with the first try outside it."""
    import asyncio

    from streams_app.retrying import RetryPolicy

    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(first_wait=0.1, max_wait=1.0, sleep=no_sleep)
    monkeypatch.setattr(RetryPolicy, "retrying", lambda *a, **k: (_ for _ in ()).throw(AssertionError("tenacity")))

    async def ok() -> str:
        return "done"

    assert asyncio.run(policy.run(ok, retry_on=lambda exc: True)) == "done"
    monkeypatch.undo()

    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    slept: list[int] = []
    assert asyncio.run(policy.run(flaky, retry_on=lambda exc: isinstance(exc, ConnectionError),
                                  before_sleep=lambda state: slept.append(state.attempt_number))) == "up"
    assert len(calls) == 3 and slept == [1, 1] and len(waits) == 2  # tenacity numbers its own tries

    async def refused() -> str:
        raise ValueError("no")

    try:
        asyncio.run(policy.run(refused, retry_on=lambda exc: isinstance(exc, ConnectionError)))
    except ValueError:
        pass
    else:
        raise AssertionError("a refusal must be raised at once")

    bounded = RetryPolicy(first_wait=0.1, max_wait=1.0, give_up_after=0.0, sleep=no_sleep)

    async def down() -> str:
        raise ConnectionError("down")

    try:
        asyncio.run(bounded.run(down, retry_on=lambda exc: True))
    except ConnectionError:
        pass
    else:
        raise AssertionError("a bounded policy gives up")
