"""The payments pipeline: a Faust app that makes Kafka delivery semantics visible.

``faust -A streams_app worker`` asks this package for :data:`app`; the first time
anything does, the app is built from the environment's settings
(:func:`streams_app.application.current_app`) and :func:`_build`, the composition root,
declares on it, in dependency order, the topics, the tables, the agents of the stages this
worker runs (``STAGES``), the web views, and registers the CLI commands. What it built is
:data:`pipeline`. Importing any other module of the project declares nothing: each layer
offers a factory (``declare_topics``, ``declare_tables``, each stage's ``register``, the
views' ``register``) that only this root calls, so the lab and the benchmark read what they
need without an app, or a patched Faust.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Pipeline", "app", "pipeline", "settings"]

_BUILT: dict[str, Any] = {}


@dataclass(frozen=True)
class Pipeline:
    """What the composition root declared on the app."""

    topics: Any      # streams_app.topics.Topics
    tables: Any      # tables.Tables
    processing: Any  # agents.processing.AppProcessing
    #: The stages this worker runs, by name (agents.dedup.DedupStage, agents.apply.ApplyStage,
    #: agents.sink.Sink).
    stages: dict[str, Any]
    views: Any       # views.web.WebViews


def __getattr__(name: str) -> Any:
    if name not in ("app", "pipeline", "settings"):
        raise AttributeError(f"module 'streams_app' has no attribute {name!r}")
    if not _BUILT:
        _build()
    return _BUILT[name]


def _layer(module: str) -> Any:
    # The layers above this package (tables, agents, views, lab) are imported by name: the
    # layers contract (setup.cfg) forbids this package to import them, and only this root
    # composes them.
    return importlib.import_module(module)


def _build() -> None:
    from . import faults
    from .application import current_app
    from .topics import declare_topics

    app = current_app()
    topics = declare_topics(app)
    tables = _layer("tables").declare_tables(app)
    # A lab fault, armed by FAULT_STORE_ERROR_AT only. Installed here, not in create_app with
    # the others: it wraps a table's store, and tables exist only from this root on.
    faults.install_store_errors(tables.seen_events)
    processing = _layer("agents.processing").AppProcessing(app, dead_letters=topics.dead_letters,
                                                           counters=tables.counters)
    stages = {stage: _layer(f"agents.{stage}").register(app, topics, tables, processing)
              for stage in app.settings.stages}
    views = _layer("views.web").register(app, tables, stages.get("sink"))
    for commands in ("streams_app.commands", "lab.commands"):  # registered with Faust's CLI
        importlib.import_module(commands)
    built = Pipeline(topics=topics, tables=tables, processing=processing, stages=stages, views=views)
    _BUILT.update(app=app, settings=app.settings, pipeline=built)
    globals().update(_BUILT)
