"""Records a stage holds for a dependency, released at a revocation (held-records-released)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from faust_guarantees import state
from faust_guarantees.fixes import held_records_released
from faust_guarantees.fixes.whole_transactions import held_transactions
from faust_guarantees.holding import Holdings, Released


class _Message:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.acked = False


def _event(offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=_Message(offset))


class _Consumer:
    """Faust's Consumer as the wait at a revocation sees it: the records delivered and not acked."""

    def __init__(self, events: list[SimpleNamespace]) -> None:
        self._unacked_messages = {event.message for event in events}


async def _faust_wait_empty(consumer: _Consumer, logger: object) -> None:
    """Faust's App._consumer_wait_empty at a revocation: until every delivered record is acked."""
    while consumer._unacked_messages:
        await asyncio.sleep(0.01)


def _app() -> SimpleNamespace:
    return SimpleNamespace(should_stop=False, _consumer_wait_empty=_faust_wait_empty)


async def _stage_waiting_out_an_outage(holdings: Holdings, events: list, tries: list[str]) -> str:
    """A stage's loop: a try, then a wait, while its dependency is down, until released."""
    with holdings.hold(events) as held:
        try:
            while True:
                async with held.attempt():
                    tries.append("start")
                    await asyncio.sleep(0.2)  # the try in progress when the release comes
                    tries.append("end")
                await held.sleep(30.0)
        except Released:
            return "released"


def test_stock_a_revocation_waits_for_records_a_stage_holds():
    events = [_event(1), _event(2)]
    consumer = _Consumer(events)
    app = _app()
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(app._consumer_wait_empty(consumer, None), 1.0))


def test_a_revocation_releases_held_records_unacked_after_the_try_in_progress():
    events = [_event(1), _event(2)]
    consumer = _Consumer(events)
    app = _app()
    guarantees = state.Guarantees(app)
    held_records_released.install(guarantees)
    tries: list[str] = []

    async def scenario() -> str:
        stage = asyncio.create_task(_stage_waiting_out_an_outage(guarantees.holdings, events, tries))
        await asyncio.sleep(0.05)  # the stage is in its first try
        await asyncio.wait_for(app._consumer_wait_empty(consumer, None), 5.0)
        assert tries == ["start", "end"], "the try in progress ended before the records were released"
        return await asyncio.wait_for(stage, 1.0)

    assert asyncio.run(scenario()) == "released"
    assert not consumer._unacked_messages
    assert not any(event.message.acked for event in events), "released, never acked: no commit passes them"
    assert guarantees.interventions[("held-records-released", "released")] == 1
    assert len(guarantees.holdings) == 0


def test_a_released_hold_starts_no_new_try_and_leaves_acked_records_alone():
    events = [_event(1), _event(2)]
    events[0].message.acked = True
    consumer = _Consumer(events)
    consumer._unacked_messages.discard(events[0].message)
    holdings = Holdings()

    async def scenario() -> int:
        held = holdings.open(events)
        released = await holdings.release_all(consumer)
        with pytest.raises(Released):
            async with held.attempt():
                raise AssertionError("no try after a release")
        with pytest.raises(Released):
            await held.sleep(10.0)
        return released

    assert asyncio.run(scenario()) == 1
    assert not consumer._unacked_messages


def test_a_hole_in_a_topic_that_sends_only_dead_letters_holds_no_transaction():
    tp, other = TP("applied", 2), TP("unique", 2)
    consumer = SimpleNamespace(
        app=SimpleNamespace(conf=SimpleNamespace(id="app"), assignor=SimpleNamespace(group_for_topic=lambda t: 0)),
        assignment=lambda: {tp, other},
        _acked={tp: [10, 12], other: [10, 12]}, _gap={}, _committed_offset={tp: 10, other: 10},
    )
    assert set(held_transactions(consumer)) == {"app-0-2"}, "stock: the hole in applied[2] holds it"
    held = held_transactions(consumer, exempt={"applied"})
    assert [list(partitions) for partitions in held.values()] == [[other]]
    consumer._acked = {tp: [10, 12], other: [10, 11]}
    assert held_transactions(consumer, exempt={"applied"}) == {}
