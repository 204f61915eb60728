"""The sink's evidence that a charge fails for the record, not for an outage (agents/failing_charges.py)."""

from __future__ import annotations

from types import SimpleNamespace

from agents.failing_charges import EVIDENCE_WINDOW_S, GIVE_UP_TRIES, FailingCharges


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _event(generation: int = 1) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(generation_id=generation))


def test_a_record_failing_while_others_are_charged_is_given_up_after_the_time_and_tries() -> None:
    clock = Clock()
    failing = FailingCharges(60.0, clock=clock)
    poison, other = _event(), _event()
    step = EVIDENCE_WINDOW_S + 10
    assert failing.failed(poison, RuntimeError("500")) is None
    for _ in range(GIVE_UP_TRIES - 1):
        clock.now += step
        failing.charged(other)
        assert failing.failed(poison, RuntimeError("500")) is None
    clock.now += step
    assert failing.failed(poison, RuntimeError("500")) is None  # no charge since its last failure, nor lately
    clock.now += 1
    failing.charged(other)
    reason = failing.failed(poison, RuntimeError("500 again"))
    assert reason is not None and "500 again" in reason and f"{GIVE_UP_TRIES} of them" in reason


def test_not_before_the_time_however_many_failures() -> None:
    clock = Clock()
    failing = FailingCharges(60.0, clock=clock)
    poison, other = _event(), _event()
    failing.failed(poison, RuntimeError("500"))
    for _ in range(20):
        clock.now += 2
        failing.charged(other)
        assert failing.failed(poison, RuntimeError("500")) is None
    clock.now += 30
    failing.charged(other)
    assert failing.failed(poison, RuntimeError("500")) is not None


def test_nothing_is_given_up_while_nothing_is_charged_however_long() -> None:
    clock = Clock()
    failing = FailingCharges(60.0, clock=clock)
    records = [_event() for _ in range(3)]
    for _ in range(50):
        clock.now += 100
        for record in records:
            assert failing.failed(record, RuntimeError("connection refused")) is None


def test_a_charge_long_before_the_failures_is_no_evidence() -> None:
    clock = Clock()
    failing = FailingCharges(10.0, clock=clock)
    other, poison = _event(), _event()
    failing.charged(other)
    clock.now += EVIDENCE_WINDOW_S + 1
    for _ in range(10):
        clock.now += 10
        assert failing.failed(poison, RuntimeError("down")) is None


def test_failures_soon_after_a_charge_are_evidence_though_none_came_between() -> None:
    clock = Clock()
    failing = FailingCharges(5.0, clock=clock)  # window 2.5 s
    other, poison = _event(), _event()
    failing.failed(poison, RuntimeError("500"))  # failing before the charges: the target works
    reasons = []
    for _ in range(GIVE_UP_TRIES):
        clock.now += 2
        failing.charged(other)
        clock.now += 1
        reasons.append(failing.failed(poison, RuntimeError("500")))
    assert reasons[:-1] == [None] * (GIVE_UP_TRIES - 1) and reasons[-1] is not None


def test_an_outage_after_evidence_gives_nothing_up() -> None:
    """Evidence gathered in the first seconds of an outage that began after a charge (the
    privileges revoked mid-run) must not give records up once the time has passed."""
    clock = Clock()
    failing = FailingCharges(60.0, clock=clock)
    other, record = _event(), _event()
    failing.charged(other)
    for _ in range(100):
        clock.now += 1
        assert failing.failed(record, RuntimeError("permission denied")) is None


def test_zero_never_gives_up() -> None:
    clock = Clock()
    failing = FailingCharges(0.0, clock=clock)
    poison, other = _event(), _event()
    failing.failed(poison, RuntimeError("500"))
    failing.charged(other)
    for _ in range(10):
        clock.now += 1000
        assert failing.failed(poison, RuntimeError("500")) is None


def test_records_that_never_failed_are_tried_first_each_part_in_its_order() -> None:
    failing = FailingCharges(60.0)
    a, b, c, d = (_event() for _ in range(4))
    failing.failed(a, RuntimeError("x"))
    failing.failed(c, RuntimeError("x"))
    assert failing.in_order([a, b, c, d]) == [b, d, a, c]
    failing.charged(a)
    assert failing.in_order([a, b, c, d]) == [a, b, d, c]
    failing.suspect([b])
    assert failing.in_order([a, b, c, d]) == [a, d, b, c]


def test_only_failed_records_are_set_aside_only_when_more_wait_and_within_room() -> None:
    failing = FailingCharges(60.0, set_aside_max=2)
    a, b, c = (_event() for _ in range(3))
    failing.failed(a, RuntimeError("x"))
    assert not failing.set_aside_if_waiting([a], more_waiting=False)
    assert not failing.set_aside_if_waiting([a, b], more_waiting=True)  # b never failed: try it first
    assert failing.set_aside_if_waiting([a], more_waiting=True)
    failing.failed(b, RuntimeError("x"))
    failing.failed(c, RuntimeError("x"))
    assert not failing.set_aside_if_waiting([b, c], more_waiting=True)  # no room: the batch waits
    assert failing.set_aside == [a]


def test_set_aside_records_resume_before_a_later_batch_unless_a_rebalance_came_between() -> None:
    clock = Clock()
    failing = FailingCharges(60.0, clock=clock)
    old, kept, new = _event(generation=1), _event(generation=2), _event(generation=2)
    for record in (old, kept):
        failing.failed(record, RuntimeError("x"))
        assert failing.set_aside_if_waiting([record], more_waiting=True)
    clock.now += 1
    assert failing.resume([new], generation=2, quiet=False) == [kept, new]
    assert failing.set_aside == []
    assert not failing.failing(old) and failing.failing(kept)


def test_a_set_aside_record_waits_its_backoff_while_others_keep_the_sink_busy() -> None:
    clock = Clock()
    failing = FailingCharges(600.0, clock=clock)
    poison, batch = _event(), [_event()]
    for count in range(1, 8):
        failing.failed(poison, RuntimeError("x"))
        assert failing.set_aside_if_waiting([poison], more_waiting=True)
        backoff = min(30.0, 2.0 ** (count - 1))
        clock.now += backoff - 0.5
        assert failing.resume(batch, generation=1, quiet=False) == batch  # not yet due
        assert failing.resume(batch, generation=1, quiet=True) == [poison] + batch  # nothing else waits
        assert failing.set_aside_if_waiting([poison], more_waiting=True)
        clock.now += 0.5
        assert failing.resume(batch, generation=1, quiet=False) == [poison] + batch


def test_records_of_a_batch_that_failed_whole_are_tried_alone_but_not_set_aside() -> None:
    failing = FailingCharges(60.0)
    a, b = _event(), _event()
    failing.suspect([a, b])
    assert failing.failing(a) and failing.failing(b) and not failing.failed_alone(a)
    assert failing.in_order([a, b]) == [a, b]
    assert not failing.set_aside_if_waiting([a, b], more_waiting=True)
    failing.charged(a)
    assert not failing.failing(a) and failing.failing(b)
