"""Readiness rules of streams_app/health.py, on sampled positions (no broker)."""

from __future__ import annotations

from collections import namedtuple

from streams_app.health import CRASH_WINDOW_S, STUCK_AFTER_S, HealthMonitor

TP = namedtuple("TP", "topic partition")
EVENTS = TP("payments.events", 2)


def test_a_worker_that_has_not_finished_starting_is_not_ready():
    monitor = HealthMonitor(exactly_once=False)
    status, body = monitor.sample(started=False, positions=[], now=0).report(now=0)
    assert status == 503 and body["reasons"][0].startswith("starting")
    assert monitor.sample(started=True, positions=[], now=1).report(now=1)[0] == 200


def test_a_partition_behind_whose_commit_does_not_move_is_stuck():
    monitor = HealthMonitor(exactly_once=False)
    monitor.sample(started=True, positions=[(EVENTS, 10, 50)], now=0)
    assert monitor.sample(started=True, positions=[(EVENTS, 10, 50)], now=STUCK_AFTER_S - 1).report(
        now=STUCK_AFTER_S - 1)[0] == 200
    status, body = monitor.sample(started=True, positions=[(EVENTS, 10, 50)], now=STUCK_AFTER_S).report(
        now=STUCK_AFTER_S)
    assert status == 503 and "payments.events[2] stuck: committed 10 of 50" in body["reasons"][0]
    # the commit moves: ready again, and the clock starts over
    assert monitor.sample(started=True, positions=[(EVENTS, 11, 50)], now=STUCK_AFTER_S + 1).report(
        now=STUCK_AFTER_S + 1)[0] == 200


def test_a_partition_at_its_end_is_not_stuck_however_long_it_waits():
    """Under exactly_once an idle partition ends on a transaction marker: one offset of slack."""
    eos, alo = HealthMonitor(exactly_once=True), HealthMonitor(exactly_once=False)
    for now in (0, STUCK_AFTER_S * 10):
        assert eos.sample(started=True, positions=[(EVENTS, 50, 51)], now=now).report(now=now)[0] == 200
        assert alo.sample(started=True, positions=[(EVENTS, 50, 50)], now=now).report(now=now)[0] == 200
    alo = HealthMonitor(exactly_once=False)  # the same offset of slack is a waiting record here
    assert alo.sample(started=True, positions=[(EVENTS, 50, 51)], now=0).report(now=0)[0] == 200
    assert alo.sample(started=True, positions=[(EVENTS, 50, 51)], now=STUCK_AFTER_S).report(
        now=STUCK_AFTER_S)[0] == 503


def test_an_agent_crash_is_reported_for_a_while():
    monitor = HealthMonitor(exactly_once=True)
    monitor.sample(started=True, positions=[], now=0)
    monitor.agent_crashed("agents.dedup.dedup_payments", KeyError("x"), now=10)
    status, body = monitor.health.report(now=11)
    assert status == 503 and "agents.dedup.dedup_payments crashed 1 time(s)" in body["reasons"][0]
    assert "KeyError" in body["reasons"][0]
    assert monitor.health.report(now=10 + CRASH_WINDOW_S + 1)[0] == 200


def test_the_app_s_views_read_the_monitor():
    from streams_app import app

    status, body = app.health.report()
    assert status == 503 and body["status"] == "not ready"  # never sampled: not started


def test_a_drained_exactly_once_partition_ending_with_several_markers_is_not_stuck():
    """events[0] committed 68 of 72 for 70 s on a drained exactly_once worker: the four
    offsets were the commit markers of the four ingest producers' transactions (seen
    on the broker; /health said 503). With the true lag (0) it is ready."""
    monitor = HealthMonitor(exactly_once=True)
    monitor.sample(started=True, positions=[(EVENTS, 68, 72)], now=0, lags={EVENTS: 0})
    assert monitor.sample(started=True, positions=[(EVENTS, 68, 72)], now=STUCK_AFTER_S + 10,
                          lags={EVENTS: 0}).report(now=STUCK_AFTER_S + 10)[0] == 200
    # without the true lag, the one-offset slack still calls it stuck
    monitor = HealthMonitor(exactly_once=True)
    monitor.sample(started=True, positions=[(EVENTS, 68, 72)], now=0)
    assert monitor.sample(started=True, positions=[(EVENTS, 68, 72)], now=STUCK_AFTER_S).report(
        now=STUCK_AFTER_S)[0] == 503
    # a real lag is still stuck
    monitor = HealthMonitor(exactly_once=True)
    monitor.sample(started=True, positions=[(EVENTS, 68, 72)], now=0, lags={EVENTS: 2})
    assert monitor.sample(started=True, positions=[(EVENTS, 68, 72)], now=STUCK_AFTER_S,
                          lags={EVENTS: 2}).report(now=STUCK_AFTER_S)[0] == 503
