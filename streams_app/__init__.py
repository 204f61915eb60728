"""The payments pipeline: a Faust app that makes Kafka delivery semantics visible.

``faust -A streams_app worker`` asks this package for :data:`app`; the first time
anything does, the app is built from the environment's settings
(:func:`streams_app.application.current_app`) and then, in dependency order, its
topic registry, tables, the agents of its stages, web views and commands are declared on it. Importing
a plain module of the package (settings, admin, traffic, models...) builds nothing:
the lab and the benchmark read what they need without an app, or a patched Faust.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["app", "settings"]

_BUILT: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'streams_app' has no attribute {name!r}")
    if not _BUILT:
        _build()
    return _BUILT[name]


def _build() -> None:
    from .application import current_app

    app = current_app()
    # The composition root: every layer's declarations, up to the lab's commands; of the
    # agents, only the stages this worker runs (STAGES).
    stages = tuple(f"agents.{stage}" for stage in app.settings.stages)
    for module in ("streams_app.topics", "tables", *stages, "views.web", "streams_app.commands",
                   "lab.commands"):
        importlib.import_module(module)
    _BUILT.update(app=app, settings=app.settings)
    globals().update(_BUILT)
