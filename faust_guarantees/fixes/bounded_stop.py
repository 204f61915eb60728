"""The bounded-stop fix.

Every guarantee (liveness): on SIGTERM Faust's App waits until every record delivered to
an agent is acked before it makes the last commit (App._stop_consumer ->
Consumer.wait_empty), with no time limit. A record that cannot be finished then holds
the stop forever: a sink waiting out its database's outage (records neither acked nor
dead-lettered, as they must be), or an agent that crashed with records in hand. Seen: a
worker sent SIGTERM while the sink's PostgreSQL was down was still running 90 s later,
until the database came back. Acking those records to let the stop go on would commit
past them (lost). Fix: at a stop (not at a revocation), the wait is bounded
(``stop_timeout`` of :func:`faust_guarantees.install`, 15 s by default); after it the stop
goes on WITHOUT the last commit: the records in progress go to the partitions' next owner
(under exactly_once their open transactions are aborted), and the stop is marked unclean,
so the restart rebuilds local table state from the changelog (wipe-unclean-state).
The stop's other waits have no limit either: its last commit (under at_least_once Faust
flushes the producer first, and a partition whose leader does not answer holds the flush),
the producer's flush and stop, the consumer thread's end. Seen in the outage matrix: a
worker whose pipeline had stalled logged "Wait for streams..." after SIGTERM and was still
running 60 s later. So the last commit has the same deadline, and a worker process still
running :data:`STOP_MARGIN_S` after that deadline logs what each of its tasks is waiting for
and exits with status 1 (unless it made its last commit, the RUNNING marker stays and the
next start restores the tables from the changelog); a process waiting to start itself
again (a fenced or dependency restart) is left to it.
Installed per app (the app's own methods), not on Faust's class; the wait is Faust's loop
with a deadline (Faust's own swallows a cancellation in Consumer._wait_for_ack).

Regression tests:
tests/integration/test_sink_outage.py::test_sigterm_during_a_sink_outage_stops_the_worker_and_loses_nothing;
tests/unit/test_kit.py (a last commit that never ends; a worker still stopping past its deadline).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import fencing
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "bounded-stop"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.app.base:App._stop_consumer": "55854a5de12c",
    "faust.app.base:App._consumer_wait_empty": "6bc313c48c06",
    "faust.transport.consumer:Consumer.wait_empty": "e4662fe24f09",
    "faust.transport.consumer:Consumer._wait_for_ack": "d9c9337d4af8",
    "faust.transport.consumer:Consumer._clean_unacked_messages": "11be2587e71c",
    "faust.app.base:App.on_stop": "bfe5a933defb",
    "mode.services:Service.stop": "e17cd2b6bd01",
}

#: How long past ``stop_timeout`` a stopping worker process may take to end.
STOP_MARGIN_S = 30.0


def install(guarantees: Guarantees) -> None:
    app = guarantees.app
    stock = app._consumer_wait_empty

    async def _consumer_wait_empty(consumer: Any, logger: Any) -> None:
        if not app.should_stop or not app.conf.stream_wait_empty:
            await stock(consumer, logger)  # a revocation: as stock (its commit covers what was processed)
            return
        logger.info("Wait for streams...")
        if await _wait_empty(consumer, guarantees.stop_timeout):
            await consumer.commit_and_end_transactions()  # stock's last step
            return
        in_progress = len(consumer._unacked_messages)
        guarantees.unclean_stop = f"{in_progress} records still in progress at the stop"
        guarantees.intervened(NAME, "stop-without-last-commit")
        log.warning(
            "bounded-stop: %d records still in progress %.0f s into the stop (e.g. a sink waiting for "
            "its database): stopping without the last commit; they go to the partitions' next owner, "
            "and the stop is marked unclean", in_progress, guarantees.stop_timeout,
        )

    app._consumer_wait_empty = _consumer_wait_empty
    stock_on_stop = app.on_stop

    async def on_stop() -> None:
        if getattr(app, "in_worker", False):  # a worker process; not an app inside a test
            watch_the_stop(app, guarantees.stop_timeout + STOP_MARGIN_S)
        await stock_on_stop()

    app.on_stop = on_stop


async def _wait_empty(consumer: Any, timeout: float) -> bool:
    """Faust's Consumer.wait_empty loop (commit what is acked, wait for the next ack), for
    ``timeout`` seconds at most; True once every record delivered is acked. Not a task to
    cancel: Faust's wait swallows a cancellation in Consumer._wait_for_ack and loops on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while consumer._unacked_messages and not consumer.should_stop:
        try:
            await asyncio.wait_for(consumer.commit(), max(deadline - loop.time(), 0.1))
        except asyncio.TimeoutError:
            log.warning("bounded-stop: the stop's commit did not end within %.0f s (a broker that does "
                        "not answer?)", timeout)
            return False
        if not consumer._unacked_messages:
            break
        if loop.time() >= deadline:
            return False
        await consumer._wait_for_ack(timeout=1.0)
        consumer._clean_unacked_messages()
    return True


def watch_the_stop(app: Any, deadline: float, end: Callable[[], None] | None = None) -> threading.Thread:
    """A daemon thread (the event loop may be what is stuck): ``deadline`` seconds from now,
    if the process still runs and is not restarting itself (:func:`fencing.restart_process`
    waits before its exec), log every task's stack and ``end`` (default: exit status 1)."""
    def watch() -> None:
        time.sleep(deadline)
        if fencing.restarting():
            return
        log.error("bounded-stop: the worker is still stopping %.0f s after its stop began; exiting now "
                  "(status 1). What its tasks wait for:\n%s", deadline, describe_tasks(app.loop))
        (end or (lambda: os._exit(1)))()

    thread = threading.Thread(target=watch, name="bounded-stop-watchdog", daemon=True)
    thread.start()
    return thread


def describe_tasks(loop: asyncio.AbstractEventLoop, limit: int = 12) -> str:
    """Every unfinished task of ``loop`` as its innermost ``limit`` frames, alike ones counted
    once; read from another thread (best effort: the set may change while it is read)."""
    for _ in range(3):
        try:
            tasks = [t for t in list(asyncio.all_tasks(loop)) if not t.done()]
            break
        except RuntimeError:  # the loop's task set changed while it was copied
            continue
    else:
        return "  (the tasks could not be read)"
    stacks: collections.Counter[str] = collections.Counter()
    for task in tasks:
        frames = task.get_stack()[-limit:]  # outermost first: the innermost are what it waits on
        stacks["".join(f"    {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}\n" for f in frames)] += 1
    return "\n".join(f"  {count} task(s):\n{stack}" for stack, count in stacks.most_common())
