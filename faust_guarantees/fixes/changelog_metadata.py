"""The changelog-metadata fix.

Every guarantee: the first write to a table checks that its changelog has as many
partitions as the source topic (tables/base.py _verify_source_topic_partitions), reading
the consumer's metadata snapshot. Right after the changelog topic is created, or under
load, the snapshot can still list it with 0 partitions, and the check raises
PartitionsMismatch ('... has 4 partitions, but the changelog topic ... has 0
partitions'): the write fails and the event is dead-lettered although it is valid (cf.
robinhood/faust#325, reported as intermittent). Fix: a changelog the snapshot does not
know yet (0 partitions) is not a mismatch; the check runs again at the next write. A
real mismatch (e.g. 4 against 8) still raises.

Regression test: test_faust_fixes_unit.py, stock and fixed.
"""

from __future__ import annotations

import logging

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "changelog-metadata"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.base:Collection._verify_source_topic_partitions": "6814da56b0d8",
}


def install(guarantees: Guarantees) -> None:
    from faust.tables.base import Collection

    stock = Collection._verify_source_topic_partitions

    def _verify_source_topic_partitions(self: Collection, source_topic: str) -> None:
        if not self.app.consumer.topic_partitions(self.changelog_topic_name):
            return  # not in the metadata snapshot yet: check again at the next write
        stock(self, source_topic)

    guarantees.classes.replace(Collection, "_verify_source_topic_partitions", _verify_source_topic_partitions)
