"""The same dedup pipeline in Quix Streams: validate, dedup with RocksDB state, forward.

Quix Streams (confluent-kafka/librdkafka underneath, RocksDB state with a
changelog topic) is the other maintained Python stream processor; this module
is the Quix version of the raw loop, record for record (:mod:`bench.payload`):

    input (event id -> bytes) -> parse -> drop invalid -> drop seen ids (state) -> output (account -> JSON)

State is scoped by the message key, the event id, so ``state.get("first_seen")``
is the per-id entry that Faust's ``seen-events`` table keeps. Quix writes the
state and its changelog at each checkpoint, after the producer is flushed, so
under at-least-once a crash can forward an id twice but never lose one; under
exactly-once the outputs, the changelog and the offsets commit in one Kafka
transaction per checkpoint.

The commit interval is set to Faust's default (2.8 s, Quix's own is 5 s) so
both frameworks are compared at the same commit cadence.

Run: ``python -m bench.quix_pipeline --input T --output T --group G --state-dir D``.
SIGTERM stops the loop after a final checkpoint (Quix's own handler).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from quixstreams import Application, State
from quixstreams.app import ProcessingGuarantee

from .config import FAUST_DEFAULT_COMMIT_INTERVAL
from .payload import DEFAULT_HORIZON_S, Payment, parse, seen_within

GUARANTEES: dict[str, ProcessingGuarantee] = {
    "at_least_once": "at-least-once", "exactly_once": "exactly-once",
}


def build(args: argparse.Namespace) -> Application:
    """The Quix application with its one dataframe wired."""
    app = Application(
        broker_address=args.bootstrap, consumer_group=args.group, auto_offset_reset="earliest",
        state_dir=str(args.state_dir), processing_guarantee=GUARANTEES[args.guarantee],
        commit_interval=args.commit_interval, loglevel="WARNING",
    )
    source = app.topic(args.input, key_deserializer="str", value_deserializer="bytes")
    sink = app.topic(args.output, key_serializer="str", value_serializer="json")
    horizon_s = args.horizon

    def first_occurrence(payment: Payment, state: State) -> bool:
        now = time.time()
        if seen_within(state.get("first_seen"), now, horizon_s):
            return False
        state.set("first_seen", now)
        return True

    sdf = app.dataframe(source)
    sdf = sdf.apply(parse).filter(lambda payment: payment is not None)
    sdf = sdf.filter(first_occurrence, stateful=True)
    sdf.to_topic(sink, key=lambda payment: payment["account"])
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quix_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--guarantee", choices=tuple(GUARANTEES), default="at_least_once")
    parser.add_argument("--commit-interval", type=float, default=float(FAUST_DEFAULT_COMMIT_INTERVAL))
    parser.add_argument("--horizon", type=float, default=DEFAULT_HORIZON_S, help="dedup horizon, seconds")
    build(parser.parse_args(argv)).run()


if __name__ == "__main__":
    main()
