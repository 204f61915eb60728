"""A record the sink's target never takes, while it takes every other.

A database trigger that raises for one account (PostgreSQL's ``RAISE EXCEPTION``, SQLSTATE
P0001: not a constraint, so not a refusal by class) fails every batch that holds one of that
account's charges. The sink retried such a batch as an outage, without end, and it has one
batch at a time over every partition: no later payment of any account was charged (477 of
573 in 120 s, before agents/sink.py ``FailingCharges``). Now the payments of the other
accounts are charged, each once, and the blocked account's are dead-lettered once they have
failed for SINK_GIVE_UP_AFTER while other charges went through, with the database's reason;
during an outage (nothing charged) nothing is dead-lettered (test_sink_outage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psycopg
import pytest

from common.readback import read_topic
from faust_guarantees.dead_letters import DeadLetter
from lab.checker import charges_by_event, check
from payment_api.client import PaymentClient
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for
from tests.fixtures.payment_api import payment_api

pytestmark = pytest.mark.integration

BLOCKED = "acct-7"
TRIGGER = f"""
CREATE FUNCTION refuse_blocked() RETURNS trigger AS $$
BEGIN
    IF NEW.account = '{BLOCKED}' THEN
        RAISE EXCEPTION 'account % is blocked', NEW.account;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_blocked BEFORE INSERT ON charges FOR EACH ROW EXECUTE FUNCTION refuse_blocked();
"""


@pytest.mark.parametrize("target", ["database", "api"])
def test_a_charge_the_target_always_fails_does_not_stop_the_others(pipeline_factory, own_fresh_db, tmp_path, target):
    """``database``: the trigger above raises for one account. ``api``: the payment API
    answers 500 to every charge of one account (its ``fail_accounts`` fault), as a shard
    down or a bug for one customer would; the API path shares the evidence rule."""
    with contextlib.ExitStack() as stack:
        if target == "api":
            api_url = stack.enter_context(payment_api(tmp_path))
            pipeline = pipeline_factory("exactly_once", payment_api=(api_url, f"sqlite:///{tmp_path / 'api.db'}"),
                                        SINK_GIVE_UP_AFTER="5s")
        else:
            pipeline = pipeline_factory("exactly_once", sink_db=own_fresh_db, SINK_GIVE_UP_AFTER="5s")
        _a_charge_that_always_fails(pipeline, target, own_fresh_db,
                                    api_url if target == "api" else "")


def _a_charge_that_always_fails(pipeline, target: str, sink_db: str, api_url: str) -> None:
    config = pipeline.config
    pipeline.worker()
    warm = generate(20, seed=51, accounts=5, id_prefix=f"{config.run_id}-warm")  # acct-0..4: creates the table
    pipeline.send(warm)
    pipeline.drain()
    if target == "api":
        asyncio.run(_fail_account(api_url, BLOCKED))
    else:
        with psycopg.connect(sink_db, autocommit=True) as conn:
            conn.execute(TRIGGER)

    traffic = generate(600, seed=52, accounts=20, id_prefix=f"{config.run_id}-poison")
    blocked = {i for i, p in traffic.unique_events.items() if p["account"] == BLOCKED}
    others = set(traffic.unique_events) - blocked
    assert blocked and others
    pipeline.send(traffic)
    charged: set[str] = set()

    def others_charged() -> bool:
        charged.update(charges_by_event(config.payment_api_db if target == "api" else sink_db,
                                        column="reference" if target == "api" else "event_id"))
        return others <= charged

    wait_for(others_charged, 60, lambda: f"{len(others - charged)} of {len(others)} payments of other "
             f"accounts not charged while {BLOCKED}'s always fail")
    # A record is given up only after failing again while other charges went through: more
    # payments keep coming (of other accounts), as they would.
    later = [generate(30, seed=53 + i, accounts=5, id_prefix=f"{config.run_id}-later{i}") for i in range(8)]
    for sent in later:
        pipeline.send(sent)
        time.sleep(2)
    pipeline.drain()
    for sent in later:
        assert asyncio.run(check(config, sent)).charged_unique == len(sent.unique_events)
    counts = asyncio.run(check(config, traffic))
    assert counts.duplicate_charges == 0
    assert counts.charged_unique == len(others)
    assert counts.dead_lettered == len(blocked)
    letters = [DeadLetter.from_record(r) for r in asyncio.run(read_topic(config.bootstrap, config.topic("dlq")))]
    assert {letter.code for letter in letters} == {"effect_failed"}
    reason = "cannot be charged" if target == "api" else "is blocked"
    assert all(reason in letter.reason for letter in letters), letters[0].reason


async def _fail_account(api_url: str, account: str) -> None:
    async with PaymentClient(api_url) as client:
        await client.set_faults(fail_accounts=[account])

