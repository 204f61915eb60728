"""Producer idempotence: a switch Faust lacks.

Faust turns on ``enable_idempotence`` only for its exactly_once producers
(transport/drivers/aiokafka.py ``Producer._settings_extra``); aiokafka's own default is
off. Under at_least_once a producer retry after a lost ack then appends the batch twice.
:func:`faust_guarantees.install` (``producer_idempotence``) decides for every producer of
the app (exactly_once producers are always idempotent: transactions require it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import state


def install(guarantees: state.Guarantees) -> None:
    from faust.transport.drivers.aiokafka import Producer

    def _settings_extra(self: Producer) -> Mapping[str, Any]:
        if state.of(self.app).producer_idempotence or self.app.in_transaction:
            return {"acks": "all", "enable_idempotence": True}
        return {"enable_idempotence": False}

    guarantees.classes.replace(Producer, "_settings_extra", _settings_extra)
