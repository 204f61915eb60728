"""faust_guarantees.brokers.wait_for_brokers: tries for as long as it takes, each wait
bounded and logged (the broker side is tests/integration/test_kafka_down_at_start.py)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket

import pytest

from faust_guarantees.brokers import wait_for_brokers


class Stop(Exception):
    pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_bootstrap_nobody_answers_is_tried_again_with_growing_bounded_waits(caplog, monkeypatch):
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 6:
            raise Stop  # what a stop's cancellation would do: the wait ends

    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # every draw at its bound
    caplog.set_level(logging.WARNING, "faust_guarantees.brokers")
    with pytest.raises(Stop):
        asyncio.run(wait_for_brokers(f"127.0.0.1:{_closed_port()}", first_wait=0.5, max_wait=4.0, sleep=sleep))
    # each wait drawn up to a bound doubling from 0.5 s to at most 4 s (full jitter)
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    tries = [r.getMessage() for r in caplog.records if r.name == "faust_guarantees.brokers"]
    assert len(tries) == 6 and "does not answer" in tries[0] and "before try 7" in tries[-1]
