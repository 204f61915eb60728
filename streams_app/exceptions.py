"""Errors of the application, one small class per broken condition.

Every message says what was received and what to change, so a user reading a
start-up failure knows the fix without opening the code.
"""

from __future__ import annotations

import faust_guarantees.processing as kit


class StreamsAppError(Exception):
    """Root of every error this project raises on purpose."""


class SettingsError(StreamsAppError):
    """One or more settings are invalid; the message lists each with its fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid settings:\n{lines}")


class PartitionsAdded(StreamsAppError):
    """A pipeline topic or changelog got more partitions while the worker ran: the keyed
    state would be looked up in the wrong partitions (streams_app.application)."""


class UnverifiedUpstream(SettingsError):
    """The installed faust-streaming or aiokafka is not the code the Faust fixes were
    verified on: each problem names the fixes to re-verify (faust_guarantees.guard)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.args = ("the Faust fixes were not verified on the installed libraries:\n"
                     + "\n".join(f"  - {p}" for p in problems)
                     + "\nRe-verify them (make matrix; pytest tests/integration/test_faust_fixes.py) and "
                     "record the new fingerprints (faust_guarantees.current_fingerprints()); "
                     "or leave those fixes out (FAUST_FIXES=...); or run anyway with "
                     "FAUST_FIXES_UNVERIFIED=warn.",)


class RejectedRecord(StreamsAppError, kit.RejectedRecord):
    """A record the pipeline refuses as it is: it goes to the DLQ, no traceback logged
    (``code``, ``reason``: see :class:`faust_guarantees.processing.RejectedRecord`)."""


class InvalidPayment(RejectedRecord):
    """A record is not a valid payment event (on the raw topic or any internal one)."""


class SinkError(StreamsAppError):
    """The external side effect could not be performed (database unreachable...)."""


class Unavailable(StreamsAppError, kit.Unavailable):
    """A system the stage depends on is down: the record is not the problem. The batch is
    neither dead-lettered nor acked; the stage waits (outside the exactly_once commit gate,
    so the other stages keep committing) and tries the same records again (agents/sink.py)."""


class ChargeGivenUp(RejectedRecord):
    """The sink's target kept failing one record's charge while it took others (agents/failing_charges.py
    ``FailingCharges``): dead-lettered with the target's last answer, to replay once fixed."""

    def __init__(self, reason: str) -> None:
        super().__init__("effect_failed", reason)


class ChargeRefused(StreamsAppError):
    """The sink's database refused a statement (a constraint, a data error, bad SQL).

    Not a SinkError on purpose: an outage is retried until it ends, a refusal
    never is, because trying again cannot change the answer.
    """
