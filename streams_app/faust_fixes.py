"""Workarounds for faust-streaming 0.15.3 bugs that break delivery guarantees.

Every change this project makes to Faust's behaviour is in this module, each
under a name that ``FAUST_FIXES`` can switch off (``FAUST_FIXES=none`` runs
stock Faust, which is how the lab shows what each bug does). Each entry says
what stock Faust does, what that breaks, the upstream report, and the fix.

Read with ../shared/notes/faust-semantics.md; paths below are relative to
site-packages/faust.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import logging
import shutil
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import metrics

log = logging.getLogger(__name__)

FIXES: Mapping[str, str] = {
    "stalled-partition-heal": (
        "Faust commits a partition only up to the first offset it has not seen acked. "
        "Two things leave a head gap that is never acked, after which the partition never "
        "commits again (lag grows forever; a restart reprocesses everything after it): "
        "a record lost between fetch and agent (a queue cleared on rebalance or recovery, "
        "faust-streaming#596 and the resume-before-seek race), and, on a topic written "
        "in transactions, offsets that hold only transaction markers or aborted records "
        "which Faust's gap tracking (Consumer._add_gap) missed. Fix: a partition whose "
        "acked offsets start past its committed offset for 3 commit intervals is probed "
        "with a read_committed reader. If the gap holds no committed record, it is "
        "registered as a gap (nothing to deliver, nothing to duplicate). If it holds "
        "one, the partition is sought back to deliver it again; the records after it "
        "that were already processed (under exactly_once, into the open transaction) "
        "are skipped when they come again (streams_app/processing.py), so nothing is "
        "repeated. A commit in flight is not a stall: it removes the offsets it commits "
        "from the acked list before it awaits the producer flush and the broker, and "
        "updates the committed offset only after, so the check waits for it to end "
        "(at commit interval 0.1 s a commit took up to 0.46 s, and the heal sought "
        "partitions back 40 times in 17 s of a benchmark run). A partition behind its "
        "high watermark with nothing acked after its committed offset (records lost at "
        "its tail, where no hole shows) is probed the same way once the worker has had "
        "nothing in progress for 5 s; a range that holds only transaction markers is "
        "probed once."
    ),
    "commit-at-revocation": (
        "Every guarantee: Consumer.on_partitions_revoked (transport/consumer.py) drops its "
        "bookkeeping of the revoked partitions (acked offsets, gaps, committed offsets) "
        "BEFORE it calls the app's revocation handler, whose wait_empty commit is meant to "
        "commit what was processed; the rebalance protocol is eager, so every partition is "
        "revoked and that commit finds nothing to commit. Under at_least_once everything "
        "processed since the last timer commit is processed again after every rebalance "
        "(faust-streaming#502). Under exactly_once those events' outputs sit in an open "
        "transaction: a partition the worker keeps goes back to its committed offset and "
        "processes them again into the same transaction, which commits both copies (lab, "
        "exactly_once rebalance at 5,000 events: 1,378 duplicates in the events log, 2 in "
        "applied, 2 wrong balances). Fix: the bookkeeping is dropped after the handler, so "
        "its commit covers every processed event, as Kafka's own clients commit in "
        "onPartitionsRevoked."
    ),
    "recovery-idle-wait": (
        "exactly_once: a changelog written in transactions ends with a commit marker, so "
        "its high watermark is one past the last record and table recovery never sees it "
        "reached. Faust then decides the rest is transaction markers only after its "
        "changelog queue stayed empty for two 5-second waits (tables/recovery.py "
        "_slurp_changelogs, the aborted-transaction check added for faust-streaming#47): "
        "every exactly_once start and every rebalance stalled 10 to 15 s with nothing "
        "left to read (lab logs: 'Still fetching changelog topics ... remaining=769' "
        "for 14 s, then 'Aborted tx until highwater'). Fix: the same check after two "
        "1-second waits; the check itself (the reader's position has passed the high "
        "watermark, twice in a row with an empty queue) is Faust's."
    ),
    "exact-gaps": (
        "Every guarantee: Faust commits a partition past an offset it never saw acked when "
        "that offset is the only one missing at the head (Consumer._new_offset: "
        "'min(acked) - committed > 1'). The tolerance makes up for an off-by-one in its "
        "gap bookkeeping (Consumer._add_gap starts gaps after the committed offset, which "
        "is the NEXT offset to read, and after a seek the read offset means 'next', not "
        "'last read'), so a transaction marker at the committed offset is never "
        "registered. But a real record dropped between fetch and agent is committed past "
        "the same way and lost for good (lab: exactly_once rebalance at 5,000 events, one "
        "event missing from applied and the sink, its account off by its amount). A "
        "seek Faust makes while the fetcher runs (Consumer.seek, called from the event "
        "loop, not the consumer thread) also lets records of a batch fetched BEFORE the "
        "seek through after it; they move the read offset past the re-fetched records, "
        "which Faust then drops (the stall heal's first seek back had no effect). Fix: "
        "our seeks (the stall heal's, seek-after-queue-clear's) run in the consumer "
        "thread with the consumer's flow stopped, so no batch fetched before them is "
        "delivered after them; the offsets the client itself skipped after a seek or "
        "between two records (transaction markers, aborted records) are registered as "
        "gaps exactly, from the expected next offset up to the record it returns; and "
        "a commit never passes an offset that is neither acked nor such a gap; offsets "
        "both acked and in a gap count once (a duplicate ended Faust's consecutive run, "
        "robinhood/faust#625). A hole left by a dropped record now stops the partition's "
        "commits until the stall heal delivers the record again. Two more ways to lose "
        "records between fetch and agent, found under a burst of stall-heal seeks "
        "(at_least_once, commit interval 0.1 s): (1) stopping the flow ends Faust's "
        "getmany in the middle of its batch, and the client's position is already past "
        "the records it did not deliver, in EVERY partition of the batch; a rebalance "
        "seeks every partition afterwards, a seek of one partition did not, and at a "
        "partition's tail nothing ever delivered them (the worker went silent with lag). "
        "(2) Faust's Consumer.wait_for_stopped_flow never waits (_wait_next_records SETS "
        "not_waiting_next_records where it means to clear it), so when the flow resumed "
        "before getmany looked, it went on delivering a batch fetched before the seek. "
        "Fix: the client counts its seeks per partition (in the consumer thread, where "
        "seeks and fetches run one at a time) and each fetch notes the counts; a record "
        "fetched before a seek of its partition that has run since is not delivered, and "
        "a partition whose fetched records were not all delivered (and, when the flow "
        "stopped during the batch, the record being handed over then, whose delivery the "
        "stop cancels) is sought back to the first of them, unless a seek ran since its "
        "fetch; a record delivered twice this way is skipped as already processed "
        "(streams_app/processing.py). Faust's recovery seeks (perform_seek) with the "
        "fetcher delivering: records fetched after the client's seek and delivered before "
        "the seek's bookkeeping made the next record look like a jump from the sought "
        "offset, a gap over records that were delivered and then cleared with the queues "
        "(CI and lab, exactly_once crash runs at commit interval 0.1 s: 4 to 28 events "
        "lost). Fix: perform_seek runs with the flow stopped, and with direct-delivery the "
        "gaps come only from what the client returned, never from Faust's read offset."
    ),
    "bulk-restore": (
        "Every guarantee (speed): Faust restores a table one changelog record at a time "
        "through its stream machinery, about 5,000 records/s here, so a 1,000,000-key "
        "dedup table took over 3 minutes to restore when the local state was lost (a new "
        "machine, or the exactly_once wipe after a crash). Fix: before Faust's recovery "
        "reads an active changelog partition that is at least 10,000 records behind, a "
        "plain read_committed consumer reads it in large fetches and writes each batch "
        "into RocksDB with one WriteBatch, raw bytes as Faust's apply_changelog_batch "
        "writes them, then sets the persisted offset; Faust reads only the rest "
        "(tables/restore.py)."
    ),
    "changelog-metadata": (
        "Every guarantee: the first write to a table checks that its changelog has as many "
        "partitions as the source topic (tables/base.py _verify_source_topic_partitions), "
        "reading the consumer's metadata snapshot. Right after the changelog topic is "
        "created, or under load, the snapshot can still list it with 0 partitions, and the "
        "check raises PartitionsMismatch ('... has 4 partitions, but the changelog topic "
        "... has 0 partitions'): the write fails and the event is dead-lettered although "
        "it is valid (cf. robinhood/faust#325, reported as intermittent). Fix: a changelog "
        "the snapshot does not know yet (0 partitions) is not a mismatch; the check runs "
        "again at the next write. A real mismatch (e.g. 4 against 8) still raises."
    ),
    "shutdown-commit": (
        "Every guarantee: on SIGTERM Faust's consumer makes a last commit "
        "(Consumer.commit_and_end_transactions) before it stops its consumer thread. When "
        "that commit raises (seen under exactly_once: aiokafka's IllegalOperation 'Not in "
        "the middle of a transaction' for a producer whose transaction had already ended), "
        "the consumer's on_stop aborts, the thread is never stopped and the process hangs "
        "after 'Closing event loop' until SIGKILL (robinhood/faust#484, #684). Under "
        "exactly_once the stop also ends every transaction while Faust's periodic commit "
        "task still runs: its next commit sends offsets to a producer outside any "
        "transaction, raises the same IllegalOperation and crashes the worker, which exits "
        "1 on a graceful stop (measured at commit interval 0.1 s). Fix: a failed final "
        "commit is logged and the shutdown goes on, and under exactly_once no commit is "
        "attempted once a stop has ended the transactions. Nothing is lost: the uncommitted "
        "events are delivered again to the partitions' next owner, and under exactly_once "
        "their open transactions are aborted."
    ),
    "commit-order": (
        "at_most_once (this project's mode; Faust has none): a partition has two "
        "committers, each stage's commit BEFORE it processes an event "
        "(streams_app/processing.py _commit_through) and Faust's periodic commit of acked "
        "offsets. Faust computes its offsets, then flushes the producer, then commits "
        "(Consumer._commit_offsets), and the consumer thread runs two calls at once: a "
        "commit computed before later pre-commits can reach the broker after them and move "
        "the committed offset BACK, so a crash then delivers again events already "
        "processed. Seen on the broker: the group's commits in __consumer_offsets of one "
        "at_most_once random-kills run (1,000 events, 6 kills) went 92 then 91 and 115 then "
        "114 on unique-1, 150 then 149 on unique-3, 200 then 199 on applied-2. "
        "Fix: commits go to the broker one at a time, and an offset at or below one "
        "already committed for its partition is not sent."
    ),
    "livelock-position": (
        "Every guarantee: Faust's livelock detector (Consumer._commit_livelock_detector, every "
        "2.5 commit intervals) reads aiokafka's TopicPartitionState.position of every assigned "
        "partition (AIOKafkaConsumerThread.verify_event_path), and aiokafka ASSERTS that a "
        "position exists. A partition just assigned or sought, waiting for its offset, has "
        "none: the AssertionError crashes the consumer service and the worker stops (seen "
        "200 ms after 'Worker ready' at commit interval 0.1 s, in 1 of 6 runs of the "
        "exactly_once graceful-stop test; the benchmark's 0.1 s runs exited 1 too). No "
        "upstream report found. Fix: a partition without a position is skipped by that "
        "check; there is nothing to verify until it has one."
    ),
    "lso-consistency-check": (
        "exactly_once: Faust's recovery compares the table's persisted offset with the "
        "changelog's read_committed end offset, which an open transaction of a SIGKILLed "
        "worker holds back until the broker aborts it; the check then crashes every "
        "worker that recovers that partition (ConsistencyError '... is higher than the "
        "last offset in that topic (highwater)') in a crash loop. With persisted offsets "
        "written only for committed transactions and local state wiped after an unclean "
        "stop, the persisted offset is committed data: the check is switched off "
        "(recovery_consistency_check=False)."
    ),
    "seek-uncommitted-partitions": (
        "Every guarantee: after recovery Faust resumes the fetcher, clears the stream "
        "queues and then seeks every partition to its committed offset, but aiokafka's "
        "seek_to_committed skips partitions that have no committed offset yet (None or "
        "0). Records fetched and queued before the seek are dropped with the queues and "
        "never fetched again: a hole in the acked offsets, after which Faust never "
        "commits that partition again (faust-streaming#596). It happens to any worker "
        "restarted before its first commit of a partition, e.g. killed within the first "
        "commit interval. Fix: partitions without a committed offset are sought to the "
        "auto.offset.reset position too, and that position becomes their commit base: "
        "with no committed offset, Faust (and exact-gaps) commit from whatever offset is "
        "acked first, so records dropped at the head of a never-committed partition were "
        "committed past without a trace. Seen in CI: an exactly_once sink restarted before "
        "its first commit of a partition processed the record after 24 queue-cleared ones "
        "just before Faust's queue clear was repaired (seek-after-queue-clear), and a "
        "commit at interval 0.1 s in that 60 ms window committed past all 24 (21 charges "
        "lost). With a base the hole stops the commit until they are delivered again."
    ),
    "seek-after-queue-clear": (
        "Every guarantee: when recovery completes, Faust seeks the stream partitions to "
        "their committed offsets and only THEN resumes flow control, which clears the "
        "stream queues (tables/recovery.py on_recovery_completed and _resume_streams). "
        "With the fetcher already running, records fetched between the seek and the "
        "clear are dropped from the queues while the fetcher's read offset has moved past "
        "them: they are never delivered. Faust's commit guard tolerates a head gap of one "
        "offset (Consumer._new_offset: min(acked) - committed > 1), so a single dropped "
        "record is committed past and lost for good; 2 of 4 exactly_once "
        "crash-mid-transaction lab runs (seed 11) lost an event, 0 of 4 with the fix. Fix: the stream partitions are "
        "sought to their committed offsets once more after Faust's clear; what was already "
        "processed is skipped on re-delivery (streams_app/processing.py)."
    ),
    "source-partition-transactions": (
        "exactly_once: stock TransactionManager.send (transport/consumer.py) picks the "
        "transactional producer by the partition of the OUTPUT record, while the source "
        "offset is committed by the producer of the SOURCE partition. An event read from "
        "partition 2 whose output hashes to partition 1 is split over two transactions "
        "committed one after the other: a crash between them duplicates or loses it. "
        "Outputs to a topic the app does not consume get no transactional producer at "
        "all (faust-streaming#177), and outputs to a partition owned by another worker "
        "fail with 'No transaction producer found'. Fix: every send made while "
        "processing an event uses the transactional producer of that event's source "
        "partition, the one that commits its offset. Changelog writes sent later by the "
        "ProducerBuffer keep Faust's routing, except when the group leader's metadata "
        "missed a just-created changelog: stock send then raises KeyError in "
        "PartitionAssignor.group_for_topic and crashes the worker; when every other "
        "topic is in one group (topics are grouped by partition count; this app has one "
        "count) that group is used. And a changelog write names its partition, but stock "
        "asks the consumer's metadata for it, which lacks a just-created changelog: the "
        "answer is None and stock sends the record outside any transaction (a table row "
        "that survives an abort), while a transactional id built from it ('<app>-1-None') "
        "names no producer (ProducerSendError, then a worker that hangs with its web "
        "server answering: 1 of 7 fresh exactly_once starts). The partition given is used."
    ),
    "commit-gate": (
        "exactly_once: Faust commits from a timer while agents keep processing, so an "
        "event processed during a commit has its outputs in transaction N and its offset "
        "in N+1 (faust-streaming#517: duplicates in read_committed output after kill -9). "
        "Table changelog records still in Faust's ProducerBuffer at commit time land in "
        "the next transaction too. Fix: commits take the CommitGate "
        "(streams_app/processing.py), which waits for events in progress and holds new "
        "ones, and drain the ProducerBuffer before sending offsets."
    ),
    "persisted-offsets": (
        "exactly_once: Table._on_changelog_sent registers the offset to persist under the "
        "CHANGELOG partition, TableManager.on_commit looks it up under the SOURCE "
        "partitions, so RocksDB's persisted offset is never written and every restart "
        "replays the whole changelog. Fix: on commit, persist the pending changelog "
        "offsets of the committed partition numbers (tables are co-partitioned)."
    ),
    "wipe-unclean-state": (
        "exactly_once: RocksDB rows written by a transaction that was later aborted "
        "(the worker was killed) stay in the local store, because recovery only replays "
        "committed changelog records on top of it (robinhood/faust#340: a table loses "
        "events after kill -9). A dedup table would then drop an event whose effects were "
        "rolled back. Fix, as Kafka Streams does under EOS: a worker that did not stop "
        "cleanly deletes its local table state and restores it from the committed "
        "changelog."
    ),
    "fenced-restart": (
        "exactly_once: a worker paused past its session timeout (a GC pause, a stopped VM) "
        "comes back a zombie: another worker owns its partitions and has fenced its "
        "transactional producers. Stock TransactionManager.commit (transport/consumer.py) "
        "catches the ProducerFenced of its next commit and crashes the app (exit 1), and its "
        "shutdown marks the stop clean: the restart keeps local table rows written by the "
        "aborted transactions (a dedup row of an event whose output was rolled back loses "
        "that event). Fix: the fenced commit is not retried, events in progress are neither "
        "acked as done nor dead-lettered (streams_app/processing.py), /health says 'fenced', "
        "and the worker stops with its stop marked unclean, so the supervisor's restart wipes "
        "the local state and restores it from the committed changelog (wipe-unclean-state). "
        "Rejoining in the same process (Kafka Streams' 'task migrated') was tried: after an "
        "in-process wipe and recovery the restored balances came out short (19-24 output "
        "duplicates, balances off) for reasons not yet found; a restart is exact."
    ),
    "recovery-highwater": (
        "exactly_once: table recovery reads each changelog partition up to its highwater, which "
        "Faust takes from AIOKafkaConsumerThread._highwaters: under transactions the consumer's "
        "cached last stable offset (AIOKafkaConsumer.last_stable_offset), known only once a fetch "
        "of that partition has answered. For a partition not fetched since it was assigned it is "
        "None, Faust turns None into -1, and recovery reads nothing: the table starts from "
        "whatever the local store holds. Seen when a fenced worker rejoined with its local state "
        "wiped: 'Highwater - Active' -1 for every active changelog partition, every balance of "
        "those partitions restarted from 0 and 24 events were forwarded twice (their dedup rows "
        "gone). Fix: ask the broker (ListOffsets with the consumer's read_committed isolation "
        "level: the last stable offset) as Faust does outside transactions."
    ),
    "direct-delivery": (
        "Every guarantee (speed): the fetcher hands each message to the conductor through "
        "Service.wait_first(callback(message), suspend_flow.wait()) "
        "(Consumer._drain_messages): four tasks, an asyncio.wait and three cancellations per "
        "message, so that a delivery blocked on a full stream queue, suspended flow control, "
        "a full producer buffer or the conductor's index lock is abandoned when a rebalance "
        "suspends the flow. A delivery that cannot block needs none of it; measured, "
        "wait_first was 7 % of a batched pipeline worker's time and halved a one-hop "
        "agent's throughput (shared/notes/faust-performance.md). Fix: when none of those "
        "can block (the flow is not suspended, flow control is active, the producer buffer "
        "is below its limit, the index lock is free and every stream queue of the partition "
        "has room), the message is delivered with a plain await; otherwise exactly as "
        "stock. Copies Faust 0.15's _drain_messages: installed on faust-streaming 0.15 only."
    ),
    "concurrent-commits": (
        "exactly_once (speed): Faust keeps one transactional producer per source partition "
        "and commits them one after another (aiokafka driver Producer.commit_transactions: "
        "send offsets, commit, begin, ~6.5-7 ms each here), so a commit takes ~27 ms at 4 "
        "partitions and grows with every partition a worker holds; the commit gate holds "
        "the stages for all of it, and at a 100 ms commit interval that is a quarter of "
        "the time. The transactions are independent (one per partition, each under its "
        "own lock). Fix: the same three steps for every producer at once; a failure of "
        "any raises as before, after the others finished."
    ),
    "route-metadata": (
        "table_route asks the plain (non-transactional) producer for the key's partition; "
        "a producer that never sent to the table's changelog (every producer under "
        "exactly_once, a fresh worker under at_least_once) has no metadata for it and the "
        "view fails with TypeError 'NoneType' object is not iterable (HTTP 500; seen on a "
        "fresh exactly_once worker, not on every run). Fix: Router.route_req first waits "
        "for that topic's metadata."
    ),
}

CLEAN_STOP_MARKER = "RUNNING"

#: The library versions every fix was verified on (the lab's matrix, the regression tests).
VERIFIED_VERSIONS: Mapping[str, str] = {"faust": "0.15.3", "aiokafka": "0.14.0"}

#: The upstream code each fix replaces or relies on ("module:Class.attribute", or a whole
#: module) and a fingerprint of its source as verified (:func:`fingerprint`). A fix on a
#: changed body is a fix nobody checked: several replace upstream bodies with edited copies,
#: which a same-named change upstream would silently undo or break.
UPSTREAM: Mapping[str, Mapping[str, str]] = {
    "stalled-partition-heal": {"faust.transport.consumer:Consumer.ack": "5fcf41cf4515"},
    "commit-at-revocation": {"faust.transport.consumer:Consumer.on_partitions_revoked": "d04b7ae72c6f"},
    "recovery-idle-wait": {"faust.tables.recovery": "e6cada29f7af"},
    "exact-gaps": {
        "faust.transport.consumer:Consumer._wait_next_records": "6218e1969a63",
        "faust.transport.consumer:Consumer.getmany": "4b168d84882a",
        "faust.transport.consumer:Consumer.perform_seek": "0e8c130ff4b0",
        "faust.transport.consumer:Consumer.seek": "b86a9fe05f95",
        "faust.transport.consumer:Consumer._add_gap": "4df2573ded7c",
        "faust.transport.consumer:Consumer.stop_flow": "cf7e875a2b0d",
        "faust.transport.consumer:Consumer._new_offset": "1d2c7ea89a7a",
        "aiokafka.consumer.fetcher:Fetcher.seek_to": "f0ba6aba6c22",
        "aiokafka.consumer.fetcher:Fetcher.request_offset_reset": "e5bd8ba88386",
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._fetch_records": "39a2c6c79fc1",
    },
    "bulk-restore": {"faust.tables.recovery:Recovery._build_offsets": "27eec86be06c"},
    "changelog-metadata": {"faust.tables.base:Collection._verify_source_topic_partitions": "6814da56b0d8"},
    "shutdown-commit": {
        "faust.transport.consumer:Consumer.commit_and_end_transactions": "892377824b11",
        "faust.transport.consumer:Consumer.commit": "a354437baaa0",
    },
    "commit-order": {"faust.transport.consumer:ThreadDelegateConsumer._commit": "a20eec84e4b2"},
    "livelock-position": {
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.verify_event_path": "b983e7735f64",
    },
    "lso-consistency-check": {"faust.tables.recovery:Recovery._build_highwaters": "91b4cc0d3724"},
    "seek-uncommitted-partitions": {
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed": "775ab0adc4b0",
        "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed": "f6cd85c8b70a",
    },
    "seek-after-queue-clear": {
        "faust.tables.recovery:Recovery.on_recovery_completed": "6ef567acf072",
        "faust.tables.recovery:Recovery._resume_streams": "d986a6710c1a",
    },
    "source-partition-transactions": {"faust.transport.consumer:TransactionManager.send": "b8d126be9f10"},
    "commit-gate": {
        "faust.transport.consumer:Consumer.force_commit": "cc094614d22c",
        "faust.transport.producer:ProducerBuffer._send_pending": "4a9d5f932b56",
    },
    "persisted-offsets": {"faust.tables.manager:TableManager.on_commit": "2aef0784a10f"},
    "wipe-unclean-state": {},
    "fenced-restart": {"faust.transport.consumer:TransactionManager.commit": "fbb29c3467ac"},
    "recovery-highwater": {
        "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": "a7f4f97d9f32",
    },
    "direct-delivery": {"faust.transport.consumer:Consumer._drain_messages": "44a2500309e8"},
    "concurrent-commits": {"faust.transport.drivers.aiokafka:Producer.commit_transactions": "70091e6f4319"},
    "route-metadata": {"faust.app.router:Router.route_req": "90a030265117"},
}


def fingerprint(target: str) -> str:
    """The first 12 hex digits of the SHA-256 of ``target``'s stock source (the stock
    one even where a fix replaced it in this process); "no source" if it has none."""
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        obj = getattr(obj, part)
    while getattr(obj, "_stock", None) is not None:
        obj = obj._stock
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return "no source"
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def current_fingerprints(fixes: Sequence[str] = tuple(UPSTREAM)) -> dict[str, dict[str, str]]:
    """:data:`UPSTREAM` as the installed libraries have it: what to record once re-verified."""
    return {fix: {target: fingerprint(target) for target in UPSTREAM.get(fix, {})} for fix in fixes}


def unverified(enabled: Sequence[str], versions: Mapping[str, str] | None = None) -> list[str]:
    """What differs from the code the enabled fixes were verified on, one line per library
    version and per changed upstream function, each naming the fixes it concerns."""
    if versions is None:
        import aiokafka
        import faust

        versions = {"faust": faust.__version__, "aiokafka": aiokafka.__version__}
    problems = []
    for library, verified in VERIFIED_VERSIONS.items():
        found = versions.get(library)
        concerned = [fix for fix in enabled if any(t.split(".")[0] == library for t in UPSTREAM.get(fix, {}))]
        if found != verified and concerned:
            name = "faust-streaming" if library == "faust" else library
            problems.append(f"{name} {found} is installed, the fixes were verified on {verified}: "
                            f"re-verify {', '.join(concerned)}")
    for fix in enabled:
        for target, recorded in UPSTREAM.get(fix, {}).items():
            try:
                found_print = fingerprint(target)
            except (ImportError, AttributeError):
                found_print = "missing"
            if found_print != recorded:
                problems.append(f"{fix}: {target} is not the code it was verified on "
                                f"(fingerprint {found_print}, verified {recorded})")
    return problems


def _replace(owner: Any, name: str, fixed: Any) -> None:
    """Put ``fixed`` in place of ``owner.name``, marked as a fix and keeping the stock one
    (``_stock``: what :func:`fingerprint` reads, and what a fix calls through)."""
    fixed._fixed = True
    fixed._stock = getattr(owner, name)
    setattr(owner, name, fixed)


def install(
    app: Any, enabled: tuple[str, ...], exactly_once: bool, producer_idempotence: bool,
    at_most_once: bool = False, on_unverified: str = "fail",
) -> None:
    """Apply the enabled fixes to ``app`` (and Faust's classes, once per process).

    First checks that the installed faust-streaming and aiokafka are the code the fixes
    were verified on (:func:`unverified`): if not, raises
    :class:`~streams_app.exceptions.UnverifiedUpstream` naming the fixes to re-verify, or
    with ``on_unverified="warn"`` logs it and goes on."""
    problems = unverified(enabled)
    if problems:
        from .exceptions import UnverifiedUpstream

        error = UnverifiedUpstream(problems)
        if on_unverified != "warn":
            raise error
        log.warning("%s", error)
    _set_producer_idempotence(producer_idempotence)
    if "seek-uncommitted-partitions" in enabled:
        _patch_seek_uncommitted()
    if exactly_once and "source-partition-transactions" in enabled:
        _patch_transaction_routing()
    if exactly_once and "commit-gate" in enabled:
        _patch_gated_commit()
    if exactly_once and "persisted-offsets" in enabled:
        _patch_persisted_offsets()
    if "route-metadata" in enabled:
        _patch_route_metadata()
    if exactly_once and "fenced-restart" in enabled:
        _patch_fenced_restart()
    if exactly_once and "recovery-highwater" in enabled:
        _patch_recovery_highwater()
    if "shutdown-commit" in enabled:
        _patch_shutdown_commit()
    if "seek-after-queue-clear" in enabled:
        _patch_seek_after_queue_clear()
    if "commit-at-revocation" in enabled:
        _patch_commit_at_revocation()
    if "exact-gaps" in enabled:
        _patch_seek_epochs()
        _patch_exact_gaps()
    if "bulk-restore" in enabled:
        _patch_bulk_restore()
    if at_most_once and "commit-order" in enabled:
        _patch_commit_order()
    if exactly_once and "recovery-idle-wait" in enabled:
        _patch_recovery_idle_wait()
    if "changelog-metadata" in enabled:
        _patch_changelog_metadata()
    if "livelock-position" in enabled:
        _patch_livelock_position()
    if exactly_once and "lso-consistency-check" in enabled:
        app.conf.recovery_consistency_check = False
    if exactly_once and "concurrent-commits" in enabled:
        _patch_concurrent_commits()
    if "direct-delivery" in enabled:
        _patch_direct_delivery()
    if "stalled-partition-heal" in enabled:
        app.timer(app.conf.broker_commit_interval)(_heal_stalled_partitions_for(app))
    log.info("faust fixes enabled: %s", ", ".join(enabled) or "none (stock Faust)")


# -- producer idempotence: a switch Faust lacks ---------------------------------


def _set_producer_idempotence(enabled: bool) -> None:
    """Faust turns on ``enable_idempotence`` only for its exactly_once producers
    (transport/drivers/aiokafka.py ``Producer._settings_extra``); aiokafka's own
    default is off. Under at_least_once a producer retry after a lost ack then
    appends the batch twice. ``PRODUCER_IDEMPOTENCE`` decides for every producer
    (exactly_once producers are always idempotent: transactions require it)."""
    from faust.transport.drivers.aiokafka import Producer

    def _settings_extra(self: Producer) -> Mapping[str, Any]:
        if enabled or self.app.in_transaction:
            return {"acks": "all", "enable_idempotence": True}
        return {"enable_idempotence": False}

    Producer._settings_extra = _settings_extra  # type: ignore[method-assign]


# -- seek-uncommitted-partitions ---------------------------------------------------


def _patch_seek_uncommitted() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread.seek_to_committed, "_fixed", False):
        return

    async def seek_to_committed(self: AIOKafkaConsumerThread) -> Mapping[Any, int | None]:
        committed, starts = await self.call_thread(_seek_all_to_committed, self._ensure_consumer(),
                                                   self.app.conf.consumer_auto_offset_reset)
        set_commit_bases(self.consumer, starts)
        # None for them: Faust's perform_seek then leaves the base alone (it maps 0 to None).
        return {tp: None if tp in starts else offset for tp, offset in committed.items()}

    _replace(AIOKafkaConsumerThread, "seek_to_committed", seek_to_committed)


async def _seek_all_to_committed(
    consumer: Any, auto_offset_reset: str,
) -> tuple[Mapping[Any, int | None], Mapping[Any, int]]:
    """aiokafka's seek_to_committed, plus the auto.offset.reset seek of partitions without
    a committed offset: (committed offsets, {partition: the offset it starts from} for
    those). The start offsets are asked before the seek: a reset resolves them later."""
    committed = await consumer.seek_to_committed()  # seeks only offsets > 0
    fresh = [tp for tp, offset in committed.items() if not offset]
    starts: Mapping[Any, int] = {}
    if fresh:
        if auto_offset_reset == "latest":
            starts = await consumer.end_offsets(fresh)
            await consumer.seek_to_end(*fresh)
        else:
            starts = await consumer.beginning_offsets(fresh)
            await consumer.seek_to_beginning(*fresh)
    return committed, starts


def set_commit_bases(consumer: Any, starts: Mapping[Any, int]) -> None:
    """Make each start offset its partition's committed offset in the consumer's books (not
    at the broker): the first commit must then start there, never past a hole before the
    first acked record (the stall heal probes such a hole as any other)."""
    from faust.types import TP

    for tp, start in starts.items():
        consumer._committed_offset[TP(tp.topic, tp.partition)] = start


# -- source-partition-transactions -------------------------------------------


def _patch_transaction_routing() -> None:
    from faust.streams import current_event
    from faust.transport.consumer import TransactionManager

    stock_send = TransactionManager.send
    if getattr(stock_send, "_fixed", False):
        return

    async def send(
        self: TransactionManager, topic: str, key: bytes | None, value: bytes | None,
        partition: int | None, timestamp: float | None, headers: Any,
        *, transactional_id: str | None = None,
    ) -> Any:
        event = current_event()
        if event is None:  # changelog writes from the ProducerBuffer: partition = source
            groups = self.app.assignor._topic_groups
            group = groups.get(topic)
            if group is None:
                # Faust groups topics by partition count; its single-partition leader topic
                # aside, this app has one group. If the leader's metadata missed a just-created
                # changelog, stock send raises KeyError here and crashes the ProducerBuffer.
                candidates = {g for t, g in groups.items() if not t.endswith("__assignor-__leader")}
                if len(candidates) != 1:
                    return await stock_send(self, topic, key, value, partition, timestamp, headers)
                group = candidates.pop()
            # A changelog write names its partition. Stock asks the consumer's metadata first,
            # which lacks a just-created changelog: None, and the record is sent OUTSIDE the
            # transaction (stock) or to a producer "<app>-<group>-None" that does not exist.
            p = partition if partition is not None else self.consumer.key_partition(topic, key, None)
            if p is None:
                return await stock_send(self, topic, key, value, partition, timestamp, headers)
            return await self.producer.send(topic, key, value, p, timestamp, headers,
                                            transactional_id=f"{self.app.conf.id}-{group}-{p}")
        source = event.message.tp
        group = self.app.assignor.group_for_topic(source.topic)
        return await self.producer.send(
            topic, key, value, self.consumer.key_partition(topic, key, partition),
            timestamp, headers,
            transactional_id=f"{self.app.conf.id}-{group}-{source.partition}",
        )

    send._fixed = True  # type: ignore[attr-defined]
    send._stock = stock_send  # type: ignore[attr-defined]
    TransactionManager.send = send  # type: ignore[method-assign]


# -- commit-gate ---------------------------------------------------------------


def _patch_gated_commit() -> None:
    from faust.transport.consumer import Consumer
    from faust.transport.producer import ProducerBuffer

    from .processing import gate

    stock_force_commit = Consumer.force_commit
    if getattr(stock_force_commit, "_fixed", False):
        return
    stock_send_pending = ProducerBuffer._send_pending

    async def send_pending(self: ProducerBuffer, fut: Any) -> None:
        self._in_flight = getattr(self, "_in_flight", 0) + 1
        try:
            await stock_send_pending(self, fut)
        finally:
            self._in_flight -= 1

    async def force_commit(self: Consumer, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with gate.committing():
            if not await _drain(self.app.producer.buffer, self.app):
                return False  # changelog records not in their transactions: commit nothing
            return await stock_force_commit(self, topics, start_new_transaction=start_new_transaction)

    _replace(ProducerBuffer, "_send_pending", send_pending)
    _replace(Consumer, "force_commit", force_commit)


async def _drain(buffer: Any, app: Any) -> bool:
    """Wait until every buffered message has been handed to its producer; False if it
    never will be: the buffer's task crashed or stopped (seen once the worker was fenced:
    'Can't send messages while not in transaction'), or the app is crashed or fenced. A
    commit waiting here forever held up the revocation's commit and the worker's stop
    (the fence test's worker never exited at commit interval 0.1 s)."""
    while buffer.size or getattr(buffer, "_in_flight", 0):
        if buffer._crashed.is_set() or buffer.should_stop or app._crashed.is_set() or fenced(app):
            return False
        buffer.message_sent.clear()  # no await between the check and clear(): no race
        try:
            await asyncio.wait_for(buffer.message_sent.wait(), timeout=1.0)
        except asyncio.TimeoutError:
            continue
    return True


# -- persisted-offsets ---------------------------------------------------------


def _patch_persisted_offsets() -> None:
    from faust.tables.manager import TableManager

    if getattr(TableManager.on_commit, "_fixed", False):
        return

    def on_commit(self: TableManager, offsets: Mapping[Any, int]) -> None:
        committed = {tp.partition for tp in offsets}
        pending = self._pending_persisted_offsets
        for changelog_tp in [tp for tp in pending if tp.partition in committed]:
            store, offset = pending.pop(changelog_tp)
            store.set_persisted_offset(changelog_tp, offset)

    _replace(TableManager, "on_commit", on_commit)


# -- wipe-unclean-state --------------------------------------------------------


def on_worker_start(tabledir: Path, exactly_once: bool, enabled: tuple[str, ...]) -> None:
    """Called before tables open: wipe state left by a crash, then mark 'running'."""
    drop_ttl_stores(tabledir)
    marker = tabledir.parent / CLEAN_STOP_MARKER
    if marker.exists() and exactly_once and "wipe-unclean-state" in enabled and tabledir.exists():
        log.warning(
            "the previous worker did not stop cleanly: deleting local table state in %s "
            "(it may hold rows of aborted transactions); tables restore from the changelog",
            tabledir,
        )
        shutil.rmtree(tabledir)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("a worker is running; this file is removed on a clean stop\n")


def drop_ttl_stores(tabledir: Path) -> list[Path]:
    """Delete local table stores written as RocksDB TTL databases; return them.

    Not a switchable fix: the format of this project's own state. The seen-events
    table was opened with Faust's ``ttl`` option, whose rocksdict TTL database loses
    every row written before a reopen at the next compaction (tables/seen_events.py).
    Its values carry a 4-byte timestamp suffix that a plain open would misread, so
    such a store is deleted and the table restores from its changelog.
    """
    dropped = []
    for store in sorted(tabledir.glob("*.db")) if tabledir.exists() else []:
        options = sorted(store.glob("OPTIONS-*"))
        if options and "TtlCompactionFilterFactory" in options[-1].read_text(errors="replace"):
            log.warning("deleting %s: written as a RocksDB TTL database, which loses rows at "
                        "compaction; the table restores from its changelog", store)
            shutil.rmtree(store)
            dropped.append(store)
    return dropped


def on_worker_stopped(tabledir: Path) -> None:
    (tabledir.parent / CLEAN_STOP_MARKER).unlink(missing_ok=True)


# -- stalled-partition-heal ---------------------------------------------------------


#: A worker with nothing in progress and a partition behind is stalled after this long.
IDLE_STALL_S = 5.0


def _heal_stalled_partitions_for(app: Any):
    stalled_since: dict[Any, tuple[int, int]] = {}  # tp -> (committed, checks seen stalled)
    idle_since: dict[Any, tuple[int, float]] = {}  # tp -> (committed, first seen idle behind)
    #: tp -> (committed, high watermark) of a range probed and found to hold no record (under
    #: exactly_once an idle partition ends on a transaction marker: probed once, not every time)
    empty: dict[Any, tuple[int, int]] = {}

    async def heal_stalled_partitions() -> None:
        from .processing import forget_below

        consumer = app.consumer
        if consumer._commit_fut is not None:
            # A commit in flight took its offsets out of the acked list and sets the
            # committed offset only once the broker answers: a head gap that is not one.
            return
        idle = _worker_idle(app)
        now = asyncio.get_running_loop().time()
        for tp in list(consumer.assignment()):
            acked = consumer._acked.get(tp)
            committed = consumer._committed_offset.get(tp)
            if committed is not None:
                forget_below(tp, committed)
            if not acked:
                stalled_since.pop(tp, None)
                behind = _idle_behind(app, consumer, tp, committed, idle, now, idle_since)
                if behind is not None and empty.get(tp) != (committed, behind) \
                        and await _heal(app, consumer, tp, committed, behind, tail=True) == "gap":
                    empty[tp] = (committed, behind)
                continue
            idle_since.pop(tp, None)
            # Faust's own guard stalls only from a hole of two; with exact-gaps, from one.
            tolerated = 0 if getattr(consumer._new_offset, "_fixed", False) else 1
            if committed is None or min(acked) - committed <= tolerated:
                stalled_since.pop(tp, None)
                continue
            seen_at, checks = stalled_since.get(tp, (committed, 0))
            checks = checks + 1 if seen_at == committed else 1
            stalled_since[tp] = (committed, checks)
            if checks < 3:
                continue
            stalled_since.pop(tp, None)
            await _heal(app, consumer, tp, committed, min(acked))

    return heal_stalled_partitions


def _worker_idle(app: Any) -> bool:
    """Nothing in progress: the flow runs, no event is being processed, every stream's
    queue is empty and no table is recovering."""
    consumer = app.consumer
    if not consumer.flow_active or app.in_recovery or consumer._unacked_messages:
        return False
    return all(channel.queue.empty() for channel in app.topics._topics if hasattr(channel, "queue"))


def _idle_behind(app: Any, consumer: Any, tp: Any, committed: int | None, idle: bool, now: float,
                 idle_since: dict[Any, tuple[int, float]]) -> int | None:
    """The partition's high watermark when ``tp`` has been behind it for IDLE_STALL_S while
    the worker had nothing in progress and nothing acked for it: records fetched and never
    delivered at the partition's tail, which leave no hole below an acked offset (so the
    head-gap check never sees them) and no event that could still move the commit."""
    highwater = consumer.highwater(tp) if idle and committed is not None else None
    if highwater is None or committed is None or highwater <= committed \
            or not app.topics.acks_enabled_for(tp.topic):
        idle_since.pop(tp, None)
        return None
    seen_at, since = idle_since.get(tp, (committed, now))
    if seen_at != committed:
        seen_at, since = committed, now
    idle_since[tp] = (seen_at, since)
    if now - since < IDLE_STALL_S:
        return None
    idle_since.pop(tp, None)
    return highwater


async def _heal(app: Any, consumer: Any, tp: Any, committed: int, first_acked: int,
                tail: bool = False) -> str | None:
    """Probe [committed, first_acked) with a read_committed reader: register it as a gap
    ("gap") if it holds no committed record, else seek back to deliver it again ("seek").
    ``tail``: the range ends at the high watermark (nothing acked after it), not at an
    acked offset."""
    try:
        record = await first_committed_record(_bootstrap(app), tp, committed, first_acked)
    except TimeoutError:  # an open transaction holds the range back: ask again later
        return None
    if record is None or record >= first_acked:
        log.info(
            "stalled-partition-heal: %s offsets %d-%d hold no committed record (transaction "
            "markers or aborted data); registering them as a gap so commits go on",
            tp, committed, first_acked - 1,
        )
        await consumer._add_gap(tp, committed, first_acked - 1)
        metrics.fix_intervened("stalled-partition-heal", "gap")
        return "gap"
    if tail:
        log.warning(
            "stalled-partition-heal: %s is behind (committed %d, high watermark %d) with "
            "nothing in progress for %.0f s: records fetched and never delivered; seeking "
            "back to %d to deliver them again", tp, committed, first_acked, IDLE_STALL_S, committed,
        )
    else:
        # Records after the hole that were processed (under exactly_once: into the open
        # transaction) come again and are skipped by first_deliveries, unrepeated.
        log.warning(
            "stalled-partition-heal: %s has acked offsets from %d but record %d was "
            "never acked; seeking back to %d to deliver it again",
            tp, first_acked, record, committed,
        )
    try:
        await seek_back(consumer, tp, committed)
        metrics.fix_intervened("stalled-partition-heal", "seek")
    except Exception as exc:  # noqa: BLE001 - e.g. the partition was revoked meanwhile
        log.warning("stalled-partition-heal: seeking %s back failed (%r); trying again later", tp, exc)
    return "seek"


async def seek_back(consumer: Any, tp: Any, offset: int) -> None:
    """Deliver ``tp`` again from ``offset``: forget its acked offsets (the records after
    it come again and are acked again when skipped as processed) and seek with the flow
    stopped. The stall heal's remedy, and the seek-back fault's (streams_app/faults.py)."""
    if consumer._acked.get(tp):
        consumer._acked[tp].clear()
        consumer._acked_index[tp].clear()
    await quiescent_seek(consumer, lambda: consumer.seek(tp, offset))


def _bootstrap(app: Any) -> str:
    return ",".join(f"{url.host}:{url.port or 9092}" for url in app.conf.broker)


async def first_committed_record(bootstrap: str, tp: Any, start: int, end: int,
                                 timeout: float = 10.0) -> int | None:
    """The offset of the first committed record of ``tp`` in [start, end), or None if
    there is none (only transaction markers or aborted records). Read with a fresh
    read_committed consumer outside any group. Raises TimeoutError while an open
    transaction keeps the range from being read."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        partition = TopicPartition(tp.topic, tp.partition)
        consumer.assign([partition])
        consumer.seek(partition, start)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = (await consumer.getmany(partition, timeout_ms=500, max_records=1)).get(partition)
            if records:
                return records[0].offset if records[0].offset < end else None
            if await consumer.position(partition) >= end:
                return None
        raise TimeoutError(f"{tp}: [{start}, {end}) not readable with read_committed in {timeout} s")
    finally:
        await consumer.stop()


# -- seek-after-queue-clear ---------------------------------------------------------


def _patch_seek_after_queue_clear() -> None:
    from faust.tables.recovery import Recovery

    if getattr(Recovery.on_recovery_completed, "_fixed", False):
        return

    def seek_again_after(stock: Any) -> Any:
        async def resume(self: Recovery, generation_id: int = 0) -> None:
            await stock(self, generation_id)
            consumer = self.app.consumer
            if self.app.consumer_generation_id != generation_id or not consumer.assignment():
                return  # another rebalance is under way: it seeks again itself
            await quiescent_seek(consumer, consumer.perform_seek)
            log.info("seek-after-queue-clear: stream partitions sought to their committed offsets "
                     "again after Faust cleared its stream queues")

        resume._fixed = True  # type: ignore[attr-defined]
        resume._stock = stock  # type: ignore[attr-defined]
        return resume

    Recovery.on_recovery_completed = seek_again_after(Recovery.on_recovery_completed)  # type: ignore[method-assign]
    Recovery._resume_streams = seek_again_after(Recovery._resume_streams)  # type: ignore[method-assign]


# -- exact-gaps ---------------------------------------------------------------------


class FetchTrack:
    """The offset the client returns next for each stream partition.

    ``expected[tp]`` is the sought offset after a seek, then one past the last
    record delivered; None when not known (never sought, or records of a batch
    were fetched and not delivered), and then no gap is inferred.
    """

    def __init__(self) -> None:
        self.expected: dict[Any, int | None] = {}
        self.seeks: dict[Any, int] = {}

    def sought(self, tp: Any, offset: int | None) -> None:
        self.expected[tp] = offset if offset is not None and offset >= 0 else None
        self.seeks[tp] = self.seeks.get(tp, 0) + 1

    def delivered(self, tp: Any, offset: int) -> tuple[int, int] | None:
        """Record that the client returned ``offset``; the range [from, to) it skipped
        before it, if any (markers, aborted or compacted records: nothing to process)."""
        expected = self.expected.get(tp)
        self.expected[tp] = offset + 1
        if expected is not None and offset > expected:
            return expected, offset
        return None

    def undelivered(self, tp: Any, seeks_before: Mapping[Any, int]) -> None:
        """Records of ``tp`` were fetched and not delivered: what comes next is unknown,
        unless ``tp`` was sought since (``seeks_before``): then it is the sought offset."""
        if self.seeks.get(tp, 0) == seeks_before.get(tp, 0):
            self.expected[tp] = None


def redelivery_offsets(
    fetched: Mapping[Any, Sequence[Any]], yielded: Mapping[Any, int],
    last: tuple[Any, int] | None, flow_stopped: bool,
) -> dict[Any, int]:
    """Where to seek each partition of a batch that Faust's getmany did not deliver in
    full: the first record it did not deliver (``yielded[tp]`` records of
    ``fetched[tp]`` were), and, when the flow stopped during the batch, the ``last``
    record delivered ``(tp, offset)``, whose hand-over to the stream the stop cancels."""
    offsets = {tp: records[yielded.get(tp, 0)].offset
               for tp, records in fetched.items() if yielded.get(tp, 0) < len(records)}
    if flow_stopped and last is not None:
        tp, offset = last
        offsets[tp] = min(offsets.get(tp, offset), offset)
    return offsets


async def _redeliver(consumer: Any, offsets: Mapping[Any, int], fetch_epochs: Mapping[Any, int]) -> None:
    """Seek each partition back to ``offsets[tp]``: records fetched and never delivered,
    unless the partition was sought since its records were fetched (that seek says what
    comes next). Decided in the consumer thread, where seeks and fetches run one at a
    time, so a seek queued meanwhile (the stall heal's) is never overridden."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:
        return
    client = thread._ensure_consumer()
    assigned = consumer.assignment()
    for tp, offset in offsets.items():
        if tp not in assigned:
            continue  # revoked: the rebalance seeks it
        try:
            sought = await thread.call_thread(seek_unless_moved, client, tp, fetch_epochs.get(tp, 0), offset)
        except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile; the rebalance seeks it
            log.warning("exact-gaps: seeking %s back to %d failed (%r)", tp, offset, exc)
            continue
        if sought:
            metrics.fix_intervened("exact-gaps", "redeliver")
            log.info("exact-gaps: %s records from %d were fetched and not delivered (the flow "
                     "stopped mid-batch); sought back to deliver them", tp, offset)
            consumer._read_offset[tp] = offset if offset else None
            _track(consumer).sought(tp, offset)


def seek_epochs(client: Any) -> dict[Any, int]:
    """How many seeks of each partition the client has run (counted by the patched
    Fetcher.seek_to): the live dict, read from the event loop, written in the thread."""
    return client._fetcher.__dict__.setdefault("_seek_epochs", {})


def seek_unless_moved(client: Any, tp: Any, epoch: int, offset: int) -> bool:
    """In the consumer thread: seek ``tp`` to ``offset`` if no seek ran since ``epoch``."""
    if seek_epochs(client).get(tp, 0) != epoch:
        return False
    client.seek(tp, offset)
    return True


def _patch_seek_epochs() -> None:
    """Count every seek the client runs, per partition, and note the counts with each
    fetch: a record fetched before a seek of its partition is stale once the seek ran."""
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(Fetcher.seek_to, "_fixed", False):
        return
    stock_seek_to = Fetcher.seek_to
    stock_request_offset_reset = Fetcher.request_offset_reset
    stock_fetch_records = AIOKafkaConsumerThread._fetch_records

    def seek_to(self: Any, tp: Any, offset: int) -> Any:
        epochs = self.__dict__.setdefault("_seek_epochs", {})
        epochs[tp] = epochs.get(tp, 0) + 1  # one dict write, atomic under the GIL
        return stock_seek_to(self, tp, offset)

    def request_offset_reset(self: Any, tps: Any, strategy: Any) -> Any:
        # seek_to_beginning/end (seek-uncommitted-partitions): a seek too. Uncounted, a
        # redelivery seek decided on a fetch from before it overrode it (exact-gaps).
        epochs = self.__dict__.setdefault("_seek_epochs", {})
        for tp in tps:
            epochs[tp] = epochs.get(tp, 0) + 1
        return stock_request_offset_reset(self, tps, strategy)

    async def _fetch_records(self: Any, consumer: Any, active_partitions: Any, timeout: Any = None,
                             max_records: Any = None) -> Any:
        records = await stock_fetch_records(self, consumer, active_partitions, timeout=timeout,
                                            max_records=max_records)
        epochs = seek_epochs(consumer)
        self._fetch_epochs = {tp: epochs.get(tp, 0) for tp in records or ()}
        return records

    for owner, name, fixed, stock in ((Fetcher, "seek_to", seek_to, stock_seek_to),
                                      (Fetcher, "request_offset_reset", request_offset_reset,
                                       stock_request_offset_reset),
                                      (AIOKafkaConsumerThread, "_fetch_records", _fetch_records,
                                       stock_fetch_records)):
        fixed._fixed = True  # type: ignore[attr-defined]
        fixed._stock = stock  # type: ignore[attr-defined]
        setattr(owner, name, fixed)


def _track(consumer: Any) -> FetchTrack:
    track = consumer.__dict__.get("_fetch_track")
    if track is None:
        track = consumer.__dict__["_fetch_track"] = FetchTrack()
    return track


def strict_new_offset(acked: list[int], committed: int | None) -> tuple[int | None, int]:
    """Faust's Consumer._new_offset, except that the acked offsets (sorted, merged with
    the gaps below their maximum) must start AT the committed offset, the next offset
    to read: (offset to commit or None, how many acked offsets it takes from the front)."""
    if not acked or (committed is not None and acked[0] > committed):
        return None, 0
    from faust.utils.functional import consecutive_numbers

    batch = next(consecutive_numbers(acked))
    return batch[-1] + 1, len(batch)


async def quiescent_seek(consumer: Any, seek: Any) -> None:
    """Run ``seek()`` (a coroutine function) while the fetcher delivers nothing.

    A seek while the fetcher runs lets records of a batch fetched before it through
    after it: they move Faust's read offset past the records fetched again from the
    sought offset, which Faust then drops as already read. Stopping the consumer's
    flow first ends the batch in progress (Faust's getmany stops delivering it) and
    holds the next fetch until the flow resumes (what Consumer.wait_for_stopped_flow
    is for). A flow already stopped (a rebalance) is left stopped.
    """
    if not consumer.flow_active:
        await seek()
        return
    app = consumer.app
    generation = app.consumer_generation_id
    consumer.stop_flow()
    try:
        await consumer.wait_for_stopped_flow()
        await seek()
    finally:
        if app.consumer_generation_id == generation:  # else a rebalance owns the flow now
            consumer.resume_flow()


def _patch_exact_gaps() -> None:
    from faust.transport.consumer import Consumer

    if getattr(Consumer._new_offset, "_fixed", False):
        return
    stock_wait_next_records = Consumer._wait_next_records
    stock_getmany = Consumer.getmany
    stock_perform_seek = Consumer.perform_seek
    stock_seek = Consumer.seek
    stock_add_gap = Consumer._add_gap
    stock_stop_flow = Consumer.stop_flow

    def stop_flow(self: Consumer) -> None:
        self.__dict__["_flow_stops"] = self.__dict__.get("_flow_stops", 0) + 1
        stock_stop_flow(self)

    async def _wait_next_records(self: Consumer, timeout: float) -> Any:
        records, active = await stock_wait_next_records(self, timeout)
        self._fetched_batch = records or {}
        thread = getattr(self, "_thread", None)
        self._fetched_epochs = getattr(thread, "_fetch_epochs", {}) if records else {}
        return records, active

    async def getmany(self: Consumer, timeout: float) -> Any:
        track = _track(self)
        self._fetched_batch = {}
        self._fetched_epochs = {}
        seeks_before = dict(track.seeks)
        stops_before = self.__dict__.get("_flow_stops", 0)
        generation = self.app.consumer_generation_id
        thread = getattr(self, "_thread", None)
        epochs = seek_epochs(thread._ensure_consumer()) if thread is not None else None
        yielded: dict[Any, int] = {}
        last: tuple[Any, int] | None = None
        acks_enabled_for = self.app.topics.acks_enabled_for
        async for tp, message in stock_getmany(self, timeout):
            yielded[tp] = yielded.get(tp, 0) + 1
            if epochs is not None and epochs.get(tp, 0) != self._fetched_epochs.get(tp, 0):
                # Fetched before a seek of its partition that has run since (the flow
                # resumed before Faust's getmany noticed it stopped): it comes again from
                # the sought offset; delivered now it would move the read offset past it.
                continue
            last = (tp, message.offset)
            skipped = track.delivered(tp, message.offset)
            if skipped is not None and acks_enabled_for(message.topic):
                gap = self._gap[tp]
                gap.addi(*skipped)
                gap.merge_overlaps()
            yield tp, message
        for tp, records in self._fetched_batch.items():
            if yielded.get(tp, 0) < len(records):
                track.undelivered(tp, seeks_before)  # stock getmany stopped early (flow stopped)
        offsets = redelivery_offsets(self._fetched_batch, yielded, last,
                                     self.__dict__.get("_flow_stops", 0) != stops_before)
        if offsets and self.app.consumer_generation_id == generation:  # else the rebalance seeks
            await _redeliver(self, offsets, self._fetched_epochs)

    def _sought(self: Consumer, tp: Any, offset: int | None) -> None:
        _track(self).sought(tp, offset)
        if offset is not None and self._gap.get(tp):
            self._gap[tp].chop(offset, float("inf"))  # inferred from records that come again

    async def perform_seek(self: Consumer) -> None:
        # With the flow stopped, like every other seek of ours: Faust's recovery seeks
        # with the fetcher delivering (tables/recovery.py _resume_streams), and records
        # fetched after the client's seek but delivered before the bookkeeping below made
        # the next record look like a jump from the sought offset: a gap over records
        # that were delivered, then cleared with the queues (lab, CI: 4 to 28 events lost
        # per exactly_once crash run at commit interval 0.1 s).
        await quiescent_seek(self, lambda: _perform_seek(self))

    async def _perform_seek(self: Consumer) -> None:
        await stock_perform_seek(self)
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp in self.assignment():
            if acks_enabled_for(tp.topic):  # stream partitions; changelogs are not acked
                read = self._read_offset.get(tp)  # None where the base is (never committed)
                _sought(self, tp, read if read is not None else self._committed_offset.get(tp))

    async def seek(self: Consumer, partition: Any, offset: int) -> None:
        thread = getattr(self, "_thread", None)
        if thread is None:  # not a threaded (aiokafka) consumer
            await stock_seek(self, partition, offset)
        else:  # in the consumer thread, as Faust's own perform_seek, not from the event loop
            await thread.call_thread(thread._ensure_consumer().seek, partition, offset)
            self._read_offset[partition] = offset if offset else None
        _sought(self, partition, offset)

    async def _add_gap(self: Consumer, tp: Any, offset_from: int, offset_to: int) -> None:
        # Stock starts a gap after the committed offset; the committed offset is the next
        # offset to read, so a marker AT it was never a gap (hence stock's tolerance).
        committed = self._committed_offset[tp]
        if committed is not None and offset_from < committed:
            offset_from = committed
        if offset_from <= offset_to:
            self._gap[tp].addi(offset_from, offset_to + 1)
            self._gap[tp].merge_overlaps()

    def _new_offset(self: Consumer, tp: Any) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        max_offset = max(acked)
        gap_for_tp = self._gap[tp]
        if gap_for_tp:  # as stock: fold the gaps below the highest acked offset into acked
            candidates = sorted(gap_for_tp.overlap(0, max_offset), key=lambda x: x.begin)
            if candidates:
                stuff_to_add: list[int] = []
                for entry in candidates:
                    stuff_to_add.extend(range(entry.begin, entry.end))
                new_max_offset = max(stuff_to_add[-1], max_offset + 1)
                acked.extend(stuff_to_add)
                gap_for_tp.chop(0, new_max_offset)
        # Stock registers a gap up to AND including the record after it, so the same offset
        # can be both a gap and acked; a duplicate ends the consecutive run and each commit
        # then takes one run only (robinhood/faust#625).
        acked[:] = sorted(set(acked))
        offset, taken = strict_new_offset(acked, self._committed_offset[tp])
        if taken:
            batch = acked[:taken]
            acked[:taken] = []
            self._acked_index[tp].difference_update(batch)
        return offset

    for name, fixed, stock in (
        ("stop_flow", stop_flow, stock_stop_flow),
        ("_wait_next_records", _wait_next_records, stock_wait_next_records),
        ("getmany", getmany, stock_getmany),
        ("perform_seek", perform_seek, stock_perform_seek),
        ("seek", seek, stock_seek),
        ("_add_gap", _add_gap, stock_add_gap),
        ("_new_offset", _new_offset, Consumer._new_offset),
    ):
        fixed._fixed = True  # type: ignore[attr-defined]
        fixed._stock = stock  # type: ignore[attr-defined]
        setattr(Consumer, name, fixed)


# -- commit-at-revocation -----------------------------------------------------------


def _patch_commit_at_revocation() -> None:
    from faust.transport.consumer import CONSUMER_PARTITIONS_REVOKED, Consumer
    from faust.utils.tracing import traced_from_parent_span
    from mode import Service

    stock = Consumer.on_partitions_revoked
    if getattr(stock, "_fixed", False):
        return

    @Service.transitions_to(CONSUMER_PARTITIONS_REVOKED)
    async def on_partitions_revoked(self: Consumer, revoked: set[Any]) -> None:
        # Stock Faust, with the forgetting moved after the handler that commits.
        span = self.app._start_span_from_rebalancing("on_partitions_revoked")
        T = traced_from_parent_span(span)
        with span:
            if self._active_partitions is not None:
                self._active_partitions.difference_update(revoked)
            self._paused_partitions.difference_update(revoked)
            await T(self._on_partitions_revoked, partitions=revoked)(revoked)
            for tp in revoked:
                left = self._acked.get(tp)
                if left:
                    metrics.fix_intervened("commit-at-revocation", "uncommittable")
                    log.warning(
                        "commit-at-revocation: %d processed offsets of %s (from %d) could not be "
                        "committed at revocation (committed %s, gap before them)",
                        len(left), tp, min(left), self._committed_offset.get(tp),
                    )
                self._gap.pop(tp, None)
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._read_offset.pop(tp, None)
                self._committed_offset.pop(tp, None)

    on_partitions_revoked._fixed = True  # type: ignore[attr-defined]
    on_partitions_revoked._stock = stock  # type: ignore[attr-defined]
    Consumer.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]


# -- recovery-idle-wait -------------------------------------------------------------

#: How long the changelog queue must stay empty, twice, before recovery checks whether
#: only transaction markers are left (Faust: 5 s).
RECOVERY_IDLE_S = 1.0


class _RecoveryAsyncio(types.ModuleType):
    """``asyncio`` as tables/recovery.py sees it: its one ``wait_for`` (the changelog
    queue's idle wait) is capped at :data:`RECOVERY_IDLE_S`; all else is asyncio's."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(awaitable: Any, timeout: float | None) -> Any:
        if timeout is not None:
            timeout = min(timeout, RECOVERY_IDLE_S)
        return await asyncio.wait_for(awaitable, timeout=timeout)


def _patch_recovery_idle_wait() -> None:
    from faust.tables import recovery

    if isinstance(recovery.asyncio, _RecoveryAsyncio):
        return
    recovery.asyncio = _RecoveryAsyncio("asyncio")


# -- bulk-restore -------------------------------------------------------------------


def _patch_bulk_restore() -> None:
    from faust.tables.recovery import Recovery

    from tables.restore import BULK_MIN_RECORDS, bulk_restore

    stock = Recovery._build_offsets
    if getattr(stock, "_fixed", False):
        return

    async def _build_offsets(self: Recovery, consumer: Any, tps: set[Any], destination: Any, title: str) -> None:
        if destination is self.active_offsets:
            for tp in sorted(tps):
                store = self.tp_to_table[tp].data
                through = self.active_highwaters.get(tp)
                after = destination.get(tp)
                after = -1 if after is None else after
                if not hasattr(store, "_db_for_partition") or through is None or through - after < BULK_MIN_RECORDS:
                    continue
                last = await bulk_restore(_bootstrap(self.app), store, tp, after, through)
                if last is not None:
                    destination[tp] = last
        await stock(self, consumer, tps, destination, title)

    _build_offsets._fixed = True  # type: ignore[attr-defined]
    _build_offsets._stock = stock  # type: ignore[attr-defined]
    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]


# -- commit-order ------------------------------------------------------------------


def _patch_commit_order() -> None:
    from faust.transport.consumer import ThreadDelegateConsumer

    stock = ThreadDelegateConsumer._commit
    if getattr(stock, "_fixed", False):
        return

    async def _commit(self: ThreadDelegateConsumer, offsets: Mapping[Any, int]) -> bool:
        lock = self.__dict__.setdefault("_commit_order_lock", asyncio.Lock())
        highest: dict[Any, int] = self.__dict__.setdefault("_commit_order_highest", {})
        async with lock:
            ahead = {tp: offset for tp, offset in offsets.items() if offset > highest.get(_key(tp), -1)}
            if not ahead:
                return True  # a later offset of each partition is committed already
            done = await stock(self, ahead)
            if done:
                highest.update({_key(tp): offset for tp, offset in ahead.items()})
            return done

    _commit._fixed = True  # type: ignore[attr-defined]
    _commit._stock = stock  # type: ignore[attr-defined]
    ThreadDelegateConsumer._commit = _commit  # type: ignore[method-assign]


def _key(tp: Any) -> tuple[str, int]:
    """Faust's TP and aiokafka's TopicPartition name a partition alike."""
    return tp.topic, tp.partition


# -- changelog-metadata ------------------------------------------------------------


def _patch_changelog_metadata() -> None:
    from faust.tables.base import Collection

    stock = Collection._verify_source_topic_partitions
    if getattr(stock, "_fixed", False):
        return

    def _verify_source_topic_partitions(self: Collection, source_topic: str) -> None:
        if not self.app.consumer.topic_partitions(self.changelog_topic_name):
            return  # not in the metadata snapshot yet: check again at the next write
        stock(self, source_topic)

    _verify_source_topic_partitions._fixed = True  # type: ignore[attr-defined]
    _verify_source_topic_partitions._stock = stock  # type: ignore[attr-defined]
    Collection._verify_source_topic_partitions = _verify_source_topic_partitions  # type: ignore[method-assign]


# -- shutdown-commit ---------------------------------------------------------------


def _patch_shutdown_commit() -> None:
    from faust.transport.consumer import Consumer

    stock = Consumer.commit_and_end_transactions
    if getattr(stock, "_fixed", False):
        return
    stock_commit = Consumer.commit

    async def commit_and_end_transactions(self: Consumer) -> None:
        try:
            await stock(self)
        except Exception as exc:  # noqa: BLE001 - any failure here must not block the shutdown
            metrics.fix_intervened("shutdown-commit", "stop-after-failed-commit")
            log.warning(
                "shutdown-commit: the final commit failed (%r); stopping anyway. The uncommitted "
                "events go to the partitions' next owner (open transactions are aborted).", exc,
            )
        finally:
            # A revocation also ends the transactions, and Faust begins new ones for the
            # partitions it is given; a stop begins none.
            if self.app.in_transaction and self.app.should_stop:
                self._transactions_ended_by_stop = True

    async def commit(self: Consumer, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if getattr(self, "_transactions_ended_by_stop", False):
            log.debug("shutdown-commit: no commit after the stop ended the transactions")
            return False  # not committed: the events go to the partitions' next owner
        return await stock_commit(self, topics, start_new_transaction=start_new_transaction)

    commit_and_end_transactions._fixed = True  # type: ignore[attr-defined]
    commit_and_end_transactions._stock = stock  # type: ignore[attr-defined]
    commit._stock = stock_commit  # type: ignore[attr-defined]
    Consumer.commit_and_end_transactions = commit_and_end_transactions  # type: ignore[method-assign]
    Consumer.commit = commit  # type: ignore[method-assign]


# -- livelock-position ----------------------------------------------------------------


def _patch_livelock_position() -> None:
    from aiokafka import TopicPartition
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    stock = AIOKafkaConsumerThread.verify_event_path
    if getattr(stock, "_fixed", False):
        return

    def verify_event_path(self: AIOKafkaConsumerThread, now: float, tp: Any) -> None:
        try:
            assignment = self._ensure_consumer()._fetcher._subscriptions.subscription.assignment
            state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        except AttributeError:  # no subscription or assignment yet: stock reports that itself
            state = None
        if state is not None and not state.has_valid_position:
            return None  # being sought or reset: nothing to verify yet
        return stock(self, now, tp)

    verify_event_path._fixed = True  # type: ignore[attr-defined]
    verify_event_path._stock = stock  # type: ignore[attr-defined]
    AIOKafkaConsumerThread.verify_event_path = verify_event_path  # type: ignore[method-assign]


# -- route-metadata --------------------------------------------------------------


def _patch_route_metadata() -> None:
    from faust.app.router import Router

    stock_route_req = Router.route_req
    if getattr(stock_route_req, "_fixed", False):
        return

    async def route_req(self: Router, table_name: str, key: Any, web: Any, request: Any) -> Any:
        topic = self.app.tables[table_name].changelog_topic.get_topic_name()
        await self.app.producer.maybe_start()
        await self.app.producer._ensure_producer().partitions_for(topic)  # cached after the first call
        return await stock_route_req(self, table_name, key, web, request)

    _replace(Router, "route_req", route_req)


# -- fenced-restart -------------------------------------------------------------------


#: What a send says once its producer was fenced, besides ProducerFenced: Faust reports a
#: stopped producer only as ProducerSendError text, and aiokafka refuses a send to a
#: producer whose transaction the fence aborted (IllegalOperation; a send never meets a
#: producer between commit and begin: both run under Faust's per-producer lock).
FENCED_TEXTS = ("No transaction producer found", "Can't send messages while not in transaction")


def is_fenced(error: BaseException) -> bool:
    """``error`` says this worker's transactional producer was fenced (or, once fenced,
    stopped): the work in progress belongs to another worker now."""
    from aiokafka.errors import ProducerFenced

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ProducerFenced) or any(text in str(seen) for text in FENCED_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _patch_fenced_restart() -> None:
    from aiokafka.errors import ProducerFenced
    from faust.transport.consumer import TransactionManager

    stock_commit = TransactionManager.commit
    if getattr(stock_commit, "_fixed", False):
        return

    async def commit(self: TransactionManager, offsets: Mapping[Any, int],
                     start_new_transaction: bool = True) -> bool:
        app = self.app
        if fenced(app):
            return False
        try:
            # Stock catches ProducerFenced around the same call and crashes the app.
            await self.producer.commit_transactions(
                _by_transactional_id(app, offsets), app.conf.id, start_new_transaction=start_new_transaction,
            )
        except ProducerFenced as exc:
            await on_fenced(app, exc)
            return False
        return True

    commit._fixed = True  # type: ignore[attr-defined]
    commit._stock = stock_commit  # type: ignore[attr-defined]
    TransactionManager.commit = commit  # type: ignore[method-assign]


def fenced(app: Any) -> bool:
    """This worker was fenced: it is stopping, its stop is not clean."""
    return bool(app.__dict__.get("_fenced"))


def _by_transactional_id(app: Any, offsets: Mapping[Any, int]) -> dict[str, dict[Any, int]]:
    """Offsets grouped by the transactional producer that commits them (as stock)."""
    grouped: dict[str, dict[Any, int]] = {}
    for tp, offset in offsets.items():
        group = app.assignor.group_for_topic(tp.topic)
        grouped.setdefault(f"{app.conf.id}-{group}-{tp.partition}", {})[tp] = offset
    return grouped


async def on_fenced(app: Any, error: BaseException) -> None:
    """This worker was fenced (``error`` says so): stop it with its stop marked unclean,
    before anything it acked is committed (see the fix's text). Once is enough."""
    if fenced(app):
        return
    app.__dict__["_fenced"] = True
    log.warning(
        "fenced-restart: this worker was fenced (%s): another worker owns its partitions now and "
        "the broker aborts its open transactions. Stopping; the restart deletes the local table "
        "state (it may hold rows of those transactions) and restores it from the changelog.", error,
    )
    app.health.fenced(str(error))
    await app.crash(error)


# -- recovery-highwater --------------------------------------------------------------


def _patch_recovery_highwater() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    stock = AIOKafkaConsumerThread._highwaters
    if getattr(stock, "_fixed", False):
        return

    async def _highwaters(self: AIOKafkaConsumerThread, partitions: list[Any]) -> Mapping[Any, int]:
        # The consumer reads read_committed under exactly_once, so ListOffsets answers the
        # last stable offset, from the broker, fetched or not.
        return await self._ensure_consumer().end_offsets(partitions)

    _highwaters._fixed = True  # type: ignore[attr-defined]
    _highwaters._stock = stock  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]


# -- direct-delivery ----------------------------------------------------------------


def _patch_direct_delivery() -> None:
    import faust
    from faust.transport.consumer import CONSUMER_FETCHING, Consumer

    if getattr(Consumer._drain_messages, "_fixed", False):
        return
    if not faust.__version__.startswith("0.15."):
        log.warning("direct-delivery: written for faust-streaming 0.15, found %s: not installed",
                    faust.__version__)
        return
    stock = Consumer._drain_messages

    def blocks(consumer: Any, message: Any) -> bool:
        """Whether delivering ``message`` could wait (see FIXES["direct-delivery"])."""
        app = consumer.app
        if consumer.suspend_flow.is_set() or not app.flow_control.is_active():
            return True
        buffer = app.producer.buffer
        if buffer.size > buffer.max_messages:
            return True
        conductor = app.topics
        if conductor._tp_to_callback_lock.locked():
            return True
        channels = conductor._tp_index.get(message.tp)
        return channels is None or any(chan.queue.full() for chan in channels)

    async def _drain_messages(self: Consumer, fetcher: Any) -> None:  # pragma: no cover
        # Faust 0.15.3's Consumer._drain_messages, but for the delivery (marked).
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        exact_gaps = getattr(self._new_offset, "_fixed", False)
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # fixed: with exact-gaps the gaps come from what the client
                            # returned (getmany), not from the read offset, which a seek's
                            # bookkeeping can leave behind what was delivered.
                            if gap > 1 and r_offset and not exact_gaps:
                                if acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            if blocks(self, message):  # stock
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:  # fixed: nothing to abandon, no tasks
                                await callback(message)
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev("DROPPED MESSAGE ROFF %r: k=%r v=%r", offset, message.key, message.value)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    _drain_messages._fixed = True  # type: ignore[attr-defined]
    _drain_messages._stock = stock  # type: ignore[attr-defined]
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]


# -- concurrent-commits -------------------------------------------------------------


def _patch_concurrent_commits() -> None:
    from faust.transport.drivers.aiokafka import Producer

    stock = Producer.commit_transactions
    if getattr(stock, "_fixed", False):
        return

    async def commit_transactions(self: Producer, tid_to_offset_map: Mapping[str, Mapping[Any, int]],
                                  group_id: str, start_new_transaction: bool = True) -> None:
        async def commit_one(transactional_id: str, offsets: Mapping[Any, int]) -> None:
            async with self._trn_locks[transactional_id]:
                producer = self._transaction_producers.get(transactional_id)
                if producer is None:
                    log.warning("Commit invoked for unknown transaction %s", transactional_id)
                    return
                await producer.send_offsets_to_transaction(offsets, group_id)
                await producer.commit_transaction()
                if start_new_transaction:
                    await producer.begin_transaction()

        results = await asyncio.gather(
            *(commit_one(tid, offsets) for tid, offsets in tid_to_offset_map.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    commit_transactions._fixed = True  # type: ignore[attr-defined]
    commit_transactions._stock = stock  # type: ignore[attr-defined]
    Producer.commit_transactions = commit_transactions  # type: ignore[method-assign]
