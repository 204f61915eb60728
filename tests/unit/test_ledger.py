"""The sink's database modes on SQLite (PostgreSQL runs the same SQL in the lab)."""

import asyncio

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


def test_transactional_mode_skips_records_at_or_below_the_stored_offset(tmp_path):
    async def scenario():
        ledger = Ledger(f"sqlite:///{tmp_path / 'c.db'}")
        at = dict(topic="t.applied", partition=0, **PAYMENT)
        results = [
            await ledger.charge_at_offset(offset=5, event_id="e5", **at),   # first time: charged
            await ledger.charge_at_offset(offset=5, event_id="e5", **at),   # redelivered: skipped
            await ledger.charge_at_offset(offset=3, event_id="e3", **at),   # behind the position
            await ledger.charge_at_offset(offset=6, event_id="e6", **at),
            await ledger.charge_at_offset(offset=5, event_id="e5", topic="t.applied", partition=1,
                                          **PAYMENT),                       # other partition
        ]
        stats = await ledger.stats()
        await ledger.close()
        return results, stats

    results, stats = run(scenario())
    assert results == [True, False, False, True, True]
    assert stats.charges == 3
