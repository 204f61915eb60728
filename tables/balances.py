"""``balances``: account -> {currency: balance in minor units}.

Written by the apply agent on partitions of ``{prefix}.unique`` (keyed by
account). Compacted changelog: the latest value per account is the state.

Under exactly_once the balance update, the applied output and the source offset
commit in one Kafka transaction, so a crash never applies an event twice. Under
at_least_once a crash after the update and before the offset commit applies the
event again on restart: the lab counts exactly that as a balance mismatch.
"""

from __future__ import annotations

from typing import Any

from faust_guarantees.batching import RecordBatches

from .changelog import COMPACTED_CHANGELOG


class Balances:
    """The ``balances`` table of one app, and how the apply stage reads and writes it."""

    def __init__(self, app: Any) -> None:
        self.table = app.Table(
            "balances",
            key_type=str,
            # No value_type: the app's JSON serializer gives dicts back (value_type=dict
            # would make Faust look for a Record class and fail to decode).
            default=dict,
            partitions=app.settings.partitions,
            extra_topic_configs=COMPACTED_CHANGELOG,
            help="account -> {currency: minor units}",
        )

    def balance_of(self, account: str) -> dict[str, int]:
        """The account's balances by currency (empty for a new account)."""
        return self.table[account]

    def set_balance(self, rows: RecordBatches, account: str, balance: dict[str, int]) -> None:
        """Store ``balance`` in the current event's partition; its changelog record goes with
        ``rows`` (faust_guarantees/batching.py). A new dict: an in-place change of a mutable
        value would never reach the changelog."""
        rows.set_row(self.table, account, balance)
