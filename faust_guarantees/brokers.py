"""Waiting for Kafka: a worker that starts while no broker answers waits for one.

One implementation for the kit's kafka-wait-at-start fix (before the producer starts) and
for any app that needs Kafka before that (streams_app's start checks ask the brokers about
the topics first).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never, wait_random_exponential

log = logging.getLogger(__name__)

#: The first wait and the longest, in seconds: tries 0.5 s apart at first, at most 30 s apart,
#: each wait drawn at random up to its bound (workers restarted together do not knock in step).
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 30.0


async def wait_for_brokers(
    bootstrap: str | Sequence[str], *, first_wait: float = FIRST_WAIT_S, max_wait: float = MAX_WAIT_S,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> None:
    """Return once a broker of ``bootstrap`` answers a metadata request, trying for as long
    as it takes and logging each try (WARNING). Cancelling (a stop) ends the wait."""

    async def reach() -> None:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        try:
            await client.bootstrap()
        finally:
            await client.close()

    def waiting(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        log.warning("Kafka at %s does not answer (%s); waiting %.1f s before try %d", _named(bootstrap),
                    state.outcome.exception(), state.next_action.sleep, state.attempt_number + 1)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(KafkaError), wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
        stop=stop_never, before_sleep=waiting, reraise=True, **({"sleep": sleep} if sleep else {}),
    )
    async for attempt in retrying:
        with attempt:
            await reach()


def _named(bootstrap: str | Sequence[str]) -> str:
    return bootstrap if isinstance(bootstrap, str) else ",".join(bootstrap)
