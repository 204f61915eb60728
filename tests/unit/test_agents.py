"""Agents on Faust's in-memory test_context: the logic of each stage, no broker.

Anything about offsets, commits, transactions or crashes needs the real broker:
see tests/integration and the lab.
"""

import asyncio
import json
from unittest.mock import AsyncMock

import pytest

from streams_app import app, pipeline
from streams_app.models import Payment, json_key

# The pipeline the entry point built (streams_app._build), on the tests' settings (conftest).
topics, tables, processing = pipeline.topics, pipeline.tables, pipeline.processing
dedup_payments = pipeline.stages["dedup"].agent
apply_payments = pipeline.stages["apply"].agent
balances, seen_events = tables.balances.table, tables.seen_events.table
totals, is_duplicate = tables.counters.totals, tables.seen_events.is_duplicate


@pytest.fixture(autouse=True)
def in_memory_app(monkeypatch):
    """Memory tables, flow on, no memory of processed offsets (each test's offsets start
    at 0), and every output topic captured instead of sent."""
    processing.memory.clear()
    app.finalize()
    app.flow_control.resume()
    for table in (balances, seen_events):
        table.data.clear()
    sent = {}
    for topic in (topics.events, topics.dead_letters, topics.unique, topics.applied):
        mock = AsyncMock(return_value=_Acked())
        monkeypatch.setattr(topic, "send", mock)
        sent[topic.get_topic_name()] = mock

    class Producer:
        """What AppProcessing.publish hands outputs to: the same mocks."""

        async def send(self, topic, key, value, partition, timestamp, headers):
            # aiokafka's record builder takes a list (a consumed record's tuple raised TypeError)
            assert headers is None or isinstance(headers, list), f"headers must be a list: {headers!r}"
            return await sent[topic](key=key, value=value, partition=partition, headers=headers)

    async def producer():
        return Producer()

    monkeypatch.setattr(app, "maybe_start_producer", producer)
    yield sent


class _Acked:
    """Stands in for the send future: awaiting it is an immediate broker ack."""

    def __await__(self):
        return iter(())


def payment(event_id="evt-1", account="acct-1", amount=100, currency="EUR") -> bytes:
    return Payment(event_id=event_id, account=account, amount=amount, currency=currency,
                   created_at="2026-01-01T00:00:00+00:00").to_json()


def run(coro):
    return asyncio.run(coro)


def home(event_id: str) -> int:
    return topics.event_partition(event_id)


def owner(account: str) -> int:
    """The partition of ``{prefix}.unique`` (and of the balances table) that holds ``account``."""
    return topics.key_partition(json_key(account))


def test_dedup_forwards_valid_records_and_dead_letters_bad_ones(in_memory_app):
    async def scenario():
        async with dedup_payments.test_context() as agent:
            await agent.put(payment(), key=b"evt-1", partition=home("evt-1"))
            await agent.put(b"{not json", key=b"k", wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    forwarded = in_memory_app["unit.unique"]
    dlq = in_memory_app["unit.dlq"]
    assert forwarded.await_count == 1
    assert forwarded.await_args.kwargs["key"] == json_key("acct-1") == b'"acct-1"'
    assert dlq.await_count == 1
    headers = dict(dlq.await_args.kwargs["headers"])
    assert headers["x-dlq-code"] == b"not_json"
    assert dlq.await_args.kwargs["value"] == b"{not json"  # the original bytes, untouched


def test_a_record_outside_its_ids_partition_is_moved_there_not_deduplicated(in_memory_app):
    """Copies of an id meet only in its partition: one found elsewhere (another key, no key)
    goes to that partition of {prefix}.events, bytes untouched, and is not forwarded here."""
    elsewhere = (home("evt-1") + 1) % 4

    async def scenario():
        async with dedup_payments.test_context() as agent:
            await agent.put(payment(), key=b"another-key", partition=elsewhere, headers=(("trace", b"t-1"),),
                            wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    moved = in_memory_app["unit.events"]
    assert moved.await_count == 1
    assert moved.await_args.kwargs["partition"] == home("evt-1")
    assert moved.await_args.kwargs["key"] == b"evt-1"
    assert moved.await_args.kwargs["value"] == payment()
    assert moved.await_args.kwargs["headers"] == [("trace", b"t-1")]  # the producer's own headers kept
    assert in_memory_app["unit.unique"].await_count == 0
    assert not is_duplicate("evt-1")


def test_dedup_forwards_each_event_id_once(in_memory_app):
    async def scenario():
        async with dedup_payments.test_context() as agent:
            for event_id in ("evt-1", "evt-2", "evt-1", "evt-1", "evt-3"):
                # wait=False: a dropped duplicate never acks, and put(wait=True) would hang
                await agent.put(payment(event_id=event_id), key=event_id.encode(), partition=home(event_id),
                                wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    forwarded = in_memory_app["unit.unique"]
    assert [json.loads(c.kwargs["value"])["event_id"] for c in forwarded.await_args_list] == ["evt-1", "evt-2", "evt-3"]
    assert all(is_duplicate(e) for e in ("evt-1", "evt-2", "evt-3"))
    assert not is_duplicate("evt-4")


def test_a_reused_event_id_with_another_account_is_dropped(in_memory_app):
    async def scenario():
        async with dedup_payments.test_context() as agent:
            await agent.put(payment(event_id="evt-7", account="acct-1"), key=b"evt-7", partition=home("evt-7"),
                            wait=False)
            await agent.put(payment(event_id="evt-7", account="acct-2", amount=5), key=b"evt-7",
                            partition=home("evt-7"), wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    forwarded = in_memory_app["unit.unique"]
    assert [json.loads(c.kwargs["value"])["account"] for c in forwarded.await_args_list] == ["acct-1"]
    assert totals()["dedup.duplicates"] >= 1


@pytest.mark.parametrize("at_most_once", [False, True], ids=["at_least_once", "at_most_once"])
def test_a_forward_that_fails_leaves_the_id_unseen_except_under_at_most_once(in_memory_app, monkeypatch,
                                                                                at_most_once):
    """The crash between forwarding and marking, as a send that fails: under
    at_least_once the id stays unseen (the redelivery forwards it again, nothing is
    lost); under at_most_once it was marked first (a later copy is dropped, the
    event may be lost, its id is never forwarded twice)."""
    processing.memory.clear()  # each case's offset 0 is new
    monkeypatch.setattr(pipeline.stages["dedup"], "mark_before_forwarding", at_most_once)
    monkeypatch.setattr(pipeline.stages["dedup"], "await_output_before_marking", not at_most_once)
    in_memory_app["unit.unique"].side_effect = RuntimeError("killed before the output was acknowledged")

    async def scenario():
        async with dedup_payments.test_context() as agent:
            await agent.put(payment(event_id="evt-9"), key=b"evt-9", partition=home("evt-9"), wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    assert is_duplicate("evt-9") is at_most_once


def test_seen_ids_expire_after_the_horizon():
    from streams_app import settings

    assert tables.seen_events.horizon == settings.dedup_horizon
    seen_events.data["evt-old"] = 1000.0
    assert is_duplicate("evt-old", now=1000.0 + settings.dedup_horizon)
    assert not is_duplicate("evt-old", now=1000.0 + settings.dedup_horizon + 1)


def test_apply_sums_balances_per_account_and_currency(in_memory_app):
    async def scenario():
        async with apply_payments.test_context() as agent:
            await agent.put(payment("e1", "acct-1", 100, "EUR"), key=json_key("acct-1"), partition=owner("acct-1"))
            await agent.put(payment("e2", "acct-1", 50, "EUR"), key=json_key("acct-1"), partition=owner("acct-1"))
            await agent.put(payment("e3", "acct-1", 7, "USD"), key=json_key("acct-1"), partition=owner("acct-1"))
            await agent.put(payment("e4", "acct-2", 1, "EUR"), key=json_key("acct-2"), partition=owner("acct-2"))
    run(scenario())
    assert balances["acct-1"] == {"EUR": 150, "USD": 7}
    assert balances["acct-2"] == {"EUR": 1}
    outputs = [json.loads(c.kwargs["value"]) for c in in_memory_app["unit.applied"].await_args_list]
    assert [o["balance_after"] for o in outputs] == [100, 150, 7, 1]
    assert totals()["apply.applied"] >= 4


def test_a_payment_in_another_partition_than_its_account_s_is_dead_lettered_not_applied(in_memory_app):
    """A valid payment on {prefix}.unique outside its account's partition (written there by
    something other than the dedup stage: another partitioner, a hand-made record) would be
    applied to a second balance of the account, kept in that partition's table and changelog,
    and its applied record would carry that balance. It is dead-lettered, saying where it
    belongs (a replay sends it by its key: to the account's partition)."""
    elsewhere = (owner("acct-1") + 1) % topics.partitions

    async def scenario():
        async with apply_payments.test_context() as agent:
            await agent.put(payment("e1", "acct-1", 100), key=json_key("acct-1"), partition=owner("acct-1"))
            await agent.put(payment("e2", "acct-1", 5), key=json_key("acct-1"), partition=elsewhere, wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    assert [json.loads(c.kwargs["value"])["event_id"] for c in in_memory_app["unit.applied"].await_args_list] == ["e1"]
    assert balances["acct-1"] == {"EUR": 100}
    dlq = in_memory_app["unit.dlq"]
    assert dlq.await_count == 1 and dlq.await_args.kwargs["value"] == payment("e2", "acct-1", 5)
    headers = dict(dlq.await_args.kwargs["headers"])
    assert headers["x-dlq-code"] == b"wrong_partition"
    assert f"partition {owner('acct-1')}".encode() in headers["x-dlq-reason"]


@pytest.mark.parametrize("agent_name", ["dedup_payments", "apply_payments"])
@pytest.mark.parametrize("value", [None, b"\x00\xff", b'{"event_id": "e-1"}'], ids=["null", "garbage", "partial"])
def test_an_internal_record_that_is_not_a_payment_is_dead_lettered_with_its_bytes(in_memory_app, monkeypatch,
                                                                                   agent_name, value):
    """Stock Faust decoded internal topics itself and dropped what it could not decode;
    now the stage decodes it and the DLQ gets the original bytes (a null stays null)."""
    processing.memory.clear()  # each case's offset 0 is new
    agent_of = {"dedup_payments": dedup_payments, "apply_payments": apply_payments}

    async def scenario():
        async with agent_of[agent_name].test_context() as agent:
            await agent.put(value, key=b'"k"', wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    dlq = in_memory_app["unit.dlq"]
    assert dlq.await_count == 1
    assert dlq.await_args.kwargs["value"] == value
    headers = dict(dlq.await_args.kwargs["headers"])
    assert headers["x-dlq-code"] in {b"empty", b"not_json", b"missing_field"}
    assert headers["x-dlq-stage"] == agent_name.split("_")[0].encode()


def test_a_fenced_worker_neither_dead_letters_nor_remembers_the_record_but_releases_it(in_memory_app, monkeypatch):
    """Under exactly_once a fenced worker's sends fail ('No transaction producer found' once its
    producers are stopped): the record belongs to another worker now. It must not reach the
    DLQ, must not count as processed here (it may come back after the rejoin), and must be
    acked, or the rejoin's revocation waits for it forever (Consumer.wait_empty)."""
    from faust.exceptions import ProducerSendError

    processing.memory.clear()
    in_memory_app["unit.unique"].side_effect = ProducerSendError("No transaction producer found for : app-1-2")
    import faust_guarantees.processing

    acked = []
    stock_ack_all = faust_guarantees.processing.ack_all

    def ack_all(stream, events):
        acked.extend(event.message.offset for event in events)
        return stock_ack_all(stream, events)

    monkeypatch.setattr(faust_guarantees.processing, "ack_all", ack_all)

    async def scenario():
        async with dedup_payments.test_context() as agent:
            await agent.put(payment(event_id="evt-f"), key=b"evt-f", partition=home("evt-f"), wait=False)
            await asyncio.sleep(0.2)
    run(scenario())
    assert acked == [0], "released: the rebalance must not wait for it"
    assert in_memory_app["unit.dlq"].await_count == 0
    assert not processing.memory._processed
    assert not is_duplicate("evt-f")


@pytest.mark.parametrize("failure", ["store", "broker"])
def test_a_dependency_failing_mid_batch_dead_letters_nothing_and_restarts_the_worker(in_memory_app, monkeypatch,
                                                                                     failure):
    """The disk under the seen-events store fills up (rocksdict's IO error), or the broker does
    not take the outputs (the producer gave up: KafkaTimeoutError). Before: every record of the
    batch was dead-lettered (processing_error), after its outputs were sent. Now none is: the
    worker stops uncommitted and starts again later, and the records (unacked under
    at_least_once) come again."""
    from aiokafka.errors import KafkaTimeoutError

    import faust_guarantees.batching
    import faust_guarantees.processing

    processing.memory.clear()
    stops, acked = [], []
    stock_ack_all = faust_guarantees.processing.ack_all

    async def stop_for_dependency(app, error, why):
        stops.append(error)

    def ack_all(stream, events):
        acked.extend(event.message.offset for event in events)
        return stock_ack_all(stream, events)

    monkeypatch.setattr(faust_guarantees.processing, "stop_for_dependency", stop_for_dependency)
    monkeypatch.setattr(faust_guarantees.processing, "ack_all", ack_all)
    if failure == "store":
        def set_row(self, table, key, value):
            raise Exception("IO error: No space left on device: While appending to file: 000008.sst")

        monkeypatch.setattr(faust_guarantees.batching.RecordBatches, "set_row", set_row)
    else:
        in_memory_app["unit.unique"].side_effect = KafkaTimeoutError()

    async def scenario():
        async with dedup_payments.test_context() as agent:
            for event_id in ("evt-d1", "evt-d2"):
                await agent.put(payment(event_id=event_id), key=event_id.encode(), partition=home(event_id),
                                wait=False)
            await asyncio.sleep(0.3)
    run(scenario())
    assert in_memory_app["unit.dlq"].await_count == 0
    assert len(stops) >= 1 and all(type(e).__name__ in {"Exception", "KafkaTimeoutError"} for e in stops)
    assert acked == [], "at_least_once: left unacked, so no commit passes them"
    assert not processing.memory._processed
    assert not is_duplicate("evt-d1") and not is_duplicate("evt-d2")


def test_a_record_queued_twice_in_one_batch_is_applied_once(in_memory_app):
    """A seek back (a rebalance, the stall heal) re-fetches records whose first copy may
    still wait in the stream's queue: both then fall into one batch, and neither is in
    the memory of processed offsets yet (seen as 392 double-applied payments under
    at_least_once with a seek-back every 0.2 s, tests/integration/test_faust_fixes.py)."""
    async def scenario():
        async with apply_payments.test_context() as agent:
            channel = agent.stream().channel
            for _ in range(2):  # the same partition and offset, queued before the agent looks
                message = agent.to_message(json_key("acct-1"), payment("e1", "acct-1", 100), partition=1, offset=7)
                await channel.put(await channel.decode(message))
            await asyncio.sleep(0.2)
    run(scenario())
    assert balances["acct-1"] == {"EUR": 100}
    assert in_memory_app["unit.applied"].await_count == 1


def test_under_at_least_once_an_output_that_fails_is_dead_lettered_and_not_applied(in_memory_app, monkeypatch):
    """The producer gave up on one applied record (its future failed): the record goes to
    the DLQ, and its amount is not in the balance, so a replay applies it once."""
    monkeypatch.setattr(pipeline.stages["apply"], "await_outputs", True)

    class Failed:
        def __await__(self):
            raise RuntimeError("delivery timed out")
            yield  # pragma: no cover

    outcomes = iter([_Acked(), Failed(), _Acked()])
    in_memory_app["unit.applied"].side_effect = lambda **kwargs: next(outcomes)

    async def scenario():
        async with apply_payments.test_context() as agent:
            channel = agent.stream().channel
            for offset, (event_id, amount) in enumerate((("e1", 100), ("e2", 20), ("e3", 3))):
                message = agent.to_message(json_key("acct-1"), payment(event_id, "acct-1", amount),
                                           partition=1, offset=offset)
                await channel.put(await channel.decode(message))
            await asyncio.sleep(0.2)
    run(scenario())
    assert balances["acct-1"] == {"EUR": 103}
    headers = dict(in_memory_app["unit.dlq"].await_args.kwargs["headers"])
    assert headers["x-dlq-code"] == b"processing_error" and b"delivery timed out" in headers["x-dlq-reason"]


def test_the_cached_output_partition_is_where_kafka_s_default_partitioner_puts_the_key():
    """The stages pass key_partition(key) instead of letting aiokafka hash each record: it
    must be the default partitioner's answer, or balances would move between partitions."""
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(topics.partitions))
    for n in range(200):
        key = json_key(f"acct-{n}")
        assert topics.key_partition(key) == DefaultPartitioner()(key, partitions, partitions), key
