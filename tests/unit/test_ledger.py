"""The sink's database modes on SQLite (PostgreSQL runs the same SQL in the lab)."""

import asyncio
import sqlite3

import pytest

from common.redact import mask_url
from streams_app import ledger as ledger_module
from streams_app.exceptions import ChargeRefused, SinkError
from streams_app.ledger import Charge, Ledger
from streams_app.retrying import RetryPolicy
from tests.charging import PAYMENT, charge


def run(coro):
    return asyncio.run(coro)


def test_naive_charges_every_delivery_and_idempotent_only_the_first(tmp_path):
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        naive = [await charge(ledger, "naive", event_id="e1") for _ in range(2)]
        keyed = [await charge(ledger, event_id="e2") for _ in range(3)]
        stats = await ledger.stats()
        await ledger.close()
        return naive, keyed, stats

    naive, keyed, stats = run(scenario())
    assert naive == [True, True]
    assert keyed == [True, False, False]
    assert (stats.charges, stats.charged_events, stats.duplicate_charges) == (3, 2, 1)


def test_transactional_mode_refuses_a_record_charged_before_in_any_order(tmp_path):
    """A record is refused only if that very record was charged: one that comes after
    a later offset (Faust delivers a record it dropped after the ones behind it) is
    still charged. A per-partition high-water position refused offset 3 here, and the
    lab lost 3 events that way (exactly_once / transactional / crash-after-effect)."""
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        at = dict(topic="t.applied", partition=0)
        results = [
            await charge(ledger, "transactional", offset=5, event_id="e5", **at),   # first time: charged
            await charge(ledger, "transactional", offset=5, event_id="e5", **at),   # redelivered: refused
            await charge(ledger, "transactional", offset=3, event_id="e3", **at),   # late, never charged
            await charge(ledger, "transactional", offset=3, event_id="e3", **at),   # redelivered: refused
            await charge(ledger, "transactional", offset=6, event_id="e6", **at),
            await charge(ledger, "transactional", offset=5, event_id="e5", topic="t.applied",
                         partition=1),                                       # other partition
        ]
        stats = await ledger.stats()
        await ledger.close()
        return results, stats

    results, stats = run(scenario())
    assert results == [True, False, True, False, True, True]
    assert stats.charges == 4


def test_a_database_from_before_the_source_columns_is_upgraded(tmp_path):
    """payments-sink.db files written by earlier versions have no source columns."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
            idempotency_key TEXT UNIQUE, account TEXT NOT NULL, amount BIGINT NOT NULL,
            currency TEXT NOT NULL, created_at TEXT NOT NULL,
            charged_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
        INSERT INTO charges (event_id, account, amount, currency, created_at)
            VALUES ('old', 'acct-1', 1, 'EUR', '2026-01-01');
    """)
    conn.commit()
    conn.close()

    async def scenario():
        ledger = Ledger(f"sqlite:///{path}")
        at = dict(topic="t.applied", partition=0, offset=0, event_id="e0")
        results = [await charge(ledger, "transactional", **at), await charge(ledger, "transactional", **at)]
        stats = await ledger.stats()
        await ledger.close()
        return results, stats

    results, stats = run(scenario())
    assert results == [True, False]
    assert stats.charges == 2


def test_a_locked_database_is_waited_out_and_reported(tmp_path, monkeypatch):
    """Another writer holds the lock: the charge waits (retries), the ledger says it
    is in an outage meanwhile, and the charge is made once the lock is released."""
    monkeypatch.setattr(ledger_module, "SQLITE_BUSY_TIMEOUT_S", 0.01)
    path = tmp_path / "c.db"
    seen: list[tuple[bool, int]] = []

    async def scenario():
        ledger = None
        locker = sqlite3.connect(path, isolation_level=None)

        async def sleep(seconds: float) -> None:
            seen.append((ledger.outage, ledger.retries))
            if len(seen) == 3:
                locker.execute("COMMIT")  # the other writer is done
            await asyncio.sleep(0)

        ledger = Ledger(f"sqlite:///{path}", retry=RetryPolicy(sleep=sleep))
        first = await charge(ledger, event_id="e1")  # creates the schema
        locker.execute("BEGIN EXCLUSIVE")
        second = await charge(ledger, event_id="e2")
        state = (ledger.outage, ledger.retries, ledger.last_error)
        stats = await ledger.stats()
        await ledger.close()
        locker.close()
        return first, second, state, stats

    first, second, (outage, retries, last_error), stats = run(scenario())
    assert (first, second) == (True, True)
    assert seen == [(True, 1), (True, 2), (True, 3)]
    assert (outage, retries) == (False, 3)
    assert last_error == "OperationalError: database is locked"
    assert (stats.charges, stats.duplicate_charges) == (2, 0)


def test_a_refused_charge_is_raised_at_once_and_the_next_one_works(tmp_path):
    """A constraint violation is not an outage: no retry, ChargeRefused, and the failed
    statement is rolled back so the next charge on the same connection goes in."""
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        with pytest.raises(ChargeRefused, match="NOT NULL constraint failed") as refused:
            await charge(ledger, event_id=None)
        state = (ledger.outage, ledger.retries)
        after = await charge(ledger, event_id="e1")
        stats = await ledger.stats()
        await ledger.close()
        return refused.value, state, after, stats

    refused, state, after, stats = run(scenario())
    assert isinstance(refused.__cause__, sqlite3.IntegrityError)
    assert state == (False, 0)
    assert after is True
    assert (stats.charges, stats.charged_events) == (1, 1)


def test_a_bounded_policy_gives_up_with_sink_error_and_keeps_reporting_the_outage(tmp_path, monkeypatch):
    """What stats() does for the dashboard (charges use the unbounded default)."""
    monkeypatch.setattr(ledger_module, "SQLITE_BUSY_TIMEOUT_S", 0.01)
    path = tmp_path / "c.db"

    async def scenario():
        ledger = Ledger(f"sqlite:///{path}", retry=RetryPolicy(first_wait=0.01, max_wait=0.01, give_up_after=0.05))
        await charge(ledger, event_id="e1")
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(SinkError, match="still unavailable after 0.05 s: OperationalError: database is locked"):
                await charge(ledger, event_id="e2")
            return ledger.outage, ledger.retries > 0
        finally:
            locker.close()
            await ledger.close()

    assert run(scenario()) == (True, True)


def test_the_password_is_masked_wherever_the_ledger_shows_the_database():
    url = "postgresql://payments:s3cr%2Ft@db.example:5432/payments"
    ledger = Ledger(url)  # connects to nothing until the first call
    assert ledger.target == "postgresql://payments:***@db.example:5432/payments"
    assert mask_url(f"cannot reach {url}", url) == "cannot reach postgresql://payments:***@db.example:5432/payments"
    assert mask_url("host=db password=s3cr/t user=x", "host=db password=s3cr/t") == "host=db password=*** user=x"
    assert mask_url("sqlite:///c.db", "sqlite:///c.db") == "sqlite:///c.db"


def _charges(*ids, partition=0, first_offset=0):
    return [Charge(event_id=i, topic="t.applied", partition=partition, offset=first_offset + n, **PAYMENT)
            for n, i in enumerate(ids)]


def test_a_batch_is_charged_in_one_transaction_with_each_mode_s_answer(tmp_path):
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        naive = [await ledger.charge_many(_charges("n1", "n2"), mode="naive") for _ in range(2)]
        keyed = await ledger.charge_many(_charges("k1", "k1", "k2"), mode="idempotent")
        keyed_again = await ledger.charge_many(_charges("k2", "k3"), mode="idempotent")
        stored = await ledger.charge_many(_charges("s1", "s2", first_offset=10), mode="transactional")
        stored_again = await ledger.charge_many(_charges("s2", "s3", first_offset=11), mode="transactional")
        stats = await ledger.stats()
        await ledger.close()
        return naive, keyed, keyed_again, stored, stored_again, stats

    naive, keyed, keyed_again, stored, stored_again, stats = run(scenario())
    assert naive == [[True, True], [True, True]]
    assert keyed == [True, False, True] and keyed_again == [False, True]
    assert stored == [True, True] and stored_again == [False, True]  # offset 11 again, then 12
    assert (stats.charges, stats.charged_events) == (4 + 3 + 3, 2 + 3 + 3)


def test_a_refused_row_leaves_the_whole_batch_uncharged(tmp_path):
    """All or nothing: the sink then charges the batch one by one (agents/sink.py)."""
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        batch = _charges("e1", None, "e3")  # event_id NOT NULL: the database refuses row 2
        with pytest.raises(ChargeRefused, match="NOT NULL constraint failed"):
            await ledger.charge_many(batch, mode="idempotent")
        stats = await ledger.stats()
        after = await ledger.charge_many(_charges("e1", "e3"), mode="idempotent")
        await ledger.close()
        return stats, after

    stats, after = run(scenario())
    assert stats.charges == 0
    assert after == [True, True]
