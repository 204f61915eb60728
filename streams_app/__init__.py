"""The payments pipeline: a Faust app that makes Kafka delivery semantics visible.

``faust -A streams_app worker`` finds :data:`app` here. Importing the package
wires everything explicitly, in dependency order: the app and its settings,
the topic registry, the tables, the agents, the web views and the commands.
"""

from .app import app, settings
from . import topics  # noqa: F401  (the registry; agents import it too)
import tables  # noqa: F401,E402
import agents  # noqa: F401,E402
from . import web, commands  # noqa: F401,E402

__all__ = ["app", "settings"]
