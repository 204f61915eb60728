"""The compacted changelogs roll a segment every SEGMENT_MS: Kafka never compacts the active
segment (7 days by default), so a restore would read every update of the run."""

from __future__ import annotations

from streams_app import app, pipeline
from tables.changelog import SEGMENT_MS


def test_the_compacted_changelogs_roll_segments_the_seen_events_one_expires():
    tables = pipeline.tables
    for table in (tables.balances.table, tables.counters.table):
        assert table.changelog_topic.config["segment.ms"] == str(SEGMENT_MS)
        assert table.changelog_topic.config.get("cleanup.policy", "compact") == "compact"
    seen = tables.seen_events.table.changelog_topic.config
    assert seen["cleanup.policy"] == "compact,delete"
    assert app.tables  # declared on the entry point's app
