"""Validation: every malformed kind is caught with a stable code; valid input passes."""

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams_app.exceptions import InvalidPayment
from streams_app.models import parse_payment
from streams_app.traffic import BAD_KINDS, CODE_OF_KIND, _malformed, generate

LIMITS = {"max_bytes": 16 * 1024, "max_amount": 10**10}
VALID = {"event_id": "evt-1", "account": "acct-1", "amount": 250, "currency": "EUR",
         "created_at": "2026-01-01T10:00:00+00:00"}


def raw(**changes):
    return json.dumps({**VALID, **changes}).encode()


def test_valid_payment_parses():
    payment = parse_payment(raw(), **LIMITS)
    assert (payment.event_id, payment.account, payment.amount) == ("evt-1", "acct-1", 250)


@pytest.mark.parametrize("value,code", [
    (None, "empty"),
    (b"", "empty"),
    (b"\xff\xfe", "not_json"),
    (b"{oops", "not_json"),
    (b'"a string"', "not_object"),
    (raw(amount=True), "wrong_type"),
    (raw(amount=2.5), "wrong_type"),
    (raw(amount="10"), "wrong_type"),
    (raw(amount=0), "bad_amount"),
    (raw(amount=-5), "bad_amount"),
    (raw(amount=10**11), "bad_amount"),
    (raw(currency="eur"), "bad_format"),
    (raw(event_id=""), "bad_format"),
    (raw(event_id="a b"), "bad_format"),
    (raw(created_at="yesterday"), "bad_format"),
    (raw(created_at="2026-01-01T10:00:00"), "bad_format"),
    (b"{" + b" " * 20000 + b"}", "oversize"),
    (raw()[:-1] + b',"amount":99999}', "repeated_field"),  # last wins here, the first elsewhere
    (raw()[:-1] + b', "am\\u006funt": 99999}', "repeated_field"),  # spelt with an escape
    (b'{"amount" : 1, ' + raw()[1:], "repeated_field"),  # not compact: read key by key
    (raw()[:-1] + b',"note":{"a":1,"a":2}}', "repeated_field"),  # in any object of the record
])
def test_malformed_records_are_rejected_with_a_reason(value, code):
    with pytest.raises(InvalidPayment) as err:
        parse_payment(value, **LIMITS)
    assert err.value.code == code
    assert err.value.reason


def test_missing_field_is_named():
    data = dict(VALID)
    del data["currency"]
    with pytest.raises(InvalidPayment, match="'currency' is missing"):
        parse_payment(json.dumps(data).encode(), **LIMITS)


def test_every_generated_bad_kind_is_rejected_and_every_valid_record_parses():
    traffic = generate(2000, duplicate_rate=0.2, bad_rate=0.2, seed=7)
    rejected = 0
    for _key, value in traffic.records:
        try:
            payment = parse_payment(value, **LIMITS)
        except InvalidPayment:
            rejected += 1
        else:
            assert payment.event_id in traffic.unique_events
    assert rejected == sum(traffic.bad.values())
    assert set(traffic.bad) == set(BAD_KINDS)


def test_traffic_is_reproducible_and_counts_add_up():
    a = generate(500, duplicate_rate=0.3, bad_rate=0.1, seed=3)
    b = generate(500, duplicate_rate=0.3, bad_rate=0.1, seed=3)
    assert a.records == b.records
    assert len(a.records) == len(a.unique_events) + a.duplicates + sum(a.bad.values())
    total = sum(sum(c.values()) for c in a.expected_balances.values())
    assert total == a.summary()["total_amount"]


def _resend_ages(records: list) -> list[int]:
    """For each re-send, how many valid records were first sent since the one it repeats."""
    first: dict[tuple, int] = {}
    ages = []
    for record in records:
        if record in first:
            ages.append(len(first) - 1 - first[record])
        else:
            first[record] = len(first)
    return ages


def test_re_sends_stay_inside_their_window():
    """The soak's short dedup horizon: a re-send repeats one of the last N valid records."""
    ages = _resend_ages(generate(3000, duplicate_rate=0.3, seed=4, resend_window=25).records)
    assert len(ages) > 500 and max(ages) < 25
    assert max(_resend_ages(generate(3000, duplicate_rate=0.3, seed=4).records)) > 25  # no window: any


@pytest.mark.parametrize("value", [
    json.dumps(VALID).encode(),  # spaces: the stdlib's default, read key by key
    raw(note='"amount": 5, "amount": 6'),  # the key's text inside a string is not a key
    raw(note={"amount": 5}),  # the same key in another object
    raw(note="caf\u00e9"),  # escaped here, UTF-8 when written again: read key by key
])
def test_a_record_without_a_repeated_key_is_not_refused_for_one(value):
    assert parse_payment(value, **LIMITS).amount == 250


@given(st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=6),
       st.sampled_from([(",", ":"), (", ", ": "), (",", " : ")]))
def test_repeating_any_key_of_any_object_is_refused(data, separators):
    items = [*VALID.items(), *data.items()]
    body = ",".join(json.dumps(k) + separators[1] + json.dumps(v) for k, v in items)
    once = ("{" + body + "}").encode()
    twice = ("{" + body + "," + json.dumps(items[-1][0]) + separators[1] + "1}").encode()
    with pytest.raises(InvalidPayment) as err:
        parse_payment(twice, **LIMITS)
    assert err.value.code == "repeated_field"
    keys = [k for k, _ in items]
    if len(set(keys)) == len(keys):
        parse_payment(once, **LIMITS)  # no key twice: not refused for one (valid fields kept)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_generated_bad_kind_gets_its_code(kind):
    with pytest.raises(InvalidPayment) as err:
        parse_payment(_malformed(kind, 3, random.Random(3), LIMITS["max_bytes"]), **LIMITS)
    assert err.value.code == CODE_OF_KIND[kind]
