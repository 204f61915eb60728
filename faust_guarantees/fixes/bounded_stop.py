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
Installed per app (the app's own method), not on Faust's class; the wait is Faust's loop
with a deadline (Faust's own swallows a cancellation in Consumer._wait_for_ack).

Regression test: tests/integration/test_sink_outage.py::test_sigterm_during_a_sink_outage_stops_the_worker_and_loses_nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

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
}


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


async def _wait_empty(consumer: Any, timeout: float) -> bool:
    """Faust's Consumer.wait_empty loop (commit what is acked, wait for the next ack), for
    ``timeout`` seconds at most; True once every record delivered is acked. Not a task to
    cancel: Faust's wait swallows a cancellation in Consumer._wait_for_ack and loops on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while consumer._unacked_messages and not consumer.should_stop:
        await consumer.commit()
        if not consumer._unacked_messages:
            break
        if loop.time() >= deadline:
            return False
        await consumer._wait_for_ack(timeout=1.0)
        consumer._clean_unacked_messages()
    return True
