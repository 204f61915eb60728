"""A fenced worker: another worker owns its partitions, its transactions are aborted.

See the fenced-restart fix (faust_guarantees/fixes/fenced_restart.py) for what stock Faust
does then and what the kit does instead.
"""

from __future__ import annotations

import logging
from typing import Any

from . import state

log = logging.getLogger(__name__)

#: What a send says once its producer was fenced, besides ProducerFenced: Faust reports a
#: stopped producer only as ProducerSendError text, and aiokafka refuses a send to a
#: producer whose transaction the fence aborted (IllegalOperation; a send never meets a
#: producer between commit and begin: both run under Faust's per-producer lock).
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
    before anything it acked is committed. Once is enough."""
    if not state.of(app).mark_fenced(str(error)):
        return
    log.warning(
        "fenced-restart: this worker was fenced (%s): another worker owns its partitions now and "
        "the broker aborts its open transactions. Stopping; the restart deletes the local table "
        "state (it may hold rows of those transactions) and restores it from the changelog.", error,
    )
    await app.crash(error)
