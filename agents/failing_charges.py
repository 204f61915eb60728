"""What the sink knows of the charges its target failed: an outage, or a record it never takes?

A record the target never takes while it takes the others (an API that answers 500 to one
account, a database trigger that raises for one row) looks like an outage. Retried as one,
it held the sink's batch, and every later charge, for good. :class:`FailingCharges` keeps
the evidence that tells them apart, across tries and batches, and the records the sink set
aside meanwhile (held through the kit: faust_guarantees/holding.py). Used by agents/sink.py,
which says how; decision 0054.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from faust.types import EventT

from faust_guarantees.holding import Held, Holdings

#: Most records the sink sets aside (unacked) at once; past it, a batch waits as in an outage.
SET_ASIDE_MAX = 100
#: Failures of one record, each after other charges went through, before it can be given up.
GIVE_UP_TRIES = 3
#: A failure this soon after another charge went through also counts as evidence: the target
#: was working (the record's last tries may come once the stream has gone quiet).
EVIDENCE_WINDOW_S = 30.0


@dataclass
class _Failure:
    first: float
    last: float
    count: int
    error: str
    next_try: float
    #: failures with another charge gone through since the previous one: the target works
    evidence: int = 0


class FailingCharges:
    """What the sink knows of charges its target failed, across tries and batches.

    A failure is not the record's fault until there is evidence that the target works:
    the record failed again GIVE_UP_TRIES times, each after some other charge went through
    since its previous failure or within EVIDENCE_WINDOW_S, ``give_up_after`` seconds or
    more after its first, the last of them with such evidence too. Then it is given up
    (dead-lettered). An outage (nothing goes through), even one that begins after other
    charges, or a quiet stream never gives one up (the window is at most half of
    ``give_up_after``: a record whose first failure came after the last charge cannot have
    fresh evidence that late). Until then it is tried again, after the records that never
    failed (so that the evidence comes); once set aside, no sooner than its backoff (1 s doubling to 30 s)
    while other records keep the sink busy. A record of a batch that failed as a whole
    (one database transaction) is a *suspect*: tried alone next time, not yet failed
    itself. Records are keyed by ``id()``: the sink holds every one it tracks (its batch,
    or :attr:`set_aside`) and forgets it once it is done (:meth:`forget`).
    """

    def __init__(self, give_up_after: float, *, set_aside_max: int = SET_ASIDE_MAX,
                 clock: Callable[[], float] = time.monotonic, holdings: Holdings | None = None) -> None:
        self.give_up_after = give_up_after
        self.window = min(EVIDENCE_WINDOW_S, give_up_after / 2)
        self.set_aside_max = set_aside_max
        self.clock = clock
        self.failures: dict[int, _Failure] = {}
        self.suspects: set[int] = set()
        #: records left unacked while the sink went on (tried again with a next batch), held
        #: for the kit to release at a revocation or a stop (faust_guarantees/holding.py)
        self.holdings = holdings if holdings is not None else Holdings()
        self._held: Held | None = None
        self.charged_at = -math.inf

    @property
    def set_aside(self) -> list[EventT]:
        return list(self._held.events) if self._held is not None else []

    def _set_aside(self, events: list[EventT]) -> None:
        if self._held is not None:
            self.holdings.close(self._held)
        self._held = self.holdings.open(events) if events else None

    def charged(self, event: EventT) -> None:
        self.forget([event])
        self.charged_at = self.clock()

    def suspect(self, events: Iterable[EventT]) -> None:
        """``events`` failed together (one transaction): try each alone next time."""
        self.suspects.update(id(event) for event in events)

    def failed(self, event: EventT, error: BaseException) -> str | None:
        """Note a failure of ``event``'s charge; the reason to give it up, or None to try again."""
        now = self.clock()
        failure = self.failures.get(id(event))
        evident = False
        if failure is None:
            failure = self.failures[id(event)] = _Failure(now, now, 0, "", now)
        elif self.charged_at > failure.last or now - self.charged_at <= self.window:
            failure.evidence += 1
            evident = True
        failure.count += 1
        failure.last = now
        failure.error = str(error)
        failure.next_try = now + min(30.0, 2.0 ** (failure.count - 1))
        if (self.give_up_after > 0 and evident and failure.evidence >= GIVE_UP_TRIES
                and now - failure.first >= self.give_up_after):
            return (f"its charge failed {failure.count} times over {now - failure.first:.0f} s, "
                    f"{failure.evidence} of them after other charges went through; last: {failure.error}")
        return None

    def failed_alone(self, event: EventT) -> bool:
        return id(event) in self.failures

    def failing(self, event: EventT) -> bool:
        """Whether ``event``'s charge failed, alone or in its batch: it is tried alone."""
        return id(event) in self.failures or id(event) in self.suspects

    def in_order(self, items: Iterable[Any], event_of: Callable[[Any], EventT] = lambda item: item) -> list[Any]:
        """``items``: those that never failed first, then the suspects, then those that failed
        alone (each part in its order)."""
        def rank(item: Any) -> int:
            key = id(event_of(item))
            return 2 if key in self.failures else 1 if key in self.suspects else 0

        return sorted(items, key=rank)

    def resume(self, batch: list[EventT], generation: int, *, quiet: bool) -> list[EventT]:
        """The records set aside that are due (all of them when ``quiet``: nothing waits
        behind ``batch``), followed by ``batch``. Records delivered before the last rebalance
        are dropped: they come again from the committed offset."""
        now = self.clock()
        if self._held is not None and self._held.released.is_set():
            self.forget(self._held.events)  # released at a revocation or a stop
            self._held = None
        set_aside = self.set_aside
        stale = [event for event in set_aside if event.message.generation_id != generation]
        self.forget(stale)
        current = [event for event in set_aside if event.message.generation_id == generation]
        due = [event for event in current
               if quiet or id(event) not in self.failures or self.failures[id(event)].next_try <= now]
        self._set_aside([event for event in current if not any(event is d for d in due)])
        return due + batch

    def set_aside_if_waiting(self, unanswered: list[EventT], *, more_waiting: bool) -> bool:
        """Set ``unanswered`` aside when every one of them failed alone, records wait behind
        them, and there is room; whether it did."""
        if (not unanswered or not more_waiting or not all(id(e) in self.failures for e in unanswered)
                or len(self.set_aside) + len(unanswered) > self.set_aside_max):
            return False
        self._set_aside(self.set_aside + unanswered)
        return True

    def forget(self, events: Iterable[EventT]) -> None:
        for event in events:
            self.failures.pop(id(event), None)
            self.suspects.discard(id(event))
