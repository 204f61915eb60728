"""The sink's database modes on SQLite (PostgreSQL runs the same SQL in the lab)."""

import asyncio
import sqlite3

from streams_app.ledger import Ledger

PAYMENT = dict(account="acct-1", amount=100, currency="EUR", created_at="2026-01-01T00:00:00+00:00")


def run(coro):
    return asyncio.run(coro)


def test_naive_charges_every_delivery_and_idempotent_only_the_first(tmp_path):
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        naive = [await ledger.charge(event_id="e1", idempotent=False, **PAYMENT) for _ in range(2)]
        keyed = [await ledger.charge(event_id="e2", idempotent=True, **PAYMENT) for _ in range(3)]
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
        at = dict(topic="t.applied", partition=0, **PAYMENT)
        results = [
            await ledger.charge_at_offset(offset=5, event_id="e5", **at),   # first time: charged
            await ledger.charge_at_offset(offset=5, event_id="e5", **at),   # redelivered: refused
            await ledger.charge_at_offset(offset=3, event_id="e3", **at),   # late, never charged
            await ledger.charge_at_offset(offset=3, event_id="e3", **at),   # redelivered: refused
            await ledger.charge_at_offset(offset=6, event_id="e6", **at),
            await ledger.charge_at_offset(offset=5, event_id="e5", topic="t.applied", partition=1,
                                          **PAYMENT),                       # other partition
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
        at = dict(topic="t.applied", partition=0, offset=0, event_id="e0", **PAYMENT)
        results = [await ledger.charge_at_offset(**at), await ledger.charge_at_offset(**at)]
        stats = await ledger.stats()
        await ledger.close()
        return results, stats

    results, stats = run(scenario())
    assert results == [True, False]
    assert stats.charges == 2
