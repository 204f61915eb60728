"""The lso-consistency-check fix.

exactly_once: Faust's recovery compares the table's persisted offset with the
changelog's read_committed end offset, which an open transaction of a SIGKILLed worker
holds back until the broker aborts it; the check then crashes every worker that recovers
that partition (ConsistencyError '... is higher than the last offset in that topic
(highwater)') in a crash loop. With persisted offsets written only for committed
transactions and local state wiped after an unclean stop, the persisted offset is
committed data: the check is switched off (recovery_consistency_check=False).

Regression test:
test_faust_fixes_unit.py::test_lso_consistency_check_is_switched_off_for_the_app_only;
the lab's exactly_once crash cells.
"""

from __future__ import annotations

import logging

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "lso-consistency-check"
#: The guarantee it is for; None: every one.
ONLY = "exactly_once"
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.tables.recovery:Recovery._build_highwaters": "91b4cc0d3724",
}



def install(guarantees: Guarantees) -> None:
    guarantees.app.conf.recovery_consistency_check = False
