"""The lab's vocabulary: guarantees, sinks, faults, and what the source text predicts.

Each prediction is one of ``=0`` (must not happen), ``>0`` (the run makes it
happen for certain: deterministic crash points, not luck) or ``any`` (may
happen, depending on where a random kill lands). ``why`` is the one line of
the source text the cell demonstrates.
"""

from __future__ import annotations

from dataclasses import dataclass

GUARANTEES = ("at_least_once", "exactly_once", "at_most_once")
#: The database sinks (SINK_TARGET=database) and the payment API sinks (SINK_TARGET=api).
DB_SINKS = ("naive", "idempotent", "transactional")
API_SINKS = ("api-naive", "api-idempotent")
SINKS = DB_SINKS + API_SINKS


def sink_env(sink: str) -> dict[str, str]:
    """The worker settings of a lab sink: ``api-naive`` is SINK_MODE=naive, SINK_TARGET=api."""
    if sink in API_SINKS:
        return {"SINK_MODE": sink.removeprefix("api-"), "SINK_TARGET": "api"}
    return {"SINK_MODE": sink, "SINK_TARGET": "database"}


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    #: crash point per guarantee (None: the fault kills from outside, or not at all)
    crash_point: dict[str, str] | None = None
    #: the fault is injected by the payment API: only API sinks meet it
    api_only: bool = False
    #: what the fault needs: "cluster" (the local 3-broker cluster: BROKER_URL or
    #: --bootstrap listing its hosts), "postgres" (a database sink; the run's database
    #: is on the lab's own PostgreSQL server, which the fault stops), "api" (an API sink)
    needs: str | None = None


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("none", "no fault: the baseline"),
    Fault(
        "crash-before-commit",
        "SIGKILL after processing, before the offset commit (at_most_once: after the "
        "commit, before the effect, since it commits first)",
        {"at_least_once": "dedup.after_forward", "exactly_once": "dedup.after_forward",
         "at_most_once": "sink.after_commit"},
    ),
    Fault(
        "crash-after-effect",
        "SIGKILL after the database write committed, before the Kafka offset commit",
        {g: "sink.after_effect" for g in GUARANTEES},
    ),
    Fault(
        "crash-mid-transaction",
        "SIGKILL after the balance update and its output were sent, before the commit "
        "(inside an open transaction under exactly_once)",
        {g: "apply.after_update" for g in GUARANTEES},
    ),
    Fault("random-kills", "SIGKILL at seeded random moments while traffic flows"),
    Fault("rebalance", "two workers; one is SIGKILLed while traffic flows, then a third joins"),
    Fault(
        "producer-retry",
        "a TCP proxy forwards the worker's produce requests and drops some responses, so "
        "the producer resends a batch the broker already appended",
    ),
    Fault(
        "api-timeout",
        "the payment API answers slower than the sink's timeout for its first charges: the "
        "client gives up and retries while the first request goes on to charge",
        api_only=True,
    ),
    Fault(
        "broker-kill",
        "SIGKILL the broker leading a partition of every pipeline topic while traffic flows; "
        "restart it 20 s later (3-broker cluster, replication 3, min.insync 2)",
        needs="cluster",
    ),
    Fault("broker-pause", "SIGSTOP a leading broker for 30 s while traffic flows, then SIGCONT",
          needs="cluster"),
    Fault("controller-kill", "SIGKILL the active KRaft controller (a broker too); restart it 20 s later",
          needs="cluster"),
    Fault(
        "network-partition",
        "the worker reaches every broker through a fault proxy; the one to the broker leading a "
        "partition of every pipeline topic cuts all its connections for 30 s (the broker stays up)",
        needs="cluster",
    ),
    Fault(
        "kafka-outage",
        "every broker out of the worker's reach for 40 s (each through a fault proxy that cuts "
        "all connections) while traffic reaches the cluster; the worker is SIGKILLed and "
        "started again halfway through: it must wait for Kafka, not exit",
        needs="cluster",
    ),
    Fault(
        "zombie",
        "two workers; one is SIGSTOPped mid-stream past its session timeout, the other takes its "
        "partitions, then SIGCONT: the zombie is fenced and must rejoin, not crash or repeat",
    ),
    Fault("db-outage", "the sink's PostgreSQL is stopped for 20 s mid-stream, then started",
          needs="postgres"),
    Fault(
        "store-error",
        "the disk under the dedup state fills up in the middle of a batch (after its outputs were "
        "sent): a write of seen ids fails as rocksdict's does, in the worker's first 3 lifetimes",
    ),
    Fault("api-outage", "the payment API is down for 20 s mid-stream, then back on the same port and data",
          api_only=True),
    Fault(
        "api-drop-after-commit",
        "the payment API commits a charge, then drops the connection without answering "
        "(its first charges): the client cannot know it was charged and retries",
        api_only=True,
    ),
)}


#: Faults of the infrastructure rather than of a worker's process: brokers, the network
#: between, the sink's database, the payment API, a paused worker. Under exactly_once
#: they must change nothing; under at_least_once an idempotent sink charges once.
OUTAGES = frozenset({"broker-kill", "broker-pause", "controller-kill", "network-partition", "kafka-outage", "zombie",
                     "db-outage", "api-outage", "store-error"})


def applies(sink: str, fault: str) -> bool:
    """Whether the fault can meet the sink (the API's faults need an API sink, a database
    outage a database sink)."""
    needs = FAULTS[fault].needs
    if FAULTS[fault].api_only:
        return sink in API_SINKS
    return needs != "postgres" or sink in DB_SINKS

METRICS = ("duplicate_charges", "lost", "output_duplicates", "output_missing",
           "balance_mismatches", "open_transactions", "log_duplicates")


@dataclass(frozen=True)
class Prediction:
    expect: dict[str, str]
    why: str

    def holds(self, counts: dict) -> dict[str, bool]:
        return {m: _holds(rule, counts[m]) for m, rule in self.expect.items()}


def _holds(rule: str, value: int) -> bool:
    return {"=0": value == 0, ">0": value > 0, "any": True}[rule]


def predict(guarantee: str, sink: str, fault: str, producer_idempotence: bool = True) -> Prediction:
    """What the source text says this cell must show."""
    e = dict.fromkeys(METRICS, "=0")
    if FAULTS[fault].api_only and fault not in OUTAGES:
        if sink == "api-naive":
            e["duplicate_charges"] = ">0"
            return Prediction(e, "no idempotency key: the client's retry after a lost answer is a second charge")
        return Prediction(e, "the retry carries the first request's Idempotency-Key: the API replays the charge")
    sink = sink.removeprefix("api-")  # against Kafka faults an API sink behaves as its database twin
    crashes = fault not in {"none", "producer-retry"}
    if fault == "producer-retry" and guarantee != "exactly_once":
        if not producer_idempotence:
            e["log_duplicates"] = ">0"
            for m in ("output_duplicates", "balance_mismatches"):
                e[m] = "any"
            # Offsets stored with the charge do not help: the twin is another record.
            e["duplicate_charges"] = "any" if sink in {"naive", "transactional"} else "=0"
            return Prediction(e, "a lost ack makes a non-idempotent producer append the batch twice")
        return Prediction(e, "idempotent producer: the broker drops the resent batch by sequence number")
    if guarantee == "at_most_once":
        if crashes:
            for m in ("lost", "output_missing", "balance_mismatches"):
                e[m] = "any"
        if fault == "crash-before-commit":
            e["lost"] = ">0"
            why = "committed before the effect, then crashed: the message is lost, never repeated"
        elif crashes:
            why = "at most once: a crash can lose work in flight but never repeat it"
        else:
            why = "no fault: nothing lost even when offsets are committed first"
        return Prediction(e, why)

    if guarantee == "exactly_once":
        if sink == "transactional" and crashes:
            return Prediction(e, "offsets stored with the effect: a redelivered record is "
                                 "skipped, and exactly_once upstream writes no duplicate records")
        if sink == "naive" and fault == "crash-after-effect":
            e["duplicate_charges"] = ">0"
            why = "Kafka transactions end at Kafka: the database write is repeated on redelivery"
        elif sink == "naive" and fault in {"random-kills", "rebalance", "crash-mid-transaction"} | OUTAGES:
            e["duplicate_charges"] = "any"
            why = "the Kafka output stays exact; an external write without a key may repeat"
        elif sink == "idempotent":
            why = "transactions make Kafka output exact; the idempotency key makes the effect exact"
        else:
            why = "exactly once inside Kafka: output, state and offsets commit atomically"
        return Prediction(e, why)

    # at_least_once
    if fault == "none":
        return Prediction(e, "no fault: at-least-once delivers each event once")
    for m in ("output_duplicates", "balance_mismatches", "log_duplicates"):
        e[m] = "any"
    if sink in {"naive", "transactional"}:
        # transactional skips a redelivered record, but an at-least-once upstream
        # can write a second record for one event: that one is charged again.
        e["duplicate_charges"] = "any"
    if fault == "crash-before-commit":
        e["output_duplicates"] = e["balance_mismatches"] = ">0"
        if sink in {"naive", "transactional"}:
            e["duplicate_charges"] = ">0"  # two records of one event: two charges
        why = "processed, not committed: redelivered and processed again (the classic duplicate)"
    elif fault == "crash-after-effect" and sink == "naive":
        e["duplicate_charges"] = ">0"
        why = "the charge committed, the offset did not: redelivery charges again"
    elif sink == "idempotent":
        why = "at-least-once plus an idempotency key: duplicates arrive, the database refuses them"
    else:
        why = "redelivery after a crash repeats effects that have no idempotency key"
    return Prediction(e, why)
