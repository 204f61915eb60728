"""The one Faust application of this project.

Settings are read and validated once (:mod:`streams_app.settings`); Faust gets
the validated values explicitly and an environment without the variables we
own, so the guarantee shown on the dashboard is the one in force.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust

from common.redact import mask_url

from . import faults, faust_fixes
from .exceptions import SettingsError
from .health import HealthMonitor
from .settings import Settings


def load_settings() -> Settings:
    """Validate the configuration or stop with a message that says what to change."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"streams_app: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


StartCheck = Callable[[], Awaitable[None]]


class PaymentsApp(faust.App):
    """faust.App plus the lifecycle hooks of the fixes in streams_app/faust_fixes.py,
    and start checks: coroutines a module registers in :attr:`start_checks` (the
    sink: the payment API's key retention) that run when a worker starts, before
    any table or agent. One that raises SettingsError refuses the start; the
    worker exits with its message."""

    def __init__(self, *args: Any, health: HealthMonitor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_checks: list[StartCheck] = []
        self.health = health

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        # Faust's hook for an agent that raised out of its loop (docs: agent-errors).
        self.health.agent_crashed(agent.name, exc)
        await super()._on_agent_error(agent, exc)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for check in self.start_checks:
            await check()
        faust_fixes.on_worker_start(
            Path(self.conf.tabledir), settings.faust_guarantee == "exactly_once", settings.faust_fixes
        )

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        faust_fixes.on_worker_stopped(Path(self.conf.tabledir))


settings = load_settings()

app = PaymentsApp(
    settings.app_id,
    health=HealthMonitor(exactly_once=settings.faust_guarantee == "exactly_once"),
    # Faust's Kafka driver uses only host and port of this URL (credentials go in
    # broker_credentials), and its worker banner prints it: hand it the masked form.
    broker=mask_url(settings.broker_url),
    processing_guarantee=settings.faust_guarantee,
    store=settings.store,
    datadir=str(settings.table_dir),
    topic_partitions=settings.partitions,
    # One replica is all a single local broker has; a production cluster sets 3.
    topic_replication_factor=1,
    # Faust binds 0.0.0.0 by default; a dashboard of table state stays local
    # unless the operator asks for more.
    web_bind=settings.web_bind,
    web_port=settings.web_port,
    # table_route forwards a request to the worker owning the key through its
    # canonical URL, so it must be an address the other workers can reach.
    web_host="127.0.0.1" if settings.web_bind in {"127.0.0.1", "0.0.0.0"} else settings.web_bind,
    web_tables_enabled=settings.web_tables_enabled,
    # Ask for acks from all in-sync replicas: an acknowledged output is durable.
    producer_acks=-1,
    # Agents, tables, views and commands are imported explicitly by the
    # package (streams_app/__init__.py): no scanning, no surprises.
    autodiscover=False,
    env=settings.faust_env(os.environ),
)

faust_fixes.install(
    app, settings.faust_fixes,
    exactly_once=settings.faust_guarantee == "exactly_once",
    at_most_once=settings.processing_guarantee == "at_most_once",
    producer_idempotence=settings.producer_idempotence,
)
faults.install_seek_backs(app)
