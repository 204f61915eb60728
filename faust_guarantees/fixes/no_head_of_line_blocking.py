"""The no-head-of-line-blocking fix.

Every guarantee (liveness): when a stream's queue is full, Faust's conductor awaits room for
the next record of that stream (transport/conductor.py on_message: ``await chan.put`` for a
full queue), inside the consumer's one delivery loop: until that stream's agent takes a
record, no record of any other topic or partition is delivered to any agent. Faust pauses
fetching a partition whose queue is 80 % full (Consumer.on_buffer_full), but records already
fetched still go to the full queue, and one fetch brings up to max_partition_fetch_bytes per
partition (broker_max_poll_records is unlimited by default): one agent that waits (a sink
whose database is down) stops every agent of the worker. Seen: with the sink's database down
and 10,000 payments sent, 1,578 of them were never deduplicated or applied in 120 s. Fix: this
app's queues are never "full" outside table recovery, so records already fetched go in
without waiting; the pause at 80 % still stops the fetching, which bounds the overshoot to
records the client had fetched (memory it held anyway). During recovery, when Faust pauses
nothing, queues block as stock. Installed per app (App.FlowControlQueue, an extension point),
not on Faust's classes.

Regression test: tests/integration/test_sink_outage.py::test_a_worker_restarted_during_the_outage_with_a_backlog_for_the_sink_still_runs_the_other_stages.
"""

from __future__ import annotations

from typing import Any

from mode.utils.queues import ThrowableQueue

from ..state import Guarantees

NAME = "no-head-of-line-blocking"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.app.base:App.FlowControlQueue": "9451c49351ae",
    "faust.transport.consumer:Consumer.on_buffer_full": "c8961679e0bc",
    "faust.transport.conductor:ConductorCompiler.build": "837cf521368c",
}


class NeverFullOutsideRecovery(ThrowableQueue):
    """A stream queue that takes every record delivered to it, except during table recovery;
    its partitions are paused at 80 % (Faust's pressure callbacks), as before."""

    def __init__(self, *args: Any, app: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app = app

    def full(self) -> bool:
        return self._app.in_recovery and super().full()


def install(guarantees: Guarantees) -> None:
    app = guarantees.app

    def FlowControlQueue(maxsize: int | None = None, *, clear_on_resume: bool = False) -> ThrowableQueue:
        # App.FlowControlQueue, with the queue class above.
        return NeverFullOutsideRecovery(maxsize=maxsize, flow_control=app.flow_control,
                                        clear_on_resume=clear_on_resume, app=app)

    app.FlowControlQueue = FlowControlQueue
