"""What the kit keeps for one app, in one object (not on Faust's or aiokafka's objects).

:func:`faust_guarantees.install` creates it; the fixes and the processing helpers find it
with :func:`of`. The fixes replace methods on the app's own subclasses of Faust's classes
(:mod:`faust_guarantees.classes`); a fixed method reaches its app's state through
``self.app``.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from .classes import AppClasses, standalone
from .gate import CommitGate
from .holding import Holdings
from .memory import ProcessedMemory

log = logging.getLogger(__name__)


class Guarantees:
    """The installed fixes of one app, and the state they share with its agents."""

    def __init__(self, app: Any, fixes: tuple[str, ...] = (), *, exactly_once: bool = False,
                 at_most_once: bool = False, producer_idempotence: bool = False,
                 stop_timeout: float = 15.0, classes: AppClasses | None = None,
                 after_fence: str = "rejoin", request_timeout: float = 30.0) -> None:
        self.app = app
        #: The app's own subclasses of the Faust classes the fixes change (classes.py);
        #: for no app (unit tests), subclasses no app uses.
        self.classes = classes if classes is not None else standalone()
        self.fixes = fixes
        self.exactly_once = exactly_once
        self.at_most_once = at_most_once
        #: Every producer of the app idempotent, not only exactly_once's (producer.py).
        self.producer_idempotence = producer_idempotence
        #: How long a stop waits for the records in progress (bounded-stop).
        self.stop_timeout = stop_timeout
        #: What a fenced worker does once stopped: "rejoin" (start again in this process)
        #: or "exit" (its supervisor restarts it). See fencing.py.
        self.after_fence = after_fence
        #: The longest wait for the answer to one Kafka request (bounded-kafka-requests).
        self.request_timeout = request_timeout
        #: Why this worker's stop was not clean (records left in progress), if it was not.
        self.unclean_stop: str | None = None
        self.gate = CommitGate()
        self.memory = ProcessedMemory()
        #: Records the stages hold, unacked, for a dependency (holding.py): released at a
        #: revocation or a stop (held-records-released).
        self.holdings = Holdings()
        #: Topics whose stage sends nothing to Kafka but dead letters (its effects are outside
        #: Kafka and idempotent): a hole in them does not hold a transaction (whole-transactions).
        self.dead_letters_only: set[str] = set()
        #: How often each fix did something stock Faust would not have: (fix, action) -> n.
        self.interventions: Counter[tuple[str, str]] = Counter()
        #: Why this worker was fenced (fenced-restart), once it was.
        self.fenced_by: str | None = None
        self._intervention_listeners: list[Callable[[str, str], None]] = []
        self._fence_listeners: list[Callable[[str], None]] = []

    def enabled(self, fix: str) -> bool:
        return fix in self.fixes

    @property
    def gated(self) -> bool:
        """Agents must take the commit gate (exactly_once with commit-gate)."""
        return self.exactly_once and self.enabled("commit-gate")

    @property
    def fenced(self) -> bool:
        """This worker was fenced: it is stopping, and its stop is not clean."""
        return self.fenced_by is not None

    def intervened(self, fix: str, action: str = "applied") -> None:
        """A fix did something stock Faust would not have: counted, and told to listeners
        (an app's metrics)."""
        self.interventions[fix, action] += 1
        for listener in self._intervention_listeners:
            listener(fix, action)

    def on_intervention(self, listener: Callable[[str, str], None]) -> None:
        self._intervention_listeners.append(listener)

    def on_fence(self, listener: Callable[[str], None]) -> None:
        """``listener(reason)`` runs once, when the worker learns it was fenced (e.g. health)."""
        self._fence_listeners.append(listener)

    def mark_fenced(self, reason: str) -> bool:
        """Record the fence; False if it was recorded before."""
        if self.fenced_by is not None:
            return False
        self.fenced_by = reason
        for listener in self._fence_listeners:
            listener(reason)
        return True


_BY_APP: weakref.WeakKeyDictionary[Any, Guarantees] = weakref.WeakKeyDictionary()
#: Apps that cannot be weakly referenced (test doubles): kept alive with their state, so
#: their id is never reused while it is a key.
_PINNED: dict[int, tuple[Any, Guarantees]] = {}


def of(app: Any) -> Guarantees:
    """The app's guarantees; for an app the kit was not installed into (another app in the
    same process meets the shared patched classes), an empty one: no fix enabled."""
    try:
        state = _BY_APP.get(app)
    except TypeError:
        pinned = _PINNED.get(id(app))
        return pinned[1] if pinned is not None else attach(Guarantees(app))
    return state if state is not None else attach(Guarantees(app))


def attach(state: Guarantees) -> Guarantees:
    try:
        _BY_APP[state.app] = state
    except TypeError:
        _PINNED[id(state.app)] = (state.app, state)
    return state
