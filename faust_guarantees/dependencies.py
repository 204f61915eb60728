"""Whose fault is an error: the record's, or a dependency's?

The processing discipline dead-letters a record whose work raised: right when the record
is the cause (it is refused, or it trips a bug), wrong when something the worker depends
on failed (the broker, the disk under a table's store). Dead-lettered then, valid records
go to the DLQ with the dependency's error, after their batch's outputs may already have
been sent, and under exactly_once those outputs commit with the dead letters. A
dependency failure instead stops the batch and the worker, uncommitted, and starts it
again after a wait (:func:`faust_guarantees.fencing.stop_for_dependency`): the batch
comes again once the dependency is back.
"""

from __future__ import annotations

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

#: What the broker or the client says about a record itself: its size, its bytes, its topic's
#: name. Any other Kafka error (a timeout after the producer's retries, no leader, not
#: enough replicas, authorization taken away, a producer's sequence lost) is the cluster's.
RECORD_KAFKA_ERRORS = (CorruptRecordException, InvalidTopicError, MessageSizeTooLargeError, RecordListTooLargeError)

#: How RocksDB's status reaches Python through rocksdict (a plain ``Exception``): a full
#: disk reads "IO error: No space left on device: While appending to file: ...".
ROCKSDB_FAILURES = ("IO error:", "Corruption:", "Resource busy:", "Timed out:", "Try again:", "Busy:")


def is_dependency_failure(error: BaseException) -> bool:
    """``error`` (or what it was raised from) says the broker, the disk or memory failed,
    not the record: a Kafka error other than :data:`RECORD_KAFKA_ERRORS`, an OSError
    (a connection, a timeout, a full disk), MemoryError, or a RocksDB failure
    (:data:`ROCKSDB_FAILURES`). Errors raised while handling another (``__context__``) are
    judged by themselves: a bug in an ``except`` block is still a bug."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KafkaError):
            return not isinstance(seen, RECORD_KAFKA_ERRORS)
        if isinstance(seen, (OSError, MemoryError)):
            return True
        if type(seen) is Exception and str(seen).startswith(ROCKSDB_FAILURES):
            return True
        seen = seen.__cause__
    return False
