"""A TCP fault proxy for Kafka: the broker appends a batch, its answer is lost.

This is the first source of duplicates in the source text ("a producer sends
a record, times out, and retries"), made real. The proxy sits between the
worker and the broker's PROXIED listener (the broker advertises the proxy's
address there, so clients never bypass it; see infra/kafka). It forwards every
request unchanged. For a seeded share of Produce requests it forwards the
request, lets the broker append the batch, then swallows the response and
drops the connection, exactly what a network cut after the append looks like.

Only requests carrying a batch for one of ``topics`` (the topics whose duplicates the lab
counts) are chosen, and their answer is dropped only when it says every batch was appended;
any other goes through. Without the topic condition the fault could be spent entirely on
requests that carried only the counters' changelog and the DLQ: the full matrix on
63136e5b577d had 2 of 6 cells with 6 drops and 0 duplicates, and a rerun showed the
partitions those dropped answers were for.

The producer sees a failed request and sends the batch again:

- without idempotence the broker appends it a second time: a duplicate in the log;
- with idempotence (KIP-98) the batch carries the producer id and sequence
  number, and the broker recognises it and does not append it again.

:meth:`FaultProxy.cut` is the other fault it injects: a network partition between
the worker and one broker (every connection through the proxy dropped, new ones
refused) while the broker stays alive for everyone else, until :meth:`FaultProxy.heal`.

Kafka's wire format: every request is ``int32 size`` + (``int16 api_key``,
``int16 api_version``, ``int32 correlation_id``, ...) and every response
``int32 size`` + (``int32 correlation_id``, ...). Produce is api key 0.
"""

from __future__ import annotations

import asyncio
import functools
import random
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, get_args

PRODUCE = 0


@dataclass
class ProxyStats:
    requests: int = 0
    produce_requests: int = 0
    dropped_responses: int = 0
    #: answers chosen for a drop but passed on: the broker appended nothing, or none of
    #: the request's partitions was of ``FaultProxy.topics``
    spared_responses: int = 0
    #: partitions (by topic) whose appended batches lost their answer
    dropped_topics: Counter[str] = field(default_factory=Counter)


@functools.cache
def _produce_requests() -> dict[int, Any]:
    """aiokafka's Produce request types by version (each knows its answer's type)."""
    from aiokafka.protocol.produce import ProduceRequestStruct

    return {cls.API_VERSION: cls for cls in get_args(ProduceRequestStruct)}


def request_topics(frame: bytes, version: int) -> set[str] | None:
    """The topics a Produce request (``frame``, size-prefixed, request header v1: api key,
    version, correlation id, client id) carries batches for; None if aiokafka cannot read it."""
    request_type = _produce_requests().get(version)
    if request_type is None or len(frame) < 14:
        return None
    (client_id_length,) = struct.unpack_from(">h", frame, 12)
    try:
        request = request_type.decode(frame[14 + max(client_id_length, 0):])
    except Exception:  # noqa: BLE001 - anything unreadable is forwarded untouched
        return None
    return {topic for topic, _partitions in request.topics}


def partition_errors(frame: bytes, version: int) -> list[tuple[str, int]] | None:
    """(topic, error code) of each partition in ``frame`` (a Produce answer, size-prefixed),
    decoded with aiokafka's own response types; None for a version aiokafka cannot decode or
    an answer it cannot read."""
    request_type = _produce_requests().get(version)
    if request_type is None:
        return None
    try:
        response = request_type.RESPONSE_TYPE.decode(frame[8:])  # after the size and the correlation id
    except Exception:  # noqa: BLE001 - anything unreadable is passed on untouched
        return None
    return [(topic, partition[1]) for topic, partitions in response.topics for partition in partitions]


def all_appended(errors: list[tuple[str, int]] | None) -> bool:
    """The answer's partitions (:func:`partition_errors`) say every batch was appended
    (nothing is dropped that cannot be read)."""
    return bool(errors) and not any(error for _topic, error in errors)


def appended(frame: bytes, version: int) -> bool:
    """``frame`` (a Produce answer) says every batch of its request was appended."""
    return all_appended(partition_errors(frame, version))


@dataclass
class FaultProxy:
    """Listen on ``listen_port``, forward to ``target_port``; drop some Produce answers."""

    listen_port: int
    target_port: int
    drop_rate: float = 0.1
    max_drops: int = 10
    seed: int = 1
    host: str = "127.0.0.1"
    #: only answers to requests carrying a partition of one of these topics are dropped
    #: (empty: any request)
    topics: frozenset[str] = frozenset()
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._rng = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- lifecycle (a thread with its own loop, so synchronous lab code can use it)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"fault proxy did not start on port {self.listen_port}")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def cut(self) -> None:
        """A network partition: every connection through the proxy is dropped and new ones
        are refused until :meth:`heal` (the broker itself runs on, for everyone else)."""
        self._cut = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_all)

    def heal(self) -> None:
        self._cut = False

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, self.host, self.listen_port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    # -- one client connection -------------------------------------------------

    async def _client(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._cut:
            client_w.close()
            return
        try:
            broker_r, broker_w = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_w.close()
            return
        self._writers.update((client_w, broker_w))
        doomed: dict[int, int] = {}  # correlation id -> api version: answers to be lost
        upstream = asyncio.ensure_future(self._requests(client_r, broker_w, doomed))
        downstream = asyncio.ensure_future(self._responses(broker_r, client_w, doomed))
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_w, broker_w):
            writer.close()
            self._writers.discard(writer)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        doomed: dict[int, int]) -> None:
        while frame := await _read_frame(reader):
            api_key, version, correlation_id = struct.unpack_from(">hhi", frame, 4)
            self.stats.requests += 1
            if api_key == PRODUCE:
                self.stats.produce_requests += 1
                if self.stats.dropped_responses + len(doomed) < self.max_drops and self._counted(frame, version) \
                        and self._rng.random() < self.drop_rate:
                    doomed[correlation_id] = version
            writer.write(frame)
            await writer.drain()

    def _counted(self, frame: bytes, version: int) -> bool:
        """The request carries a batch for one of :attr:`topics` (any request when empty)."""
        if not self.topics:
            return True
        topics = request_topics(frame, version)
        return bool(topics and topics & self.topics)

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         doomed: dict[int, int]) -> None:
        while frame := await _read_frame(reader):
            (correlation_id,) = struct.unpack_from(">i", frame, 4)
            version = doomed.pop(correlation_id, None)
            if version is not None:
                errors = partition_errors(frame, version)
                if all_appended(errors) and (
                        not self.topics or any(topic in self.topics for topic, _error in errors)):
                    # The broker has appended the batches; their answer never arrives.
                    self.stats.dropped_responses += 1
                    self.stats.dropped_topics.update(topic for topic, _error in errors)
                    return  # closing the connection makes the client retry
                self.stats.spared_responses += 1
            writer.write(frame)
            await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One size-prefixed Kafka frame (size included), or None at end of stream."""
    try:
        header = await reader.readexactly(4)
        (size,) = struct.unpack(">i", header)
        return header + await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
