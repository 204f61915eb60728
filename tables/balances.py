"""``balances``: account -> {currency: balance in minor units}.

Written by the apply agent on partitions of ``{prefix}.unique`` (keyed by
account). Compacted changelog: the latest value per account is the state.

Under exactly_once the balance update, the applied output and the source offset
commit in one Kafka transaction, so a crash never applies an event twice. Under
at_least_once a crash after the update and before the offset commit applies the
event again on restart: the lab counts exactly that as a balance mismatch.
"""

from __future__ import annotations

from streams_app.app import app, settings

balances = app.Table(
    "balances",
    key_type=str,
    # No value_type: the app's JSON serializer gives dicts back (value_type=dict
    # would make Faust look for a Record class and fail to decode).
    default=dict,
    partitions=settings.partitions,
    help="account -> {currency: minor units}",
)


def add_to_balance(account: str, currency: str, amount: int) -> int:
    """Apply ``amount`` and return the new balance in ``currency``.

    The value is copied, changed and assigned back: Faust only writes the
    changelog on assignment, never on an in-place change of a mutable value.
    """
    balance = dict(balances[account])
    balance[currency] = balance.get(currency, 0) + amount
    balances[account] = balance
    return balance[currency]
