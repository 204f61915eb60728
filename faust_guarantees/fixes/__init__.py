"""The fixes, one module each; this is their order (documentation and installation).

Each module's docstring is the fix's one description (what stock Faust does, what that
breaks, the upstream report, the fix); ``NAME`` is the name ``FAUST_FIXES`` and
:func:`faust_guarantees.install` take; ``ONLY`` the guarantee it is for (None: every one);
``UPSTREAM`` the upstream functions it replaces or relies on, with the fingerprint of
their source as verified; ``install(guarantees)`` applies it.
"""

from __future__ import annotations

from types import ModuleType

from . import (
    bounded_kafka_requests,
    bounded_stop,
    bulk_restore,
    changelog_metadata,
    commit_at_revocation,
    commit_gate,
    commit_order,
    concurrent_commits,
    direct_delivery,
    exact_gaps,
    fenced_restart,
    held_records_released,
    kafka_wait_at_start,
    livelock_position,
    lso_consistency_check,
    no_head_of_line_blocking,
    persisted_offsets,
    recovery_highwater,
    recovery_idle_wait,
    revoked_producers,
    route_metadata,
    seek_after_queue_clear,
    seek_uncommitted_partitions,
    shutdown_commit,
    source_partition_transactions,
    stalled_partition_heal,
    verified_restore_end,
    whole_transactions,
    wipe_unclean_state,
)

MODULES: tuple[ModuleType, ...] = (
    stalled_partition_heal,
    commit_at_revocation,
    whole_transactions,
    recovery_idle_wait,
    verified_restore_end,
    exact_gaps,
    bulk_restore,
    changelog_metadata,
    shutdown_commit,
    commit_order,
    livelock_position,
    lso_consistency_check,
    seek_uncommitted_partitions,
    seek_after_queue_clear,
    source_partition_transactions,
    commit_gate,
    persisted_offsets,
    wipe_unclean_state,
    fenced_restart,
    revoked_producers,
    recovery_highwater,
    direct_delivery,
    concurrent_commits,
    route_metadata,
    no_head_of_line_blocking,
    bounded_stop,
    held_records_released,
    kafka_wait_at_start,
    bounded_kafka_requests,
)

BY_NAME: dict[str, ModuleType] = {module.NAME: module for module in MODULES}


def description(module: ModuleType) -> str:
    """The fix's description: its docstring after the title line, paragraphs joined."""
    _title, _, text = (module.__doc__ or "").strip().partition("\n\n")
    return " ".join(text.split())
