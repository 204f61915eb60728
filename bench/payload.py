"""The per-record work of the dedup pipeline, shared by the raw loop and Quix Streams.

Both competitors must do what the Faust pipeline's ingest and dedup stages do
for every record, or the comparison measures less work, not a faster system:

1. validate the untrusted bytes (the rules of ``streams_app.models.parse_payment``);
2. look the event id up in the dedup state, honouring ``DEDUP_HORIZON``;
3. forward the first occurrence, keyed by account, as compact JSON.

The rules are restated here rather than imported: importing anything from
``streams_app`` builds the Faust app (``streams_app/__init__.py``), which would
put Faust's import cost and objects into the processes measured against it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CURRENCY = re.compile(r"[A-Z]{3}")
MAX_RECORD_BYTES = 16 * 1024  # MAX_RECORD_BYTES's default
MAX_AMOUNT = 100_000_000_00  # MAX_AMOUNT's default
DEFAULT_HORIZON_S = 7 * 86400.0  # DEDUP_HORIZON's default

Payment = dict[str, Any]


def parse(raw: bytes | None) -> Payment | None:
    """The validated payment in ``raw``, or None where ingest would dead-letter it."""
    if not raw or len(raw) > MAX_RECORD_BYTES:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    event_id, account = data.get("event_id"), data.get("account")
    amount, currency, created_at = data.get("amount"), data.get("currency"), data.get("created_at")
    if not (
        isinstance(event_id, str) and EVENT_ID.fullmatch(event_id)
        and isinstance(account, str) and ACCOUNT.fullmatch(account)
        and isinstance(currency, str) and CURRENCY.fullmatch(currency)
        and type(amount) is int and 0 < amount <= MAX_AMOUNT
        and isinstance(created_at, str) and _aware(created_at)
    ):
        return None
    return {
        "event_id": event_id, "account": account, "amount": amount,
        "currency": currency, "created_at": created_at,
    }


def _aware(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def seen_within(first_seen: float | None, now: float, horizon_s: float) -> bool:
    """The dedup rule of ``tables.seen_events.is_duplicate``."""
    return first_seen is not None and now - first_seen <= horizon_s


def encode(payment: Payment) -> bytes:
    return json.dumps(payment, separators=(",", ":")).encode()
