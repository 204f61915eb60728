"""streams_app/offsets._ack_through: the acked offsets it adds are committable.

Faust builds the offsets it commits from the keys of ``Consumer._acked``; aiokafka's
transactional ``send_offsets_to_transaction`` refuses any key that is not its own
``TopicPartition``. The transactional sink's partitions come from Faust's
``assignment()``, which holds Faust's ``TP``: stored under that key, the first
commit crashed the consumer (lab, exactly_once / transactional / crash-mid-transaction).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.util import commit_structure_validate
from faust.types import TP

from streams_app.offsets import _ack_through


def _consumer() -> SimpleNamespace:
    return SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set),
                           _committed_offset=defaultdict(lambda: None))


def test_a_faust_tp_key_is_what_aiokafka_refuses():
    with pytest.raises(TypeError, match="TopicPartition"):
        commit_structure_validate({TP("payments.applied", 0): 1})


def test_acked_offsets_are_keyed_by_the_clients_topic_partition():
    consumer = _consumer()
    _ack_through(consumer, TP("payments.applied", 0), 0)
    assert all(type(tp) is TopicPartition for tp in consumer._acked)
    commit_structure_validate({tp: offsets[-1] + 1 for tp, offsets in consumer._acked.items()})


def test_offsets_already_acked_under_a_faust_tp_key_are_kept_under_the_clients():
    consumer = _consumer()
    consumer._acked[TP("payments.applied", 1)].append(3)
    _ack_through(consumer, TP("payments.applied", 1), 2)
    assert list(consumer._acked.items()) == [(TopicPartition("payments.applied", 1), [2, 3])]
    assert type(next(iter(consumer._acked))) is TopicPartition
