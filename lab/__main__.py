"""``python -m lab run --app MODULE ...``: the lab against any Faust app (lab/apps.py).

The payments pipeline's own lab commands are ``faust -A streams_app lab ...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import apps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a Faust app under SIGKILLs and check an invariant on its output")
    run.add_argument("--app", required=True, help="the module faust -A loads, e.g. examples.order_dedup")
    run.add_argument("--input", required=True, help="the topic the lab writes records to")
    run.add_argument("--output", required=True, action="append", help="a topic the app writes (repeatable)")
    run.add_argument("--group", help="the app's consumer group (its app id); default: read from the app")
    run.add_argument("--invariant", default="lab.apps:each_key_once",
                     help="module:function (inputs, outputs) -> problems; default: every input key exactly once")
    run.add_argument("--records", default="lab.apps:order_records",
                     help="module:function (n, seed=) -> [(key, value)]; default: orders with 20 %% re-sends")
    run.add_argument("-n", "--count", type=int, default=2000, help="how many records")
    run.add_argument("--kills", type=int, default=5)
    run.add_argument("--crash-at", metavar="NAME",
                     help="kill at the app's crash point NAME (faust_guarantees.crashpoints.crashpoint) "
                          "instead of at random moments")
    run.add_argument("--workers", type=int, default=1, help="workers sharing the partitions (2: kills rebalance)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--guarantee", default="exactly_once", choices=["at_least_once", "exactly_once"])
    run.add_argument("--partitions", type=int, default=4)
    run.add_argument("--bootstrap", default="127.0.0.1:9092")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="the app's own settings")
    run.add_argument("--workdir", type=Path, default=Path("lab-runs"))
    args = parser.parse_args(argv)

    env = dict(item.split("=", 1) for item in args.env)
    group = args.group or _app_id(args.app, env)
    app_run = apps.AppRun(
        app=args.app, input_topic=args.input, output_topics=args.output, group=group, bootstrap=args.bootstrap,
        workdir=args.workdir / f"app-{group}-{int(time.time())}", guarantee=args.guarantee,
        partitions=args.partitions, env=env,
    )
    records = apps.load(args.records)(args.count, seed=args.seed)
    result = apps.run(app_run, records, apps.load(args.invariant), kills=args.kills, seed=args.seed,
                      workers=args.workers, crash_at=args.crash_at)
    print(result.summary())
    return 0 if result.holds else 1


def _app_id(module: str, env: dict[str, str]) -> str:
    """The app's id, as its worker would build it (the module imported with ``env`` set)."""
    import os

    os.environ.update(env)
    return apps.load(f"{module}:app").conf.id


if __name__ == "__main__":
    sys.exit(main())
