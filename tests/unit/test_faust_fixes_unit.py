"""The mechanism of a fix that cannot be provoked on demand against the broker.

shutdown-commit: the failure it guards against (the final commit raising during
SIGTERM) shows up only intermittently in the benchmark's exactly_once runs; here
the stock and the fixed ``Consumer.commit_and_end_transactions`` get a consumer
whose commit raises, exactly as aiokafka did in those runs.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import IllegalOperation
from faust.transport.consumer import Consumer

from streams_app import faust_fixes


class _ConsumerWhoseCommitFails:
    async def commit(self, start_new_transaction: bool = True) -> bool:
        raise IllegalOperation("Not in the middle of a transaction")


def _stock():
    method = Consumer.commit_and_end_transactions
    return getattr(method, "_stock", method)


def test_stock_faust_lets_a_failed_final_commit_abort_the_shutdown():
    with pytest.raises(IllegalOperation):
        asyncio.run(_stock()(_ConsumerWhoseCommitFails()))


def test_with_the_fix_a_failed_final_commit_is_logged_and_the_shutdown_goes_on(monkeypatch, caplog):
    monkeypatch.setattr(Consumer, "commit_and_end_transactions", _stock())
    faust_fixes._patch_shutdown_commit()
    with caplog.at_level(logging.WARNING, logger=faust_fixes.__name__):
        asyncio.run(Consumer.commit_and_end_transactions(_ConsumerWhoseCommitFails()))
    assert "the final commit failed" in caplog.text and "Not in the middle of a transaction" in caplog.text
