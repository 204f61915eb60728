"""Kafka delivery guarantees that hold, for any faust-streaming app.

Stock faust-streaming 0.15 loses or repeats records under crashes, rebalances and
restarts in ways its documentation does not say (each fix's module in
:mod:`faust_guarantees.fixes` tells one: what stock does, what breaks, the upstream
report, the fix). Two lines put the fixes into an app::

    import faust, faust_guarantees

    app = faust.App("orders", broker="kafka://localhost:9092", processing_guarantee="exactly_once")
    guarantees = faust_guarantees.install(app)

Then every agent that must not lose or repeat an event processes it through the
processing discipline (:mod:`faust_guarantees.processing`: acks after the work, records
delivered twice skipped, the exactly_once commit gate).

The fixes replace methods on the app's own subclasses of Faust's classes
(:mod:`faust_guarantees.classes`: another app of the process keeps stock Faust; two
process-wide exceptions are named there), marked and fingerprinted
(:mod:`faust_guarantees.guard`); their state lives per app in
:class:`~faust_guarantees.state.Guarantees`, never in module globals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from . import classes, producer, state
from .fencing import fenced, is_fenced, on_fenced
from .fixes import BY_NAME, MODULES, description
from .sensors import BatchSensor
from .guard import VERIFIED_VERSIONS, UnverifiedUpstream, current_fingerprints, fingerprint, unverified
from .state import Guarantees

log = logging.getLogger(__name__)

#: Every fix by name, with its description (its module's docstring), in order.
FIXES: dict[str, str] = {module.NAME: description(module) for module in MODULES}

__all__ = [
    "FIXES", "BatchSensor", "Guarantees", "UnverifiedUpstream", "VERIFIED_VERSIONS", "current_fingerprints", "fenced",
    "fingerprint", "install", "is_fenced", "on_fenced", "unverified",
]


def install(
    app: Any, fixes: Iterable[str] | None = None, *, guarantee: str | None = None,
    producer_idempotence: bool = True, on_unverified: str = "fail", stop_timeout: float = 15.0,
    after_fence: str = "rejoin", request_timeout: float = 30.0,
) -> Guarantees:
    """Install the fixes into ``app`` (before its worker starts); return its :class:`Guarantees`.

    ``fixes``: the names to install (default: all; :data:`FIXES` lists them); each is
    installed only under the guarantee it is for. ``guarantee``: the app's
    ``processing_guarantee`` (default), or ``"at_most_once"`` for an app that commits each
    event's offset before processing it (Faust runs it at_least_once).
    ``producer_idempotence``: every producer idempotent, not only exactly_once's.
    ``on_unverified``: ``"fail"`` (default) raises :class:`UnverifiedUpstream` when the
    installed faust-streaming or aiokafka is not the code the fixes were verified on, naming
    the fixes to re-verify, before anything is changed; ``"warn"`` logs it and goes on.
    ``stop_timeout``: how long a stop waits for the records in progress (bounded-stop).
    ``after_fence``: what a worker fenced under exactly_once does once it stopped (unclean):
    ``"rejoin"`` (default) starts it again in the same process (same command line, pid and
    output), ``"exit"`` leaves the restart to its supervisor (fenced-restart).
    ``request_timeout``: the longest wait for a broker's answer to one request of the
    app's producers and of its consumer's fetches (bounded-kafka-requests).
    """
    enabled = tuple(FIXES) if fixes is None else tuple(fixes)
    unknown = [name for name in enabled if name not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown fix {', '.join(unknown)}; the fixes are: {', '.join(FIXES)}")
    if after_fence not in {"rejoin", "exit"}:
        raise ValueError(f"after_fence must be 'rejoin' or 'exit', not {after_fence!r}")
    if not request_timeout > 0:
        raise ValueError(f"request_timeout must be a positive number of seconds, not {request_timeout!r}")
    if on_unverified not in {"fail", "warn"}:
        raise ValueError(f"on_unverified must be 'fail' or 'warn', not {on_unverified!r}")
    if guarantee is None:
        guarantee = str(getattr(app.conf.processing_guarantee, "value", app.conf.processing_guarantee))
    problems = unverified(enabled)
    if problems:
        error = UnverifiedUpstream(problems)
        if on_unverified == "fail":
            raise error
        log.warning("%s", error)
    guarantees = state.attach(Guarantees(
        app, enabled, exactly_once=guarantee == "exactly_once", at_most_once=guarantee == "at_most_once",
        producer_idempotence=producer_idempotence, stop_timeout=stop_timeout,
        classes=classes.build(app), after_fence=after_fence, request_timeout=request_timeout,
    ))
    producer.install(guarantees)

    async def forget_revoked(sender: object, revoked: set[Any], **kwargs: object) -> None:
        guarantees.memory.forget(revoked)  # another worker may redo their uncommitted work

    app.on_partitions_revoked.connect(forget_revoked)
    for module in MODULES:
        if module.NAME in enabled and module.ONLY in (None, guarantee):
            module.install(guarantees)
    log.info("faust fixes enabled: %s", ", ".join(enabled) or "none (stock Faust)")
    return guarantees
