"""The idempotency protocol of :mod:`payment_api.store`, driven with explicit clocks.

Every scenario runs on SQLite; the PostgreSQL variants need the local server
and are marked ``integration``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from payment_api.__main__ import build_parser, drop_after_commit
from payment_api.models import Charge, ChargeRequest
from payment_api.server import Faults, Settings, prune_expired_keys
from payment_api.store import (
    Acquired,
    InProgress,
    KeyClaim,
    Mismatch,
    PostgresStore,
    Replay,
    SqliteStore,
    Stats,
    Store,
    store_from_url,
)

LOCK_TIMEOUT = 30.0
REQUEST = ChargeRequest(amount=1999, currency="EUR", account="acct-1")
OTHER_REQUEST = ChargeRequest(amount=2000, currency="EUR", account="acct-1")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'payments.db'}"
    url: str = request.getfixturevalue("fresh_db")
    return url


def run_with_store(db_url: str, scenario: Callable[[Store], Awaitable[None]]) -> None:
    async def main() -> None:
        store = store_from_url(db_url)
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


async def claim(store: Store, key: str = "evt-1", request: ChargeRequest = REQUEST, now: float = 1000.0) -> KeyClaim:
    return await store.claim_key(key, request.fingerprint(), now, LOCK_TIMEOUT)


async def complete(store: Store, token: str, now: float = 1000.0, key: str = "evt-1") -> tuple[bool, Charge]:
    charge = Charge.create(REQUEST, now)
    return await store.complete_key(key, token, charge, 201, charge.model_dump_json()), charge


def test_first_claim_locks_then_duplicates_conflict_mismatch_and_replay(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        acquired = await claim(store)
        assert isinstance(acquired, Acquired)
        assert isinstance(await claim(store), InProgress)
        assert isinstance(await claim(store, request=OTHER_REQUEST), Mismatch)
        completed, charge = await complete(store, acquired.token)
        assert completed
        assert await claim(store) == Replay(201, charge.model_dump_json())
        assert isinstance(await claim(store, request=OTHER_REQUEST), Mismatch)
        assert await store.stats() == Stats(
            charges=1, idempotency_keys=1, distinct_references=0, total_amount=REQUEST.amount,
            replays=1, conflicts=1, mismatches=2,
        )
        assert await store.get_charge(charge.id) == charge

    run_with_store(db_url, scenario)


def test_an_expired_lock_is_taken_over_and_the_old_holder_cannot_complete(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        crashed = await claim(store, now=1000.0)
        assert isinstance(crashed, Acquired)
        assert isinstance(await claim(store, now=1000.0 + LOCK_TIMEOUT - 1), InProgress)
        retry = await claim(store, now=1000.0 + LOCK_TIMEOUT)
        assert isinstance(retry, Acquired)
        assert retry.token != crashed.token
        assert (await complete(store, crashed.token))[0] is False
        assert (await complete(store, retry.token))[0] is True
        assert (await store.stats()).charges == 1

    run_with_store(db_url, scenario)


def test_release_frees_a_locked_key_but_never_a_completed_one(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        first = await claim(store)
        assert isinstance(first, Acquired)
        await store.release_key("evt-1", first.token)
        second = await claim(store)
        assert isinstance(second, Acquired)
        completed, charge = await complete(store, second.token)
        assert completed
        await store.release_key("evt-1", second.token)
        assert await claim(store) == Replay(201, charge.model_dump_json())

    run_with_store(db_url, scenario)


def test_prune_deletes_keys_created_before_the_cutoff_only(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        for key, now in (("old", 100.0), ("edge", 150.0), ("new", 200.0)):
            acquired = await claim(store, key=key, now=now)
            assert isinstance(acquired, Acquired)
            assert (await complete(store, acquired.token, now=now, key=key))[0]
        assert await store.prune_keys(created_before=150.0) == 1
        assert isinstance(await claim(store, key="old", now=300.0), Acquired)
        assert isinstance(await claim(store, key="edge", now=300.0), Replay)
        assert (await store.stats()).charges == 3

    run_with_store(db_url, scenario)


def test_charges_without_keys_are_listed_oldest_first_per_account(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        charges = [
            Charge.create(ChargeRequest(amount=1, currency="EUR", account=account), now)
            for account, now in (("a", 3.0), ("b", 2.0), ("a", 1.0))
        ]
        for charge in charges:
            await store.insert_charge(charge)
        assert await store.list_charges("a", limit=10) == [charges[2], charges[0]]
        assert await store.list_charges(None, limit=2) == [charges[2], charges[1]]
        assert await store.get_charge("ch_missing") is None

    run_with_store(db_url, scenario)


def test_fingerprint_ignores_formatting_but_not_values() -> None:
    reordered = ChargeRequest.model_validate_json(b'{"account":"acct-1", "amount":1999,"currency":"EUR"}')
    assert reordered.fingerprint() == REQUEST.fingerprint()
    assert OTHER_REQUEST.fingerprint() != REQUEST.fingerprint()


def test_store_url_selects_the_backend() -> None:
    assert isinstance(store_from_url("sqlite:///x.db"), SqliteStore)
    assert isinstance(store_from_url("postgresql://u:p@127.0.0.1:5433/db"), PostgresStore)
    with pytest.raises(ValueError, match="unsupported"):
        store_from_url("mysql://x")


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(False, [False, False]), (True, [True, True]), (0, [False, False]), (1, [True, False]), (2, [True, True])],
)
def test_drop_fault_fires_always_never_or_a_number_of_times(setting: bool | int, expected: list[bool]) -> None:
    faults = Faults(drop_after_commit=setting)
    assert [faults.consume_drop(), faults.consume_drop()] == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("always", True), ("TRUE", True), ("never", False), ("false", False), ("3", 3)]
)
def test_drop_after_commit_option(text: str, expected: bool | int) -> None:
    assert drop_after_commit(text) == expected


DAY = 86400.0


def test_keys_are_kept_for_the_configured_retention(db_url: str) -> None:
    """The pruner deletes a key only once it is older than ``key_retention_s`` (7 d by
    default, the pipeline's DEDUP_HORIZON): a day-old key is still honoured."""

    async def scenario(store: Store) -> None:
        acquired = await claim(store, key="evt-1", now=0.0)
        assert isinstance(acquired, Acquired)
        assert (await complete(store, acquired.token, now=0.0, key="evt-1"))[0]
        retention = Settings(db_url=db_url).key_retention_s
        assert retention == 7 * DAY
        assert await prune_expired_keys(store, retention, now=1.5 * DAY) == 0
        assert await prune_expired_keys(store, retention, now=7 * DAY) == 0
        assert isinstance(await claim(store, key="evt-1", now=7 * DAY), Replay)
        assert await prune_expired_keys(store, retention, now=7 * DAY + 1) == 1
        assert isinstance(await claim(store, key="evt-1", now=7 * DAY + 1), Acquired)

    run_with_store(db_url, scenario)


def test_a_shorter_configured_retention_prunes_sooner(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        acquired = await claim(store, key="evt-1", now=0.0)
        assert isinstance(acquired, Acquired)
        assert (await complete(store, acquired.token, now=0.0, key="evt-1"))[0]
        retention = Settings(db_url=db_url, key_retention_s=DAY).key_retention_s
        assert await prune_expired_keys(store, retention, now=1.5 * DAY) == 1

    run_with_store(db_url, scenario)


@pytest.mark.parametrize(("text", "seconds"), [("7d", 7 * DAY), ("36h", 1.5 * DAY), ("3600", 3600.0)])
def test_key_retention_option_takes_durations(text: str, seconds: float) -> None:
    assert build_parser().parse_args(["serve", "--key-retention", text]).key_retention == seconds


def test_key_retention_defaults_to_the_environment_then_7_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDEMPOTENCY_KEY_RETENTION", raising=False)
    assert build_parser().parse_args(["serve"]).key_retention == 7 * DAY
    monkeypatch.setenv("IDEMPOTENCY_KEY_RETENTION", "30d")
    assert build_parser().parse_args(["serve"]).key_retention == 30 * DAY


@pytest.mark.parametrize("text", ["a week", "0", "-1d"])
def test_a_bad_key_retention_is_refused_with_the_syntax(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--key-retention", text])
    assert "--key-retention" in capsys.readouterr().err
