"""Command line of the payment API.

::

    python -m payment_api serve [--host 127.0.0.1] [--port 8081] [--db URL]
                                [--delay-ms N] [--drop-after-commit N|always]
                                [--lock-timeout S] [--key-retention DURATION] [--prune-interval S]

``--db`` defaults to ``$PAYMENT_API_DB``, else a SQLite file in
``${FAUST_SEMANTICS_HOME:-~/.cache/faust-semantics}``. The initial faults
default to ``$PAYMENT_API_DELAY_MS`` and ``$PAYMENT_API_DROP_AFTER_COMMIT``;
``POST /v1/_faults`` changes them while the server runs.

``--key-retention`` (how long idempotency keys are kept, e.g. ``7d``, ``36h``,
or seconds) defaults to ``$IDEMPOTENCY_KEY_RETENTION``, else 7 days: the
pipeline's default ``DEDUP_HORIZON``. A worker with SINK_TARGET=api refuses
to start against an API that keeps keys for less than its ``DEDUP_HORIZON``
(``faust -A streams_app demo`` passes ``DEDUP_HORIZON`` here).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from common.durations import format_duration, parse_duration
from common.redact import mask_url
from payment_api.server import DEFAULT_KEY_RETENTION_S, Faults, Settings, create_app


def default_db_url() -> str:
    """Return ``$PAYMENT_API_DB`` or a SQLite file under the project's data home (created if needed)."""
    url = os.environ.get("PAYMENT_API_DB")
    if url:
        return url
    home = Path(os.environ.get("FAUST_SEMANTICS_HOME") or Path.home() / ".cache" / "faust-semantics")
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home.absolute() / 'payment_api.db'}"


def drop_after_commit(value: str) -> bool | int:
    """Parse ``--drop-after-commit``: ``always``/``true``, ``never``/``false``, or a count."""
    lowered = value.strip().lower()
    if lowered in ("always", "true"):
        return True
    if lowered in ("never", "false", ""):
        return False
    try:
        count = int(lowered)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected always, never or a count, got {value!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("the count must not be negative")
    return count


def duration(value: str) -> float:
    """Parse a duration option (``7d``, ``36h``, ``90``); it must be positive."""
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a duration greater than 0")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m payment_api", description="The external payment API.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081)
    serve.add_argument("--db", default=None, help="sqlite:///path.db or postgresql://... (default: $PAYMENT_API_DB)")
    # String defaults go through ``type`` too, so a malformed environment variable is reported like a bad flag.
    serve.add_argument("--delay-ms", type=int, default=os.environ.get("PAYMENT_API_DELAY_MS", "0"))
    serve.add_argument(
        "--drop-after-commit",
        type=drop_after_commit,
        default=os.environ.get("PAYMENT_API_DROP_AFTER_COMMIT", "never"),
        help="abort the connection after committing a charge: always, never, or the next N times",
    )
    serve.add_argument("--lock-timeout", type=float, default=30.0, help="seconds before a stuck key may be retaken")
    serve.add_argument(
        "--key-retention",
        type=duration,
        default=os.environ.get("IDEMPOTENCY_KEY_RETENTION", format_duration(DEFAULT_KEY_RETENTION_S)),
        help="how long idempotency keys are kept, e.g. 7d or 36h (default: $IDEMPOTENCY_KEY_RETENTION, else 7d); "
        "at least the pipeline's DEDUP_HORIZON",
    )
    serve.add_argument("--prune-interval", type=float, default=300.0, help="seconds between prunes of expired keys")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(
        db_url=args.db or default_db_url(),
        key_retention_s=args.key_retention,
        lock_timeout_s=args.lock_timeout,
        prune_interval_s=args.prune_interval,
    )
    faults = Faults(delay_ms=args.delay_ms, drop_after_commit=args.drop_after_commit)
    logging.getLogger("payment_api").info(
        "database %s; idempotency keys kept %s", mask_url(settings.db_url), format_duration(settings.key_retention_s)
    )
    web.run_app(create_app(settings, faults), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
