"""The kit's public API (faust_guarantees): what installing it into a Faust app does.

The fixes' own mechanisms are tested per fix (test_faust_fixes_unit.py, and against the
broker in tests/integration/test_faust_fixes.py); here: which fixes an app gets, that
importing the kit changes nothing, and the per-app state the fixes share.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest

import faust_guarantees
from faust_guarantees import fixes, state
from faust_guarantees.fixes import wipe_unclean_state


def test_importing_the_kit_patches_nothing():
    """Install is explicit: a process that imports the kit (e.g. to read FIXES) runs stock Faust."""
    code = ("import faust_guarantees\n"
            "from faust.transport.consumer import Consumer\n"
            "from faust.transport.drivers.aiokafka import Producer\n"
            "assert not getattr(Consumer._new_offset, '_fixed', False)\n"
            "assert not getattr(Producer._settings_extra, '_fixed', False)\n"
            "assert len(faust_guarantees.FIXES) == 29\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_every_fix_is_documented_once_in_its_module():
    for module in fixes.MODULES:
        title, _, text = (module.__doc__ or "").strip().partition("\n\n")
        assert title == f"The {module.NAME} fix.", module.__name__
        assert module.ONLY in (None, "exactly_once", "at_most_once"), module.NAME
        if module.ONLY:  # the text opens with the guarantee it is for
            assert text.startswith(module.ONLY), module.NAME
    assert list(faust_guarantees.FIXES) == [module.NAME for module in fixes.MODULES]


@pytest.mark.parametrize("guarantee, installed, left_out", [
    ("at_least_once", "exact-gaps", "commit-gate"),
    ("exactly_once", "commit-gate", "commit-order"),
    ("at_most_once", "commit-order", "fenced-restart"),
])
def test_a_fix_is_installed_only_under_the_guarantee_it_is_for(monkeypatch, guarantee, installed, left_out):
    calls: list[str] = []
    for module in fixes.MODULES:
        monkeypatch.setattr(module, "install", lambda guarantees, name=module.NAME: calls.append(name))
    app = faust.App(f"kit-{guarantee}", autodiscover=False)
    guarantees = faust_guarantees.install(app, guarantee=guarantee)
    assert installed in calls and left_out not in calls
    assert state.of(app) is guarantees and guarantees.gated == (guarantee == "exactly_once")


def test_the_guarantee_defaults_to_the_app_s_processing_guarantee(monkeypatch):
    for module in fixes.MODULES:
        monkeypatch.setattr(module, "install", lambda guarantees: None)
    app = faust.App("kit-default", autodiscover=False, processing_guarantee="exactly_once")
    assert faust_guarantees.install(app).exactly_once


def test_an_unknown_fix_or_mode_is_refused_before_anything_is_installed():
    app = faust.App("kit-unknown", autodiscover=False)
    with pytest.raises(ValueError, match="unknown fix exact-gap; the fixes are: stalled-partition-heal"):
        faust_guarantees.install(app, ["exact-gap"])
    with pytest.raises(ValueError, match="on_unverified must be 'fail' or 'warn'"):
        faust_guarantees.install(app, on_unverified="ignore")


def test_interventions_are_counted_per_app_and_told_to_listeners():
    one, other = state.Guarantees(object()), state.Guarantees(object())
    heard: list[tuple[str, str]] = []
    one.on_intervention(lambda fix, action: heard.append((fix, action)))
    one.intervened("exact-gaps", "redeliver")
    one.intervened("exact-gaps", "redeliver")
    assert one.interventions[("exact-gaps", "redeliver")] == 2 and not other.interventions
    assert heard == [("exact-gaps", "redeliver")] * 2


def test_a_fence_is_recorded_once_and_told_to_listeners():
    app = faust.App("kit-fence", autodiscover=False)
    guarantees = state.attach(state.Guarantees(app, after_fence="exit"))
    told: list[str] = []
    guarantees.on_fence(told.append)
    crashed: list[BaseException] = []

    async def crash(error: BaseException) -> None:
        crashed.append(error)

    app.crash = crash
    asyncio.run(faust_guarantees.on_fenced(app, RuntimeError("ProducerFenced")))
    asyncio.run(faust_guarantees.on_fenced(app, RuntimeError("again")))
    assert faust_guarantees.fenced(app) and told == ["ProducerFenced"] and len(crashed) == 1


def test_a_fenced_worker_rejoins_by_starting_its_own_command_again_once_stopped(monkeypatch):
    """after_fence="rejoin" (the default): after Faust's shutdown (atexit) the process runs its
    own command line again; the new worker wipes and restores its tables. The exec is
    captured here; tests/integration/test_fenced_worker.py runs the real one."""
    from faust_guarantees import fencing

    app = faust.App("kit-rejoin", autodiscover=False)
    app.in_worker = True  # what Faust's Worker sets: only a worker process rejoins
    state.attach(state.Guarantees(app))
    at_exit: list = []
    monkeypatch.setattr(fencing.atexit, "register", at_exit.append)
    # Its stop watchdog would SIGTERM (then exec) the test process 10 s later: a thread the
    # test must not start (CI on b5f667e: pytest terminated in the unit tests).
    watchdogs: list = []
    monkeypatch.setattr(fencing, "_watch", lambda *args: watchdogs.append(args))

    async def crash(error: BaseException) -> None:
        pass

    app.crash = crash
    asyncio.run(faust_guarantees.on_fenced(app, RuntimeError("ProducerFenced")))
    assert at_exit == [fencing.restart_process]
    assert len(watchdogs) == 1, "a worker's fenced stop is watched"
    execs: list = []
    monkeypatch.setattr(fencing.sys, "orig_argv", ["python", "-m", "faust", "-A", "streams_app", "worker"])
    monkeypatch.setattr(fencing.os, "execv", lambda path, argv: execs.append((path, argv)))
    monkeypatch.delenv(fencing.REJOINS_ENV, raising=False)
    fencing.restart_process()
    assert execs == [(sys.executable, ["python", "-m", "faust", "-A", "streams_app", "worker"])]
    assert len(fencing.recent_rejoins()) == 1  # what the next process is told

    # fenced at every start: after MAX_REJOINS within the window it exits instead
    now = time.time()
    monkeypatch.setenv(fencing.REJOINS_ENV, ",".join(str(now - n) for n in range(fencing.MAX_REJOINS)))
    again = faust.App("kit-rejoin-again", autodiscover=False)
    again.in_worker = True
    state.attach(state.Guarantees(again))
    again.crash = crash
    at_exit.clear()
    asyncio.run(faust_guarantees.on_fenced(again, RuntimeError("ProducerFenced")))
    assert at_exit == []
    monkeypatch.setenv(fencing.REJOINS_ENV, f"{now - 2 * fencing.REJOIN_WINDOW_S},junk")
    assert fencing.recent_rejoins() == []
    with pytest.raises(ValueError, match="after_fence"):
        faust_guarantees.install(faust.App("kit-bad-fence", autodiscover=False), after_fence="retry")


def test_an_app_the_kit_was_not_installed_into_gets_empty_state():
    app = faust.App("kit-none", autodiscover=False)
    assert state.of(app).fixes == () and not state.of(app).gated and state.of(app) is state.of(app)


def test_a_worker_that_did_not_stop_cleanly_loses_its_local_state(tmp_path):
    """wipe-unclean-state: the marker of a running worker found at start means a crash."""
    tabledir = tmp_path / "v1" / "tables"
    (tabledir / "seen.db").mkdir(parents=True)
    wipe_unclean_state.on_worker_start(tabledir)  # first start: nothing to wipe, marked running
    assert (tabledir / "seen.db").exists() and (tmp_path / "v1" / "RUNNING").exists()
    wipe_unclean_state.on_worker_start(tabledir)  # the marker is still there: a crash
    assert not tabledir.exists()
    wipe_unclean_state.on_worker_stopped(tabledir)
    assert not (tmp_path / "v1" / "RUNNING").exists()


def test_the_wipe_wraps_this_app_s_start_and_stop_only(tmp_path):
    app = faust.App("kit-wipe", autodiscover=False, datadir=str(tmp_path))
    other = faust.App("kit-other", autodiscover=False, datadir=str(tmp_path / "other"))
    guarantees = state.attach(state.Guarantees(app, ("wipe-unclean-state",), exactly_once=True))
    wipe_unclean_state.install(guarantees)
    assert "on_first_start" in vars(app) and "on_first_start" not in vars(other)
    marker = Path(app.conf.tabledir).parent / wipe_unclean_state.CLEAN_STOP_MARKER
    asyncio.run(app.on_first_start())
    assert marker.exists()
    asyncio.run(app.on_shutdown())
    assert not marker.exists(), "a clean stop removes the marker"


def test_the_committed_fixes_page_is_what_the_docstrings_say():
    from faust_guarantees import docs

    assert docs.PAGE.read_text() == docs.render(), "run: python -m faust_guarantees.docs"


def test_a_full_stream_queue_does_not_block_deliveries_outside_recovery():
    """no-head-of-line-blocking: stock Faust awaits room in a full queue inside the one
    delivery loop of the consumer (every other stream waits); this app's queues take the
    record (the partition is paused at 80 % as before), except during table recovery."""
    from faust_guarantees.fixes import no_head_of_line_blocking

    app, other = faust.App("kit-hol", autodiscover=False), faust.App("kit-hol-other", autodiscover=False)
    no_head_of_line_blocking.install(state.Guarantees(app))

    async def scenario() -> None:
        stock, fixed = other.FlowControlQueue(maxsize=2), app.FlowControlQueue(maxsize=2)
        for queue in (stock, fixed):
            queue.put_nowait(1)
            queue.put_nowait(2)
        assert stock.full(), "stock: the conductor would await room here"
        assert not fixed.full()
        fixed.put_nowait(3)  # asyncio's own check: QueueFull for a full queue
        assert fixed.qsize() == 3
        app.in_recovery = True  # in recovery nothing is paused: block as stock
        assert fixed.full()

    asyncio.run(scenario())


def _fixed_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if getattr(getattr(cls, name, None), "_fixed", False)}


def test_the_fixes_change_only_the_app_they_are_installed_into():
    """The kit gives the app subclasses of its own (transport, consumer, consumer thread,
    producer and its buffer, transaction manager, table manager, recovery, router, tables)
    and fixes those: Faust's classes, and another app of the process, stay stock."""
    from faust.app.router import Router
    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import TransactionManager
    from faust.transport.drivers import aiokafka as driver
    from faust.transport.producer import ProducerBuffer

    app = faust.App("kit-ext", autodiscover=False, processing_guarantee="exactly_once")
    other = faust.App("kit-ext-other", autodiscover=False, processing_guarantee="exactly_once")
    faust_guarantees.install(app)
    app.Table("seen")
    parts = {
        driver.Consumer: app.consumer, driver.AIOKafkaConsumerThread: app.consumer._thread,
        driver.Producer: app.producer, ProducerBuffer: app.producer.buffer,
        TransactionManager: app.consumer.transactions, TableManager: app.tables,
        Recovery: app.tables.recovery, Router: app.router,
    }
    for upstream, part in parts.items():
        assert type(part).__bases__ == (upstream,) and _fixed_methods(type(part)), upstream
        assert not _fixed_methods(upstream), upstream
    assert {"force_commit", "_drain_messages", "_new_offset"} <= _fixed_methods(type(app.consumer))
    assert type(app.tables["seen"]).__bases__ == (faust.Table,)
    other.Table("seen")
    for part in (other.consumer, other.consumer._thread, other.producer, other.producer.buffer,
                 other.consumer.transactions, other.tables, other.tables.recovery, other.router):
        assert not _fixed_methods(type(part)) and type(part).__module__.startswith("faust."), part


def test_parts_the_app_built_before_the_kit_are_switched_to_its_fixed_classes():
    """A topic declared first builds the app's transport, a table its table manager: the
    kit switches them to the app's subclasses (they add methods, no state)."""
    from faust.tables.manager import TableManager

    app = faust.App("kit-late", autodiscover=False, processing_guarantee="exactly_once")
    app.topic("early")
    table = app.Table("late")
    assert type(app.tables) is TableManager and app.transport is not None
    faust_guarantees.install(app)
    assert "on_commit" in _fixed_methods(type(app.tables)) and not _fixed_methods(TableManager)
    assert type(app.transport).Consumer is type(app.consumer) and "force_commit" in _fixed_methods(type(app.consumer))
    assert "_verify_source_topic_partitions" in _fixed_methods(type(table))


def test_a_stop_waits_for_records_in_progress_only_so_long_and_then_skips_the_last_commit():
    """bounded-stop: Faust's stop waited without end for records an agent could not finish
    (a sink waiting out its database); now it gives up after stop_timeout, commits nothing
    more, and marks the stop unclean."""
    consumer = _ConsumerHoldingARecord()
    guarantees = _stop_with(consumer)
    assert guarantees.unclean_stop and consumer.commits >= 1
    assert guarantees.interventions[("bounded-stop", "stop-without-last-commit")] == 1


def test_a_stop_whose_last_commit_never_ends_goes_on_without_it():
    """bounded-stop: the outage matrix's stalled worker logged "Wait for streams..." after
    SIGTERM and ran 60 s more: the stop's commit (under at_least_once a producer flush) waited
    for a broker that did not answer. Its commit now has the stop's deadline too."""
    class CommitNobodyAnswers(_ConsumerHoldingARecord):
        async def commit(self) -> None:
            await asyncio.Event().wait()  # a flush no broker answers

    started = time.monotonic()
    guarantees = _stop_with(CommitNobodyAnswers())
    assert time.monotonic() - started < 2
    assert guarantees.unclean_stop
    assert guarantees.interventions[("bounded-stop", "stop-without-last-commit")] == 1


class _ConsumerHoldingARecord:
    """Faust's consumer at a stop, with a record an agent never acks."""
    _unacked_messages = {"held"}
    should_stop = False

    def __init__(self) -> None:
        self.commits = 0

    async def commit(self) -> None:
        self.commits += 1

    async def _wait_for_ack(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.05))

    def _clean_unacked_messages(self) -> None:
        pass

    async def commit_and_end_transactions(self) -> None:
        raise AssertionError("no last commit while records are in progress")


def _stop_with(consumer: _ConsumerHoldingARecord) -> state.Guarantees:
    """The app's stop-time wait (bounded-stop installed, stop_timeout 0.3 s) run on ``consumer``."""
    from faust_guarantees.fixes import bounded_stop

    async def stock(consumer, logger) -> None:
        raise AssertionError("not called at a stop")

    async def on_stop() -> None:
        pass

    app = SimpleNamespace(should_stop=True, _consumer_wait_empty=stock, on_stop=on_stop,
                          conf=SimpleNamespace(stream_wait_empty=True))
    guarantees = state.Guarantees(app, stop_timeout=0.3)
    bounded_stop.install(guarantees)
    asyncio.run(asyncio.wait_for(app._consumer_wait_empty(consumer, SimpleNamespace(info=lambda *a: None)), 5))
    return guarantees


@pytest.mark.parametrize("restarting", [False, True], ids=["stopping", "restarting"])
def test_a_worker_still_stopping_past_its_deadline_is_ended_with_what_its_tasks_wait_for(restarting, caplog):
    """bounded-stop: a worker process whose stop does not end (a flush, a thread, a task that
    never returns) is ended by a watchdog thread, which logs each task's innermost frames; a
    process waiting to exec itself again (a fenced or dependency restart) is left alone."""
    from faust_guarantees import fencing
    from faust_guarantees.fixes import bounded_stop

    async def a_flush_nobody_answers() -> None:
        await asyncio.Event().wait()

    ended = threading.Event()

    async def main() -> None:
        asyncio.get_running_loop().create_task(a_flush_nobody_answers())
        await asyncio.sleep(0)
        bounded_stop.watch_the_stop(SimpleNamespace(loop=asyncio.get_running_loop()), 0.2, end=ended.set)
        await asyncio.sleep(0.6)

    if restarting:
        assert fencing._restarting.acquire(blocking=False)
    try:
        with caplog.at_level(logging.ERROR):
            asyncio.run(main())
    finally:
        if restarting:
            fencing._restarting.release()
    assert ended.is_set() is not restarting
    if not restarting:
        assert "a_flush_nobody_answers" in caplog.text and "still stopping" in caplog.text


@pytest.mark.parametrize("stopped", [False, True], ids=["not-stopping", "stopping"])
def test_a_fenced_worker_whose_process_does_not_end_is_ended_by_the_watchdog(stopped):
    """CI on d4c0cec: the fenced worker's event loop closed while its consumer thread was in
    a rebalance; the interpreter waited for that thread and never ran the rejoin. The
    watchdog thread SIGTERMs a worker that has not begun its stop, then ends the process."""
    import asyncio as _asyncio
    from types import SimpleNamespace as _NS

    from faust_guarantees import fencing

    event = _asyncio.Event()
    if stopped:
        event.set()
    calls: list[str] = []
    fencing._watch_the_stop(_NS(_stopped=event), rejoin=True, grace=0.01, deadline=0.02,
                            end=lambda: calls.append("end"), terminate=lambda: calls.append("sigterm"))
    assert calls == (["end"] if stopped else ["sigterm", "end"])


def test_a_worker_whose_partitions_all_wait_for_queue_room_resumes_as_soon_as_one_drains():
    """direct-delivery: stock Faust sleeps a second in _wait_next_records once every
    partition is paused by a full stream queue, however soon a queue drains; with the fix
    the delivery loop waits for Consumer.on_buffer_drop instead."""
    import asyncio

    from faust.types import TP

    from faust_guarantees.fixes.direct_delivery import (
        all_paused_by_full_queues,
        wait_for_a_resume,
    )

    async def scenario() -> None:
        tp = TP("kit-resume.raw", 0)
        stock = faust.App("kit-resume-stock", autodiscover=False).consumer
        stock._set_active_tps({tp})
        stock.on_buffer_full(tp)
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        stock.sleep = sleep
        stock.not_waiting_next_records = asyncio.Event()
        assert await stock._wait_next_records(5.0) == ({}, set())
        assert slept == [1], "stock: sleeps a second, with records perhaps waiting"

        app = faust.App("kit-resume", autodiscover=False)
        faust_guarantees.install(app, ["direct-delivery"])
        consumer = app.consumer
        consumer._set_active_tps({tp})
        assert not all_paused_by_full_queues(consumer)
        consumer.on_buffer_full(tp)
        assert all_paused_by_full_queues(consumer)
        waiting = asyncio.ensure_future(wait_for_a_resume(consumer, timeout=60.0))
        await asyncio.sleep(0)
        assert not waiting.done()
        consumer.on_buffer_drop(tp)
        await asyncio.wait_for(waiting, 5.0)  # woken by the drop, long before its 60 s
        assert not all_paused_by_full_queues(consumer)

    asyncio.run(scenario())
