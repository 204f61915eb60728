"""A transactional outbox: database -> Kafka without losing or double-applying an event.

The source text's advice for side effects outside Kafka ("idempotency keys,
unique constraints, deduplication tables, or transactional outbox patterns"),
made runnable. Writing a business row and then sending a Kafka record are two
systems: a crash between them loses the event or sends one for a row that was
rolled back. The outbox turns the send into a row of the same transaction::

    POST /v1/orders ──one transaction──> orders row + outbox row      (outbox.orders)
    relay: unsent outbox rows ──publish, await acks──> Kafka, then mark sent   (outbox.relay)
    consumer: record ──one transaction──> effect + processed_outbox_ids row,
              then commit the offset                                  (outbox.consumer)

Guarantee, end to end: every committed order has its effect applied exactly
once; a rolled-back order has none. The relay alone is at-least-once (it can
publish a row twice); the consumer's dedup on the outbox id, stored in the
transaction of the effect, removes the duplicate. The three fault cases:

* the order transaction rolls back: no outbox row, so nothing is ever published;
* a crash after the commit, before the publish: the row stays unsent, the
  restarted relay publishes it;
* a crash after the publish (acks received), before marking it sent: the
  restarted relay publishes it again, Kafka holds two records with one outbox
  id, and the consumer applies the second as a no-op.

Wire format of a record: key = aggregate id (UTF-8), value = the payload JSON,
headers :data:`OUTBOX_ID_HEADER` (decimal outbox id) and :data:`EVENT_TYPE_HEADER`.

* :mod:`outbox.schema`: tables and indexes for SQLite and PostgreSQL, the connection
* :mod:`outbox.orders`: ``place_order`` and the ``/v1/orders`` routes
* :mod:`outbox.relay`: the relay and its crash points (``OUTBOX_CRASH_AT``)
* :mod:`outbox.consumer`: the reference consumer that deduplicates on the outbox id
* ``python -m outbox relay|consume|serve``: the command line
"""

from typing import Final

OUTBOX_ID_HEADER: Final = "x-outbox-id"
EVENT_TYPE_HEADER: Final = "x-event-type"
ORDER_PLACED: Final = "OrderPlaced"
