"""Command line of the transactional outbox.

::

    python -m outbox relay   --db URL [--bootstrap 127.0.0.1:9092] --topic T
                             [--once] [--interval S] [--batch-size N]
    python -m outbox consume --db URL [--bootstrap ...] --topic T --group G
                             [--until-caught-up] [--no-dedup]
    python -m outbox serve   --db URL [--host 127.0.0.1] [--port 8081] [--credit-limit N]

``relay`` publishes unsent outbox rows until SIGTERM/SIGINT (it finishes the
batch in hand) or, with ``--once``, until no unsent row is left. The topic must
exist: the relay creates none, because an auto-created topic gets the broker's
default partition count. ``OUTBOX_CRASH_AT=after_commit|after_publish[:N]``
makes it SIGKILL itself at that point (see :mod:`outbox.relay`).

``consume`` runs the deduplicating reference consumer (:mod:`outbox.consumer`);
``--no-dedup`` is the naive one, for comparison.

``serve`` is the payment API (:mod:`payment_api.server`) with the orders routes
added, on the same database.

``relay`` and ``consume`` print their totals as one JSON line on stdout, e.g.
``{"published": 5000, "batches": 10, "seconds": 0.8, "rows_per_second": 6250.0}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from outbox.consumer import run_consumer
from outbox.orders import DEFAULT_CREDIT_LIMIT, add_routes
from outbox.relay import CRASH_ENV, CrashPoint, RelayBusy, RelayConfig, run_relay
from payment_api.server import Settings, create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m outbox", description="The transactional outbox.")
    commands = parser.add_subparsers(dest="command", required=True)

    relay = commands.add_parser("relay", help="publish unsent outbox rows to Kafka")
    _common(relay)
    relay.add_argument("--once", action="store_true", help="exit when no unsent row is left")
    relay.add_argument("--interval", type=float, default=0.5, help="seconds between polls of an empty outbox")
    relay.add_argument("--batch-size", type=int, default=500)

    consume = commands.add_parser("consume", help="apply outbox events once (dedup on the outbox id)")
    _common(consume)
    consume.add_argument("--group", required=True, help="consumer group id")
    consume.add_argument("--until-caught-up", action="store_true", help="exit at the end of the topic")
    consume.add_argument("--no-dedup", action="store_true", help="apply every record, duplicates included")

    serve = commands.add_parser("serve", help="the payment API plus POST/GET /v1/orders")
    serve.add_argument("--db", required=True, help="sqlite:///path.db or postgresql://...")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081)
    serve.add_argument("--credit-limit", type=int, default=DEFAULT_CREDIT_LIMIT)
    return parser


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--db", required=True, help="sqlite:///path.db or postgresql://...")
    command.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers, host:port[,...]")
    command.add_argument("--topic", required=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        web.run_app(serve_app(args.db, args.credit_limit), host=args.host, port=args.port)
        return
    if args.command == "relay":
        try:
            CrashPoint.parse(os.environ.get(CRASH_ENV, ""))
        except ValueError as exc:
            parser.error(str(exc))
    try:
        totals = asyncio.run(_run(args))
    except RelayBusy as exc:
        parser.exit(3, f"{parser.prog}: {exc}\n")
    print(json.dumps(totals), flush=True)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    if args.command == "relay":
        config = RelayConfig(args.db, args.bootstrap, args.topic, args.batch_size, args.interval, args.once)
        stats = await run_relay(config, stop)
        rate = stats.published / stats.seconds if stats.seconds else 0.0
        return {**dataclasses.asdict(stats), "rows_per_second": round(rate, 1)}
    consumed = await run_consumer(
        args.db,
        args.bootstrap,
        args.topic,
        args.group,
        deduplicate=not args.no_dedup,
        until_caught_up=args.until_caught_up,
        stop=stop,
    )
    return dataclasses.asdict(consumed)


def serve_app(db_url: str, credit_limit: int) -> web.Application:
    app = create_app(Settings(db_url=db_url))
    add_routes(app, db_url, credit_limit=credit_limit)
    return app


if __name__ == "__main__":
    main()
