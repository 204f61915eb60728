"""Whose fault an error is (faust_guarantees/dependencies.py), and how a worker whose
dependency failed starts again (faust_guarantees/fencing.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import faust
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)
from faust.exceptions import ProducerSendError

from faust_guarantees import fencing, state
from faust_guarantees.dependencies import is_dependency_failure


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as raised:  # noqa: BLE001 - the exception object is what is tested
        return raised


@pytest.mark.parametrize("error", [
    KafkaTimeoutError(), KafkaConnectionError(), NotEnoughReplicasError(), TopicAuthorizationFailedError(),
    _raised_from(ProducerSendError("Error while sending"), KafkaTimeoutError()),  # Faust wraps the client's
    OSError(28, "No space left on device"), ConnectionResetError(), TimeoutError(), MemoryError(),
    Exception("IO error: No space left on device: While appending to file: /data/000008.sst"),  # rocksdict
    Exception("Corruption: block checksum mismatch"),
], ids=repr)
def test_a_dependency_failure_is_the_dependency_s(error):
    assert is_dependency_failure(error)


@pytest.mark.parametrize("error", [
    MessageSizeTooLargeError(), RecordListTooLargeError(),
    _raised_from(ProducerSendError("Error while sending"), MessageSizeTooLargeError()),
    KeyError("account"), ValueError("bad"), TypeError("x"), RuntimeError("delivery timed out"),
    Exception("not a RocksDB status"), sqlite3.IntegrityError("NOT NULL"),
], ids=repr)
def test_a_record_s_or_a_bug_s_error_is_not(error):
    assert not is_dependency_failure(error)


def test_an_error_raised_while_handling_a_dependency_failure_is_judged_by_itself():
    try:
        try:
            raise OSError("disk")
        except OSError:
            raise KeyError("a bug in the handler")  # noqa: B904 - the implicit context is the point
    except KeyError as bug:
        assert not is_dependency_failure(bug)


def test_a_worker_whose_dependency_failed_starts_again_later_each_time_and_never_gives_up(monkeypatch):
    """No MAX_REJOINS for it (a dependency may be down for hours): the wait doubles from 1 s
    up to a minute, and the next process is told when its predecessors restarted."""
    at_exit: list = []
    monkeypatch.setattr(fencing.atexit, "register", at_exit.append)
    monkeypatch.setattr(fencing, "_watch", lambda *args: None)
    now = time.time()

    def restart_after(restarts: int) -> float:
        monkeypatch.setenv(fencing.DEPENDENCY_RESTARTS_ENV, ",".join(str(now - n) for n in range(restarts)))
        app = faust.App(f"kit-dependency-{restarts}", autodiscover=False)
        app.in_worker = True
        state.attach(state.Guarantees(app))

        async def crash(error: BaseException) -> None:
            pass

        app.crash = crash
        at_exit.clear()
        asyncio.run(fencing.stop_for_dependency(app, OSError("disk full"), "a test"))
        [restart] = at_exit
        assert restart.func is fencing.restart_process
        assert restart.keywords["env"] == fencing.DEPENDENCY_RESTARTS_ENV
        return restart.keywords["wait"]

    assert [restart_after(n) for n in (0, 1, 2, fencing.MAX_REJOINS + 3, 50)] == [1.0, 2.0, 4.0, 60.0, 60.0]

    sleeps, execs = [], []
    monkeypatch.setattr(fencing.time, "sleep", sleeps.append)
    monkeypatch.setattr(fencing.os, "execv", lambda path, argv: execs.append(argv))
    monkeypatch.delenv(fencing.DEPENDENCY_RESTARTS_ENV)
    monkeypatch.delenv(fencing.REJOINS_ENV, raising=False)
    fencing.restart_process(env=fencing.DEPENDENCY_RESTARTS_ENV, wait=4.0)
    assert sleeps == [4.0] and len(execs) == 1
    assert len(fencing.recent_rejoins(env=fencing.DEPENDENCY_RESTARTS_ENV)) == 1
    assert fencing.recent_rejoins() == [], "a fence's own count (MAX_REJOINS) is not touched"
