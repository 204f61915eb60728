"""A stand-in for an external payment provider, with Stripe-style idempotency keys.

The Faust sink agents call it through :class:`payment_api.client.PaymentClient`
to show why external side effects of a Kafka consumer need idempotency keys:
at-least-once delivery plus client retries charge twice without them.

* :mod:`payment_api.server`: the aiohttp application and injectable faults
* :mod:`payment_api.store`: the idempotency protocol on SQLite or PostgreSQL
* :mod:`payment_api.client`: the retrying client
* ``python -m payment_api serve``: the command line
"""
