"""Dead letters: every record a stage cannot decode or process, kept with why and where from.

A dead letter is the original record, byte for byte (a null value stays null, the
record's own headers are kept), plus headers that say where it was read and why
it was refused. The names and encodings are Spring Kafka's
(``DeadLetterPublishingRecoverer``), the convention DLQ tooling reads; Kafka
Connect's ``__connect.errors.*`` carry the same facts as strings but have no
timestamp or consumer group:

    header                               encoding        what
    kafka_dlt-original-topic             UTF-8           where the record was read
    kafka_dlt-original-partition         int32, big-endian
    kafka_dlt-original-offset            int64, big-endian
    kafka_dlt-original-timestamp         int64, big-endian  the record's own timestamp, ms
    kafka_dlt-original-timestamp-type    UTF-8           CreateTime or LogAppendTime
    kafka_dlt-original-consumer-group    UTF-8           the worker's group (APP_ID)
    kafka_dlt-exception-fqcn             UTF-8           e.g. streams_app.exceptions.InvalidPayment
    kafka_dlt-exception-message          UTF-8           the error, at most 1 KiB
    x-dlq-stage                          UTF-8           the stage (agent) that refused it
    x-dlq-code                           UTF-8           a stable tag: not_json, oversize, processing_error...
    x-dlq-reason                         UTF-8           the sentence for a person, at most 1 KiB
    x-dlq-reference                      "1"             only on a reference (below)

**A record too large to copy** (the dead letter, headers included, over the
producer's ``max_request_size``: a record just under the broker's
``message.max.bytes`` is) becomes a *reference*: the value is a small JSON object
``{"topic", "partition", "offset", "size", "sha256", "head"}`` (``head``: the first
256 bytes, as text) that finds the record in its topic while retention keeps it,
and proves which one it was. Before this, the DLQ send raised
``MessageSizeTooLargeError`` and took the stage down with the record: a crash
loop under exactly_once, a silently lost record under at_least_once.

**Sending never gives up and never raises.** A send the broker refuses as too
large is sent again as a reference; any other failure (the broker unreachable, a
topic being created) is retried with bounded exponential backoff and jitter for
as long as it lasts, logged each time: the record's partition waits (it is not
acked meanwhile), nothing is dropped and nothing crashes.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

log = logging.getLogger(__name__)

ORIGINAL_TOPIC = "kafka_dlt-original-topic"
ORIGINAL_PARTITION = "kafka_dlt-original-partition"
ORIGINAL_OFFSET = "kafka_dlt-original-offset"
ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"
ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
ORIGINAL_CONSUMER_GROUP = "kafka_dlt-original-consumer-group"
EXCEPTION_FQCN = "kafka_dlt-exception-fqcn"
EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
STAGE = "x-dlq-stage"
CODE = "x-dlq-code"
REASON = "x-dlq-reason"
REFERENCE = "x-dlq-reference"
#: Every header this module writes; a record's own headers of these names are replaced.
DLQ_HEADERS = frozenset({
    ORIGINAL_TOPIC, ORIGINAL_PARTITION, ORIGINAL_OFFSET, ORIGINAL_TIMESTAMP, ORIGINAL_TIMESTAMP_TYPE,
    ORIGINAL_CONSUMER_GROUP, EXCEPTION_FQCN, EXCEPTION_MESSAGE, STAGE, CODE, REASON, REFERENCE,
})

TEXT_LIMIT = 1024
HEAD_BYTES = 256
TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}
#: The broker or the client refuses the record for its size: send a reference instead.
TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)

Headers = list[tuple[str, bytes]]


class SourceRecord(Protocol):
    """What a dead letter needs of the record it replaces (a Faust ``Message``)."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # seconds, as Faust gives it
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Any  # a sequence or mapping of (str, bytes)


class Sender(Protocol):
    """Sends one record and returns once the broker has it (or raises)."""

    async def __call__(self, key: bytes | None, value: bytes | None, headers: Headers) -> None: ...


@dataclass(frozen=True)
class Letter:
    """A dead letter ready to send."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    reference: bool = False

    def size(self) -> int:
        """Its size as the producer measures it against ``max_request_size``."""
        return DefaultRecordBatchBuilder.estimate_size_in_bytes(self.key, self.value, self.headers)


def letter_for(record: SourceRecord, *, stage: str, code: str, reason: str, error: BaseException,
               group: str, redact: Callable[[str], str] = str) -> Letter:
    """The dead letter of ``record``: its own key, value and headers, plus why and where from
    (``redact`` takes secrets out of the error's text and the reason)."""
    return Letter(record.key, record.value, _own_headers(record.headers) + [
        (ORIGINAL_TOPIC, record.topic.encode()),
        (ORIGINAL_PARTITION, struct.pack(">i", record.partition)),
        (ORIGINAL_OFFSET, struct.pack(">q", record.offset)),
        (ORIGINAL_TIMESTAMP, struct.pack(">q", int(round((record.timestamp or 0) * 1000)))),
        (ORIGINAL_TIMESTAMP_TYPE, TIMESTAMP_TYPES.get(record.timestamp_type, "CreateTime").encode()),
        (ORIGINAL_CONSUMER_GROUP, group.encode()),
        (EXCEPTION_FQCN, f"{type(error).__module__}.{type(error).__qualname__}".encode()),
        (EXCEPTION_MESSAGE, _text(redact(str(error)))),
        (STAGE, stage.encode()),
        (CODE, code.encode()),
        (REASON, _text(redact(reason))),
    ])


def as_reference(letter: Letter, record: SourceRecord) -> Letter:
    """``letter`` with its value (and a key or headers too large to keep) replaced by a
    reference to the original record."""
    value = record.value or b""
    reference: dict[str, Any] = {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "size": len(value), "sha256": hashlib.sha256(value).hexdigest(),
        "head": value[:HEAD_BYTES].decode("utf-8", "backslashreplace"),
    }
    key = record.key
    if key is not None and len(key) > TEXT_LIMIT:
        reference["key_size"], reference["key_sha256"] = len(key), hashlib.sha256(key).hexdigest()
        key = None
    dlq = [(k, v) for k, v in letter.headers if k in DLQ_HEADERS]
    own = [(k, v) for k, v in letter.headers if k not in DLQ_HEADERS]
    if sum(len(k) + len(v) for k, v in own) > TEXT_LIMIT:
        reference["headers_dropped"] = len(own)
        own = []
    return Letter(key, orjson.dumps({"reference": reference}), own + dlq + [(REFERENCE, b"1")], reference=True)


async def send_dead_letter(letter: Letter, record: SourceRecord, send: Sender, *, max_bytes: int,
                           give_up: Callable[[BaseException], bool] = lambda exc: False) -> Letter:
    """Send ``letter`` (as a reference if it is larger than ``max_bytes`` or the broker
    refuses its size); retry any other failure until it is sent, except one for which
    ``give_up`` is true (raised: e.g. this worker no longer owns the record). Return what
    was sent."""
    if not letter.reference and letter.size() > max_bytes:
        letter = as_reference(letter, record)
    retrying = AsyncRetrying(
        # never give up on the record itself: it waits, unacked
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and not give_up(exc)),
        wait=wait_exponential_jitter(initial=0.1, max=5.0),
        before_sleep=lambda state: log.error(
            "dead letter of %s[%d]@%d not sent (attempt %d: %r); retrying",
            record.topic, record.partition, record.offset, state.attempt_number,
            state.outcome.exception() if state.outcome else None,
        ),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            try:
                await send(letter.key, letter.value, letter.headers)
            except Exception as exc:
                if letter.reference or not too_large(exc):
                    raise
                letter = as_reference(letter, record)
                await send(letter.key, letter.value, letter.headers)
    return letter


def too_large(error: BaseException) -> bool:
    """The client or the broker refused a record for its size (Faust wraps the client's
    error in a ProducerSendError: the cause chain is searched)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TOO_LARGE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter read back from the DLQ (tests, the lab, ``dlq`` commands, the dashboard)."""

    key: bytes | None
    value: bytes | None
    headers: Mapping[str, bytes] = field(default_factory=dict)  # the record's own headers
    stage: str = ""
    code: str = ""
    reason: str = ""
    original_topic: str = ""
    original_partition: int | None = None
    original_offset: int | None = None
    original_timestamp: int | None = None  # ms
    consumer_group: str = ""
    exception_class: str = ""
    exception_message: str = ""
    reference: dict[str, Any] | None = None
    topic: str = ""  # where the dead letter itself is: the DLQ's partition and offset
    partition: int | None = None
    offset: int | None = None

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        dlq = {k: v for k, v in record.headers or () if k in DLQ_HEADERS}
        own = {k: v for k, v in record.headers or () if k not in DLQ_HEADERS}
        reference = orjson.loads(record.value)["reference"] if REFERENCE in dlq else None
        return cls(
            key=record.key, value=record.value, headers=own,
            stage=_str(dlq, STAGE), code=_str(dlq, CODE), reason=_str(dlq, REASON),
            original_topic=_str(dlq, ORIGINAL_TOPIC),
            original_partition=_int(dlq, ORIGINAL_PARTITION, ">i"),
            original_offset=_int(dlq, ORIGINAL_OFFSET, ">q"),
            original_timestamp=_int(dlq, ORIGINAL_TIMESTAMP, ">q"),
            consumer_group=_str(dlq, ORIGINAL_CONSUMER_GROUP),
            exception_class=_str(dlq, EXCEPTION_FQCN), exception_message=_str(dlq, EXCEPTION_MESSAGE),
            reference=reference, topic=record.topic, partition=record.partition, offset=record.offset,
        )

    @property
    def source(self) -> tuple[str, int | None, int | None]:
        """The original record's place: one dead letter per source record."""
        return self.original_topic, self.original_partition, self.original_offset

    @property
    def place(self) -> str:
        return f"{self.original_topic}[{self.original_partition}]@{self.original_offset}"


def _own_headers(headers: Any) -> Headers:
    items: Iterable[tuple[str, bytes]] = headers.items() if isinstance(headers, Mapping) else headers or ()
    return [(k, v) for k, v in items if k not in DLQ_HEADERS]


def _text(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")[:TEXT_LIMIT]


def _str(headers: Mapping[str, bytes], name: str) -> str:
    return headers.get(name, b"").decode("utf-8", "replace")


def _int(headers: Mapping[str, bytes], name: str, fmt: str) -> int | None:
    raw = headers.get(name)
    return struct.unpack(fmt, raw)[0] if raw is not None and len(raw) == struct.calcsize(fmt) else None
