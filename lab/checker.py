"""Count what happened after a run: effects, Kafka output, balances, dead letters.

Three independent sources, none of them the workers' own counters:

- the sink database, or the payment API's for an API sink (SQL on the
  ``charges`` table): duplicate and lost charges;
- Kafka read with ``read_committed`` by a fresh consumer: the applied output's
  duplicates and gaps, open transactions, and the ``balances`` changelog (the
  table's durable state) compared with sums recomputed from the input, the
  check Kafka Streams' own exactly-once system test makes;
- the dead-letter topic: every malformed input must be there, with a reason.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from common.readback import end_offsets, read_topic
from common.redact import masked_errors
from faust_guarantees.dead_letters import DeadLetter
from streams_app.traffic import Traffic

from .workers import PipelineConfig

PIPELINE_TOPICS = ("raw", "dlq", "events", "unique", "applied")
TABLES = ("balances", "seen-events", "pipeline-counters")


@dataclass
class Counts:
    """The measured outcome of one run (the lab's JSON keys)."""

    events: int = 0
    unique_events: int = 0
    charged_unique: int = 0
    duplicate_charges: int = 0
    lost: int = 0
    output_duplicates: int = 0
    output_missing: int = 0
    open_transactions: int = 0
    balance_mismatches: int = 0
    dead_lettered: int = 0
    expected_dead_letters: int = 0
    dead_letters_without_reason: int = 0
    log_duplicates: int = 0
    mismatch_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def charges_by_event(sink_db: str, column: str = "event_id") -> Counter[str]:
    """event id -> number of charge rows, straight from the database (the payment
    API's database keeps the event id in ``reference``)."""
    sql = f"SELECT {column}, COUNT(*) FROM charges WHERE {column} IS NOT NULL GROUP BY {column}"
    if urlparse(sink_db).scheme == "sqlite":
        conn = sqlite3.connect(sink_db.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(sql).fetchall()
        except sqlite3.OperationalError:  # no table: the sink never ran
            rows = []
        finally:
            conn.close()
    else:
        import psycopg

        with masked_errors(sink_db), psycopg.connect(sink_db) as conn:
            rows = conn.execute(sql).fetchall()
    return Counter({event_id: int(n) for event_id, n in rows})


def duplicate_counted_topics(config: PipelineConfig) -> tuple[str, str, str]:
    """The logs whose repeated records :func:`check` counts as ``log_duplicates``: one
    record per unique event id each (``unique``, ``applied``, the dedup changelog)."""
    return config.topic("unique"), config.topic("applied"), f"{config.app_id}-seen-events-changelog"


async def check(config: PipelineConfig, traffic: Traffic) -> Counts:
    bootstrap = config.bootstrap
    expected_ids = set(traffic.unique_events)
    counts = Counts(events=len(traffic.records), unique_events=len(expected_ids))

    if config.sink_target == "api":
        charges = charges_by_event(config.payment_api_db, column="reference")
    else:
        charges = charges_by_event(config.sink_db)
    counts.charged_unique = len(expected_ids & set(charges))
    counts.duplicate_charges = sum(n - 1 for n in charges.values())
    counts.lost = len(expected_ids - set(charges))

    applied = await read_topic(bootstrap, config.topic("applied"))
    applied_ids = Counter(_event_id(r.value) for r in applied)
    applied_ids.pop(None, None)  # not a payment (a test's poison record): the DLQ holds it
    counts.output_duplicates = sum(n - 1 for n in applied_ids.values())
    counts.output_missing = len(expected_ids - set(applied_ids))

    # The pipeline's logs hold one record per unique event id (unique, applied) and one
    # seen-row per id (the dedup changelog) unless a record was written twice: a crash
    # before the commit under at_least_once, or a non-idempotent producer's retry, which
    # can hit any of them (it resends whichever batch lost its answer).
    unique_topic, _applied, seen_changelog = duplicate_counted_topics(config)
    unique = Counter(_event_id(r.value) for r in await read_topic(bootstrap, unique_topic))
    unique.pop(None, None)
    seen_rows = Counter(r.key for r in await read_topic(bootstrap, seen_changelog))
    counts.log_duplicates = (sum(n - 1 for n in unique.values()) + counts.output_duplicates
                             + sum(n - 1 for n in seen_rows.values()))

    changelogs = [f"{config.app_id}-{table}-changelog" for table in TABLES]
    offsets = await end_offsets(bootstrap, [config.topic(t) for t in PIPELINE_TOPICS] + changelogs)
    counts.open_transactions = offsets.open_transactions

    balances = await _final_balances(bootstrap, f"{config.app_id}-balances-changelog")
    expected = traffic.expected_balances
    for account in sorted(set(expected) | set(balances)):
        for currency in sorted(set(expected.get(account, {})) | set(balances.get(account, {}))):
            want = expected.get(account, {}).get(currency, 0)
            got = balances.get(account, {}).get(currency, 0)
            if want != got:
                counts.balance_mismatches += 1
                if len(counts.mismatch_examples) < 5:
                    counts.mismatch_examples.append(f"{account} {currency}: expected {want}, got {got}")

    dlq = await read_topic(bootstrap, config.topic("dlq"))
    letters = [DeadLetter.from_record(r) for r in dlq]
    counts.dead_lettered = len({letter.source for letter in letters})
    counts.expected_dead_letters = sum(traffic.bad.values())
    counts.dead_letters_without_reason = sum(1 for letter in letters if not letter.reason)
    return counts


async def _final_balances(bootstrap: str, changelog: str) -> dict[str, dict[str, int]]:
    """The last committed value of every key of the balances changelog."""
    latest: dict[str, dict[str, int]] = {}
    for record in await read_topic(bootstrap, changelog):
        key = json.loads(record.key)
        latest[key] = json.loads(record.value) if record.value is not None else {}
    return latest


def _event_id(value: bytes | None) -> str | None:
    try:
        return json.loads(value)["event_id"]
    except (TypeError, ValueError, KeyError):
        return None

