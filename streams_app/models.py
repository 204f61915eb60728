"""Records that flow through the pipeline, their one codec, and the validation of input.

Every topic the workers read carries bytes (streams_app/topics.py): decoding is
this module's job, not Faust's. Faust's conductor decodes a record before any
agent sees it, and a record it cannot decode (a null value for a model, bytes
from another format version during a rolling deploy) is logged and ACKED: gone,
with nothing in the DLQ. Decoded here, inside the agent's ``processing()``
block, a record that is not a payment raises :class:`InvalidPayment` and goes to
the DLQ with its original bytes like any other bad record.

:func:`parse_payment` is the only door from bytes to a :class:`Payment`, on the
raw topic and on every internal one; :func:`parse_applied` to an
:class:`AppliedPayment`. Each either returns a valid record or raises
:class:`InvalidPayment` with a stable ``code`` and a sentence for the DLQ.
Records are encoded with orjson (compact JSON) and keys as JSON strings, the
way Faust encodes table keys, so a key hashes to the same partition in a
stream and in a table's changelog.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from .exceptions import InvalidPayment

EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Payment:
    """A validated payment event. ``amount`` is in minor units (cents)."""

    event_id: str
    account: str
    amount: int
    currency: str
    created_at: str  # ISO 8601 with a UTC offset, as the producer wrote it

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson writes a dataclass's fields in order, natively


@dataclass(frozen=True, slots=True)
class AppliedPayment:
    """A payment applied to its account: what the sink charges."""

    event_id: str
    account: str
    amount: int
    currency: str
    created_at: str
    balance_after: int  # the account's balance in ``currency`` after this event

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson writes a dataclass's fields in order, natively


def json_key(text: str) -> bytes:
    """A record key as Faust's JSON key serializer writes it (and so hashes it)."""
    return json.dumps(text).encode()


def parse_payment(raw: bytes | None, *, max_bytes: int, max_amount: int) -> Payment:
    """Validate one raw record; raise :class:`InvalidPayment` saying why not."""
    return Payment(**_payment_fields(_object(raw, max_bytes), max_amount))


def parse_applied(raw: bytes | None, *, max_bytes: int, max_amount: int) -> AppliedPayment:
    """Decode one record of ``{prefix}.applied``; raise :class:`InvalidPayment` saying why not."""
    data = _object(raw, max_bytes)
    return AppliedPayment(**_payment_fields(data, max_amount),
                          balance_after=_field(data, "balance_after", int))


def _payment_fields(data: Mapping[str, Any], max_amount: int) -> dict[str, Any]:
    return {
        "event_id": _matching(data, "event_id", EVENT_ID, "1-128 of A-Z a-z 0-9 _ . : -"),
        "account": _matching(data, "account", ACCOUNT, "1-64 of A-Z a-z 0-9 _ . : -"),
        "amount": _amount(data, max_amount),
        "currency": _matching(data, "currency", CURRENCY, "three upper-case letters (ISO 4217)"),
        "created_at": _timestamp(data),
    }


def _object(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        raise InvalidPayment("empty", "record has no value (null or zero bytes)")
    if len(raw) > max_bytes:
        raise InvalidPayment(
            "oversize", f"record is {len(raw)} bytes; the limit is {max_bytes} (MAX_RECORD_BYTES)"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayment("not_json", f"value is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidPayment("not_object", f"expected a JSON object, got {type(data).__name__}")
    repeated = _repeated_keys(raw, data)
    if repeated:
        raise InvalidPayment(
            "repeated_field", f"key {repeated[0]!r} appears more than once in one object: JSON readers "
            "disagree on which one counts (this one keeps the last, many the first)")
    return data


def _repeated_keys(raw: bytes, data: dict[str, Any]) -> list[str]:
    """The keys some object of ``raw`` holds more than once (``data`` is ``raw`` read).

    orjson, like Python's json, keeps the last of a repeated key; other readers of the same
    topic keep the first or refuse it, so ``{"amount": 1, "amount": 100000}`` would be a
    different payment to each. Free for a compact record (the pipeline's own, and any
    producer writing compact JSON): when ``raw`` is exactly ``data`` written again, no key
    was dropped. Any other record is read again by the stdlib parser, key by key."""
    try:
        if orjson.dumps(data) == raw:
            return []
    except orjson.JSONEncodeError:  # read but not written back (an integer past 64 bits)
        pass
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        counts = Counter(key for key, _ in items)
        repeated.extend(key for key, count in counts.items() if count > 1)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayment("not_json", f"value is JSON to one parser and not to another: {exc}") from None
    return repeated


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in data:
        raise InvalidPayment("missing_field", f"field {name!r} is missing")
    value = data[name]
    # bool is a subclass of int in Python; JSON true is not an amount.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidPayment(
            "wrong_type", f"field {name!r} must be {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _matching(data: Mapping[str, Any], name: str, pattern: re.Pattern[str], rule: str) -> str:
    value = _field(data, name, str)
    if not pattern.fullmatch(value):
        raise InvalidPayment("bad_format", f"field {name!r}={value[:80]!r} must be {rule}")
    return value


def _amount(data: Mapping[str, Any], max_amount: int) -> int:
    amount = _field(data, "amount", int)
    if amount <= 0:
        raise InvalidPayment("bad_amount", f"amount {amount} must be greater than 0")
    if amount > max_amount:
        raise InvalidPayment(
            "bad_amount", f"amount {amount} exceeds the limit {max_amount} (MAX_AMOUNT)"
        )
    return amount


def _timestamp(data: Mapping[str, Any]) -> str:
    value = _field(data, "created_at", str)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidPayment(
            "bad_format", f"created_at={value[:40]!r} is not an ISO 8601 timestamp"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidPayment("bad_format", f"created_at={value!r} has no UTC offset")
    return value
