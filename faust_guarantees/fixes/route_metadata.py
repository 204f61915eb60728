"""The route-metadata fix.

table_route asks the plain (non-transactional) producer for the key's partition; a
producer that never sent to the table's changelog (every producer under exactly_once, a
fresh worker under at_least_once) has no metadata for it and the view fails with
TypeError 'NoneType' object is not iterable (HTTP 500; seen on a fresh exactly_once
worker, not on every run). Fix: Router.route_req first waits for that topic's metadata.

No test of its own yet (the failure was intermittent);
test_pipeline.py::test_balance_view_is_served_by_the_worker_that_owns_the_account reads
accounts through table_route.

Installed on the app's own Router subclass (App setting Router;
faust_guarantees/classes.py).
"""

from __future__ import annotations

import logging
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "route-metadata"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.app.router:Router.route_req": "90a030265117",
}


def install(guarantees: Guarantees) -> None:
    from faust.app.router import Router

    stock_route_req = Router.route_req

    async def route_req(self: Any, table_name: str, key: Any, web: Any, request: Any) -> Any:
        topic = self.app.tables[table_name].changelog_topic.get_topic_name()
        await self.app.producer.maybe_start()
        await self.app.producer._ensure_producer().partitions_for(topic)  # cached after the first call
        return await stock_route_req(self, table_name, key, web, request)

    guarantees.classes.replace(Router, "route_req", route_req)
