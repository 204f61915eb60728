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
import time

import psycopg
import pytest

from common.readback import read_topic
from faust_guarantees.dead_letters import DeadLetter
from lab.checker import check
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for

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


def test_a_charge_the_database_always_refuses_does_not_stop_the_others(pipeline_factory, own_fresh_db):
    pipeline = pipeline_factory("exactly_once", sink_db=own_fresh_db, SINK_GIVE_UP_AFTER="5s")
    config = pipeline.config
    pipeline.worker()
    warm = generate(20, seed=51, accounts=5, id_prefix=f"{config.run_id}-warm")  # acct-0..4: creates the table
    pipeline.send(warm)
    pipeline.drain()
    with psycopg.connect(own_fresh_db, autocommit=True) as conn:
        conn.execute(TRIGGER)

    traffic = generate(600, seed=52, accounts=20, id_prefix=f"{config.run_id}-poison")
    blocked = {i for i, p in traffic.unique_events.items() if p["account"] == BLOCKED}
    others = set(traffic.unique_events) - blocked
    assert blocked and others
    pipeline.send(traffic)
    charged: set[str] = set()

    def others_charged() -> bool:
        with psycopg.connect(own_fresh_db) as conn:
            charged.update(row[0] for row in conn.execute("SELECT event_id FROM charges"))
        return others <= charged

    wait_for(others_charged, 60, lambda: f"{len(others - charged)} of {len(others)} payments of other "
             f"accounts not charged while {BLOCKED}'s are refused by the trigger")
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
    assert all("is blocked" in letter.reason for letter in letters)

