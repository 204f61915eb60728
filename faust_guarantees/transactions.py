"""Faust's transactional producers: one per topic group and source partition number."""

from __future__ import annotations

from typing import Any


def transactional_id(app: Any, tp: Any) -> str:
    """The id of the transactional producer that commits ``tp``'s offsets and carries the
    sends of its events (Faust's naming: ``{app id}-{topic group}-{partition}``)."""
    return f"{app.conf.id}-{app.assignor.group_for_topic(tp.topic)}-{tp.partition}"
