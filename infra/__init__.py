"""Local services started for you: Kafka (infra/kafka) and PostgreSQL (infra/postgres.py)."""

from __future__ import annotations

import os
from pathlib import Path


def data_home(home: Path | str | None = None) -> Path:
    """The directory holding all local state of the project: ``home``, else
    ``$FAUST_SEMANTICS_HOME``, else ``~/.cache/faust-semantics`` (absolute)."""
    if home is not None:
        return Path(home).expanduser().absolute()
    env = os.environ.get("FAUST_SEMANTICS_HOME")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "faust-semantics"
