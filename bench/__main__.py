"""``python -m bench run --quick|--full [--out reports/]``, ``python -m bench render [--out reports/]``:
see :mod:`bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import run_benchmark
from .config import preset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure everything and write bench.md/.json/.png")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="mode",
                      help="20k records (Faust 5k), 4 partitions, 1 run (the default)")
    size.add_argument("--full", action="store_const", const="full", dest="mode",
                      help="200k records (Faust 8k) at 1, 4 and 8 partitions, 3 runs")
    run.add_argument("--out", type=Path, default=Path("reports"), help="where the reports go")
    run.add_argument("--bootstrap", help="Kafka bootstrap host:port (default 127.0.0.1:9092)")
    run.add_argument("--runs", type=int, help="override the preset's number of runs")
    run.add_argument("--records", type=int, help="override the preset's backlog size")
    run.add_argument("--no-pin", action="store_true", help="do not pin broker and systems to CPUs")
    one = commands.add_parser("one", help="a quick look at a few systems (nothing written to reports/)")
    one.add_argument("systems", nargs="+", help="report keys: faust_alo, faust_eos, quix_alo, raw_eos, ...")
    one.add_argument("--records", type=int, default=80_000, help="backlog size (Faust reads all of it)")
    one.add_argument("--partitions", type=int, default=4)
    one.add_argument("--profile", type=int, default=0, metavar="SECONDS", help="py-spy the first system")
    one.add_argument("--bootstrap", help="Kafka bootstrap host:port (default 127.0.0.1:9092)")
    one.add_argument("--no-pin", action="store_true", help="do not pin broker and systems to CPUs")
    render = commands.add_parser("render", help="write bench.md and bench.png again from bench.json")
    render.add_argument("--out", type=Path, default=Path("reports"), help="where bench.json is")
    args = parser.parse_args(argv)
    if args.command == "render":
        from .report import render_from_json

        for path in render_from_json(args.out / "bench.json"):
            print(f"wrote {path}")
        return
    if args.command == "one":
        from .one import run_one

        config = preset("quick").replace(records=args.records, faust_records=None, pin_cpus=not args.no_pin,
                                         **({"bootstrap": args.bootstrap} if args.bootstrap else {}))
        run_one(config, args.systems, args.partitions, args.profile)
        return
    config = preset(args.mode or "quick")
    overrides = {"bootstrap": args.bootstrap, "runs": args.runs, "records": args.records}
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None},
                            pin_cpus=not args.no_pin, workdir=args.out / "tmp" / "bench")
    run_benchmark(config, args.out)


if __name__ == "__main__":
    main()
