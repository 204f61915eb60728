"""Sample traffic: valid payments, exact re-sends and malformed records, seeded.

:func:`generate` is pure, so a test, the ``produce`` command and the lab all
know in advance what the pipeline must end with: which event ids are unique,
every account's expected balance, and how many records must be dead-lettered.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

CURRENCY_OF = ("EUR", "USD", "GBP")

#: Each kind of malformed record -> the code ingest dead-letters it with (streams_app/models.py).
CODE_OF_KIND = {
    "not_json": "not_json", "not_object": "not_object", "missing_field": "missing_field",
    "wrong_type": "wrong_type", "negative_amount": "bad_amount", "absurd_amount": "bad_amount",
    "bad_currency": "bad_format", "oversize": "oversize", "empty": "empty",
    "repeated_field": "repeated_field",
}
#: Kinds of malformed record, each caught by a different validation rule.
BAD_KINDS = tuple(CODE_OF_KIND)


@dataclass
class Traffic:
    """What was generated and what the pipeline must make of it."""

    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    unique_events: dict[str, dict] = field(default_factory=dict)  # event_id -> payment
    duplicates: int = 0
    bad: Counter[str] = field(default_factory=Counter)

    @property
    def expected_balances(self) -> dict[str, dict[str, int]]:
        balances: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for payment in self.unique_events.values():
            balances[payment["account"]][payment["currency"]] += payment["amount"]
        return {account: dict(by_currency) for account, by_currency in balances.items()}

    def summary(self) -> dict[str, object]:
        return {
            "records": len(self.records),
            "unique_events": len(self.unique_events),
            "duplicates": self.duplicates,
            "bad": sum(self.bad.values()),
            "bad_by_kind": dict(sorted(self.bad.items())),
            "total_amount": sum(p["amount"] for p in self.unique_events.values()),
        }


def payment_bytes(payment: dict) -> bytes:
    return json.dumps(payment, separators=(",", ":")).encode()


def generate(
    count: int, *, duplicate_rate: float = 0.0, bad_rate: float = 0.0, seed: int = 1,
    accounts: int = 50, max_bytes: int = 16 * 1024, id_prefix: str = "evt",
    resend_window: int | None = None,
) -> Traffic:
    """``count`` records: each is malformed with probability ``bad_rate``, else an
    exact re-send of an earlier valid record with probability ``duplicate_rate``
    (what a producer retry does), else a new valid payment. ``resend_window``: a re-send
    repeats one of the last that many valid records (None: any earlier one), e.g. to keep
    re-sends inside a short dedup horizon."""
    if not (0 <= duplicate_rate < 1 and 0 <= bad_rate < 1 and duplicate_rate + bad_rate < 1):
        raise ValueError("rates must be in [0, 1) and add up to less than 1")
    rng = random.Random(seed)
    traffic = Traffic()
    sent_valid: list[tuple[bytes, bytes]] = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(count):
        roll = rng.random()
        if roll < bad_rate:
            kind = BAD_KINDS[rng.randrange(len(BAD_KINDS))]
            traffic.bad[kind] += 1
            traffic.records.append((None, _malformed(kind, i, rng, max_bytes)))
        elif roll < bad_rate + duplicate_rate and sent_valid:
            traffic.duplicates += 1
            low = 0 if resend_window is None else max(0, len(sent_valid) - resend_window)
            traffic.records.append(sent_valid[rng.randrange(low, len(sent_valid))])
        else:
            account_no = rng.randrange(accounts)
            payment = {
                "event_id": f"{id_prefix}-{seed}-{i}",
                "account": f"acct-{account_no}",
                "amount": rng.randint(1, 100_000),
                "currency": CURRENCY_OF[account_no % len(CURRENCY_OF)],
                "created_at": (start + timedelta(seconds=i)).isoformat(),
            }
            record = (payment["event_id"].encode(), payment_bytes(payment))
            traffic.unique_events[payment["event_id"]] = payment
            sent_valid.append(record)
            traffic.records.append(record)
    return traffic


def _malformed(kind: str, i: int, rng: random.Random, max_bytes: int) -> bytes:
    base = {
        "event_id": f"bad-{i}", "account": "acct-0", "amount": 100,
        "currency": "EUR", "created_at": "2026-01-01T00:00:00+00:00",
    }
    if kind == "not_json":
        return b"{not json" + bytes([rng.randrange(256)])
    if kind == "not_object":
        return b"[1, 2, 3]"
    if kind == "missing_field":
        base.pop(("event_id", "account", "amount", "currency", "created_at")[i % 5])
    elif kind == "wrong_type":
        base["amount"] = "100"
    elif kind == "negative_amount":
        base["amount"] = -rng.randint(1, 1000)
    elif kind == "absurd_amount":
        base["amount"] = 10**15
    elif kind == "bad_currency":
        base["currency"] = "euro"
    elif kind == "oversize":
        base["note"] = "x" * (max_bytes + 1)
    elif kind == "empty":
        return b""
    elif kind == "repeated_field":  # a reader keeping the first amount and one keeping the last disagree
        return payment_bytes(base)[:-1] + b',"amount":' + str(base["amount"] * 1000).encode() + b"}"
    return payment_bytes(base)
