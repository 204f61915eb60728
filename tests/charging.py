"""One charge through the ledger, as the sink makes it: a one-row ``charge_many``."""

from __future__ import annotations

from streams_app.ledger import Charge, Ledger

#: A payment's fields other than its event id and source record.
PAYMENT = dict(account="acct-1", amount=100, currency="EUR", created_at="2026-01-01T00:00:00+00:00")


async def charge(ledger: Ledger, mode: str = "idempotent", **fields: object) -> bool:
    """Charge one payment (PAYMENT, updated by ``fields``); False when the database says it
    was charged before."""
    return (await ledger.charge_many([Charge(**{**PAYMENT, **fields})], mode=mode))[0]  # type: ignore[arg-type]
