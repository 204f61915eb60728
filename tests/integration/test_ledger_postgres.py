"""The sink's database modes on a real PostgreSQL (started by infra/postgres.py)."""

import asyncio

import pytest

from streams_app.ledger import Ledger

pytestmark = pytest.mark.integration

PAYMENT = dict(account="acct-1", amount=100, currency="EUR", created_at="2026-01-01T00:00:00+00:00")


def test_every_sink_mode_on_postgresql(fresh_db):
    async def scenario():
        ledger = Ledger(fresh_db)
        naive = [await ledger.charge(event_id="e1", idempotent=False, **PAYMENT) for _ in range(2)]
        keyed = [await ledger.charge(event_id="e2", idempotent=True, **PAYMENT) for _ in range(2)]
        at = dict(topic="t.applied", partition=0, event_id="e3", **PAYMENT)
        stored = [await ledger.charge_at_offset(offset=7, **at), await ledger.charge_at_offset(offset=7, **at),
                  await ledger.charge_at_offset(offset=3, **at)]  # an earlier record, not charged yet
        stats = await ledger.stats()
        await ledger.close()
        return naive, keyed, stored, stats

    naive, keyed, stored, stats = asyncio.run(scenario())
    assert naive == [True, True]
    assert keyed == [True, False]
    assert stored == [True, False, True]
    assert (stats.charges, stats.charged_events, stats.duplicate_charges) == (5, 3, 2)
