"""Generated records thrown at ingest on the real broker (hypothesis).

Whatever bytes arrive on the raw topic (nulls, garbage, JSON of every shape,
near-valid payments with one field wrong, records over MAX_RECORD_BYTES), each
ends up exactly once either as an event or as a dead letter with its original
bytes, and the worker keeps running. Exactly_once, so the read_committed counts
are exact. The verdict for each record comes from the pipeline's own validation
(parse_payment), run here on the same bytes: what this test checks is that the
running worker accounts for every record, not the validation rules, which
tests/unit/test_models.py covers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.readback import read_topic
from streams_app.admin import send_records
from faust_guarantees.dead_letters import DeadLetter
from streams_app.exceptions import InvalidPayment
from streams_app.models import parse_payment

pytestmark = pytest.mark.integration

LIMITS = {"max_bytes": 16 * 1024, "max_amount": 10**10}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)
field_values = {
    "event_id": st.one_of(ids, json_scalars),
    "account": st.one_of(ids, json_scalars),
    "amount": st.one_of(st.integers(min_value=-5, max_value=10**11), json_scalars),
    "currency": st.one_of(st.sampled_from(["EUR", "USD", "eur", "EURO"]), json_scalars),
    "created_at": st.one_of(st.just("2026-12-05T10:00:00+00:00"), st.just("2026-12-05T10:00:00"), json_scalars),
}
near_payments = st.fixed_dictionaries({}, optional=field_values).map(lambda d: json.dumps(d).encode())
values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_payments,
    near_payments,
    st.binary(min_size=16 * 1024 - 8, max_size=20_000),
)
#: aiokafka refuses a record with neither key nor value (Kafka itself takes one).
records = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=40)), values)
                   .filter(lambda kv: kv != (None, None)), min_size=5, max_size=40)


def _verdict(value: bytes | None) -> bool:
    try:
        parse_payment(value, **LIMITS)
    except InvalidPayment:
        return False
    return True


def test_every_generated_raw_record_is_an_event_or_a_dead_letter_exactly_once(pipeline_factory):
    pipeline = pipeline_factory("exactly_once")
    worker = pipeline.worker()
    config = pipeline.config
    sent: list[tuple[bytes | None, bytes | None]] = []

    # No shrinking: each example costs a drain on the broker; a failure is reported as found.
    @settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(batch=records)
    def example(batch: list[tuple[bytes | None, bytes | None]]) -> None:
        asyncio.run(send_records(config.bootstrap, config.topic("raw"), batch))
        sent.extend(batch)
        pipeline.drain()
        assert worker.running, worker.log_tail(40)

        events = asyncio.run(read_topic(config.bootstrap, config.topic("events")))
        letters = [DeadLetter.from_record(r) for r in asyncio.run(read_topic(config.bootstrap, config.topic("dlq")))]
        valid = [value for _key, value in sent if _verdict(value)]
        invalid = [(key, value) for key, value in sent if not _verdict(value)]
        assert len(events) == len(valid), f"expected {len(valid)} events, got {len(events)}"
        assert Counter((d.key, d.value) for d in letters) == Counter(invalid), "each bad record, byte for byte"
        assert len({d.source for d in letters}) == len(letters), "one dead letter per record"
        assert worker.stats()["consumed"] == len(sent)

    example()
