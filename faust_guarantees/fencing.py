"""A fenced worker: another worker owns its partitions, its transactions are aborted.

See the fenced-restart fix (faust_guarantees/fixes/fenced_restart.py) for what stock Faust
does then and what the kit does instead.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from . import state

log = logging.getLogger(__name__)

#: What a send says once its producer was fenced, besides ProducerFenced: Faust reports a
#: stopped producer only as ProducerSendError text, and aiokafka refuses a send to a
#: producer whose transaction the fence aborted (IllegalOperation; a send never meets a
#: producer between commit and begin: both run under Faust's per-producer lock).
#: The environment variable in which a rejoined process finds when its predecessors rejoined.
REJOINS_ENV = "FAUST_GUARANTEES_REJOINS"
#: At most this many rejoins within REJOIN_WINDOW_S; then the worker exits (a process
#: fenced at every start, e.g. two workers sharing a static member id, needs a person).
MAX_REJOINS = 5
REJOIN_WINDOW_S = 600.0
#: How long after its app crashed a fenced worker may take to begin its stop, and to end.
STOP_GRACE_S = 10.0
STOP_DEADLINE_S = 40.0

#: The environment variable in which a process restarted because a dependency failed in the
#: middle of a batch (:func:`stop_for_dependency`) finds when its predecessors restarted.
DEPENDENCY_RESTARTS_ENV = "FAUST_GUARANTEES_DEPENDENCY_RESTARTS"
#: The wait before such a restart: the first after 1 s, doubling with each one within
#: REJOIN_WINDOW_S, at most a minute; never given up (a dependency may be down for hours).
DEPENDENCY_FIRST_WAIT_S = 1.0
DEPENDENCY_MAX_WAIT_S = 60.0

FENCED_TEXTS = ("No transaction producer found", "Can't send messages while not in transaction")


def is_fenced(error: BaseException) -> bool:
    """``error`` says this worker's transactional producer was fenced (or, once fenced,
    stopped): the work in progress belongs to another worker now."""
    from aiokafka.errors import ProducerFenced

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ProducerFenced) or any(text in str(seen) for text in FENCED_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def fenced(app: Any) -> bool:
    """This worker was fenced: it is stopping, its stop is not clean."""
    return state.of(app).fenced


async def on_fenced(app: Any, error: BaseException) -> None:
    """This worker was fenced (``error`` says so): stop it with its stop marked unclean,
    before anything it acked is committed; with ``after_fence="rejoin"`` (the default) the
    process then starts again as a new worker. Once is enough."""
    await stop_uncommitted(app, error, f"this worker was fenced ({error}): another worker owns its "
                                       "partitions now and the broker aborts its open transactions")


async def stop_for_dependency(app: Any, error: BaseException, why: str) -> None:
    """Stop this worker because a dependency failed in the middle of a batch (``why``): what
    the batch sent may be in Kafka, and under exactly_once in an open transaction, so the
    worker stops without committing and starts again (the broker aborts what it left open;
    at_least_once: the batch comes again). Unlike a fence, it starts again however often
    this happens, waiting longer each time (:data:`DEPENDENCY_FIRST_WAIT_S` doubling up to
    :data:`DEPENDENCY_MAX_WAIT_S`): a pause until the dependency is back."""
    waited = len(recent_rejoins(env=DEPENDENCY_RESTARTS_ENV))
    wait = min(DEPENDENCY_FIRST_WAIT_S * 2 ** waited, DEPENDENCY_MAX_WAIT_S)
    await stop_uncommitted(
        app, error, why, limit=None, reason=f"a dependency failed: {type(error).__name__}: {error}",
        restart=functools.partial(restart_process, env=DEPENDENCY_RESTARTS_ENV, wait=wait),
    )


async def stop_uncommitted(app: Any, error: BaseException, why: str, *, limit: int | None = MAX_REJOINS,
                           restart: Any = None, reason: str | None = None) -> None:
    """Stop this worker because transactions it wrote end uncommitted (``why``, logged): its
    local table state may hold their rows, so the stop is marked unclean and the next worker
    (this process again with ``after_fence="rejoin"``) restores the tables from the
    changelog. A fence, or transactions that cannot commit whole (whole-transactions); with
    ``limit`` rejoins at most within REJOIN_WINDOW_S (None: no limit), ``restart`` the way
    it starts again (default :func:`restart_process`); ``reason`` what the fence's listeners
    are told (default: the error)."""
    guarantees = state.of(app)
    if not guarantees.mark_fenced(reason or str(error)):
        return
    restart = restart or restart_process
    # Only a worker process rejoins (Faust's Worker sets in_worker); not an app in a test.
    rejoin = guarantees.after_fence == "rejoin" and getattr(app, "in_worker", False)
    if rejoin and limit is not None and len(recent_rejoins()) >= limit:
        log.error("fenced-restart: fenced %d times within %.0f s: not rejoining again; exiting "
                  "(is another worker running with this worker's static member id?)",
                  limit + 1, REJOIN_WINDOW_S)
        rejoin = False
    log.warning(
        "fenced-restart: %s. Stopping; %s deletes the local table state (it may hold rows of "
        "those transactions) and restores it from the changelog.", why,
        "then this process starts again as a new worker (rejoin), which" if rejoin else "the restart",
    )
    if rejoin:
        atexit.register(restart)
    await app.crash(error)
    if getattr(app, "in_worker", False):
        _watch(app, rejoin, restart)


def _watch(app: Any, rejoin: bool, restart: Any = None) -> None:
    """Start the stop's watchdog (:func:`_watch_the_stop`) in a daemon thread."""
    threading.Thread(target=_watch_the_stop, args=(app, rejoin), kwargs={"end": restart if rejoin else None},
                     name="fenced-stop-watchdog", daemon=True).start()


def _watch_the_stop(app: Any, rejoin: bool, grace: float = STOP_GRACE_S, deadline: float = STOP_DEADLINE_S,
                    end: Any = None, terminate: Any = None) -> None:
    """A thread, not the event loop: the loop may be closed while the process still runs.

    Faust's worker stops once its app crashed, and the process ends (or, with the rejoin,
    execs itself again from atexit). Two ways that did not happen were seen: an app crashed
    from an agent in the middle of a rebalance kept running and rejoined the group (session
    13); and a worker whose consumer thread was in a rebalance when the event loop closed
    never exited (CI on d4c0cec: "Setting newly assigned partitions" after "Closing event
    loop"; the interpreter waits for that thread before it runs atexit). So: ``grace``
    seconds after the crash a worker that has not begun its stop is sent SIGTERM (Faust's
    graceful stop); ``deadline`` seconds after it, a process still here is ended
    (``end``: by default the rejoin's exec, or exit status 1). Its stop is marked unclean
    either way: the RUNNING marker stays and the next start wipes and restores."""
    end = end or (restart_process if rejoin else (lambda: os._exit(1)))
    terminate = terminate or (lambda: os.kill(os.getpid(), signal.SIGTERM))
    time.sleep(grace)
    if not app._stopped.is_set():
        log.warning("fenced-restart: the worker did not stop %.0f s after its app crashed; "
                    "sending itself SIGTERM", grace)
        terminate()
    time.sleep(max(deadline - grace, 0.0))
    log.warning("fenced-restart: the process is still running %.0f s after its app crashed "
                "(a thread that does not end); %s", deadline,
                "rejoining now" if rejoin else "exiting now (status 1)")
    end()


_restarting = threading.Lock()


def restarting() -> bool:
    """This process is in :func:`restart_process` (waiting to exec itself again)."""
    return _restarting.locked()


def restart_process(env: str = REJOINS_ENV, wait: float = 0.0) -> None:
    """Replace this process with a new run of its own command line (same pid, environment
    and output): Kafka Streams' "task migrated" rejoin, without a supervisor. Registered
    with atexit, so it runs once the worker's shutdown is complete: every service stopped,
    the event loop closed, the consumer thread joined; files and sockets close on exec.
    ``env`` tells the next process when its predecessors restarted this way; it starts
    ``wait`` seconds from now."""
    if not _restarting.acquire(blocking=False):
        return  # the stop's watchdog and atexit both got here: the first one execs
    command = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    os.environ[env] = ",".join(f"{t:.0f}" for t in [*recent_rejoins(env=env), time.time()])
    log.warning("fenced-restart: rejoining%s: starting this worker again (%s)",
                f" in {wait:.0f} s" if wait else "", " ".join(command))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        if wait:
            time.sleep(wait)
        os.execv(sys.executable, command)
    finally:  # reached only when the exec failed (or in a test)
        _restarting.release()


def recent_rejoins(now: float | None = None, env: str = REJOINS_ENV) -> list[float]:
    """When this worker's predecessors rejoined (after a fence; with ``env``
    :data:`DEPENDENCY_RESTARTS_ENV`, after a dependency failed), within :data:`REJOIN_WINDOW_S`."""
    now = time.time() if now is None else now
    found = []
    for text in os.environ.get(env, "").split(","):
        try:
            found.append(float(text))
        except ValueError:
            continue
    return [t for t in found if now - t <= REJOIN_WINDOW_S]
