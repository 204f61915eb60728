"""The held-records-released fix.

Every guarantee (liveness): at a revocation Faust's App waits, with no time limit, until
every record delivered to an agent is acked (App._on_partitions_revoked ->
App._consumer_wait_empty -> Consumer.wait_empty). A stage that waits out a dependency's
outage holds its records unacked, as it must (acked, a commit would pass them; dead-lettered,
valid records would leave the pipeline): the rebalance then waits for the dependency, and
with it every worker of the group, whose partitions stay unassigned. Seen: a worker joining
while the sink's PostgreSQL was down; no new payment was applied by any stage for 90 s, and
the rebalance failed again at the next one. Fix: a stage registers the records it holds
(faust_guarantees/holding.py, ``Holdings.hold``); at a revocation or a stop, before Faust's
wait, the kit lets a try in progress end, ends the stage's waits (``Released``) and takes
its records out of the consumer's unacked set without an ack. No commit passes them
(exact-gaps), so the partitions' next owner (or this worker again) delivers them from the
committed offset. Under exactly_once a record released past others processed is a hole;
for a topic whose stage sends only dead letters to Kafka, the hole does not hold the
transaction (whole-transactions).

Regression tests: tests/unit/test_holding.py (a release ends the waits, lets the try
finish, leaves records unacked, and Faust's wait goes on);
tests/integration/test_sink_outage.py::test_a_rebalance_during_a_sink_outage_does_not_stop_the_other_stages.
"""

from __future__ import annotations

import logging
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "held-records-released"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.app.base:App._on_partitions_revoked": "d5c895bbe57d",
    "faust.app.base:App._consumer_wait_empty": "6bc313c48c06",
    "faust.transport.consumer:Consumer.wait_empty": "e4662fe24f09",
}


def install(guarantees: Guarantees) -> None:
    app = guarantees.app
    inner = app._consumer_wait_empty

    async def _consumer_wait_empty(consumer: Any, logger: Any) -> None:
        if len(guarantees.holdings):
            released = await guarantees.holdings.release_all(consumer)
            if released:
                guarantees.intervened(NAME, "released")
                log.info("held-records-released: %d records held for a dependency released unacked at a %s; "
                         "they come again from the committed offset", released,
                         "stop" if app.should_stop else "revocation")
        await inner(consumer, logger)

    app._consumer_wait_empty = _consumer_wait_empty
