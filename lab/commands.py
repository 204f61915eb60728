"""``faust -A streams_app lab ...``: the semantics lab's commands on the payments app.

Registered with Faust's CLI when the entry point (``streams_app``) imports it, like the app's
own commands (streams_app/commands.py); the lab for any other Faust app is ``python -m lab run``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from faust.cli import AppCommand, argument, option
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from lab.scenarios import FAULTS, SINKS
from streams_app.commands import command, console, start_local_broker


@command(
    argument("action", type=click.Choice(["run", "matrix", "soak"])),
    option("--guarantee", type=click.Choice(["at_least_once", "exactly_once", "at_most_once"]),
           default="at_least_once", show_default=True, help="run: the processing guarantee."),
    option("--sink", type=click.Choice(SINKS), default="idempotent", show_default=True,
           help="run: how the sink makes the external effect (api-*: through the payment API)."),
    option("--fault", type=click.Choice(list(FAULTS)), default="none", show_default=True,
           help="run: the fault to inject (api-*: by the payment API, for the api-* sinks)."),
    option("--events", type=int, default=300, show_default=True, help="Records per run."),
    option("--kills", type=int, default=2, show_default=True, help="SIGKILLs per run."),
    option("--seed", type=int, default=1, show_default=True, help="Seed of traffic and kill times."),
    option("--json", "as_json", is_flag=True, help="run: print one JSON object."),
    option("--stock-faust", is_flag=True, help="Run without this project's Faust fixes."),
    option("--no-producer-idempotence", is_flag=True,
           help="run: the worker's producer without idempotence (for producer-retry)."),
    option("--keep-topics", is_flag=True, help="run: keep the run's topics for inspection (deleted by default)."),
    option("--quick", is_flag=True, help="matrix: the cells CI asserts, at small scale."),
    option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports"),
           show_default=True, help="matrix: where semantics.md/.html/.png/.json go."),
    option("--resume", is_flag=True,
           help="matrix: keep the cells of OUT/semantics.json measured on this same code; run the rest."),
    option("--minutes", type=float, default=30.0, show_default=True, help="soak: how long traffic flows."),
    option("--rate", type=int, default=200, show_default=True, help="soak: payments per second."),
    option("--horizon", type=str, default=None,
           help="soak: the workers' DEDUP_HORIZON (e.g. 10m), shorter than the run so the dedup "
                "state plateaus; default: the setting's (7 days)."),
    option("--kill-every", type=float, default=120.0, show_default=True,
           help="soak: seconds between worker SIGKILLs (randomised)."),
    option("--bounce-every", type=float, default=300.0, show_default=True,
           help="soak: seconds between broker bounces (on the local 3-broker cluster only)."),
    option("--outages", is_flag=True,
           help="matrix: only the infrastructure faults (broker, controller, database, API, zombie); "
                "the broker faults need BROKER_URL listing the local 3-broker cluster."),
)
async def lab(
    self: AppCommand, action: str, guarantee: str, sink: str, fault: str, events: int, kills: int,
    seed: int, as_json: bool, stock_faust: bool, no_producer_idempotence: bool, keep_topics: bool,
    quick: bool, out: Path, resume: bool, minutes: float, rate: int, kill_every: float,
    bounce_every: float, outages: bool, horizon: str | None,
) -> None:
    """The semantics lab: inject a fault on the real broker and count what happened."""
    from lab.matrix import QUICK, full_cells, measured_before, outage_cells, run_cells
    from lab.report import code_version, write_reports
    from lab.runner import run_experiment

    settings = self.app.settings
    await asyncio.to_thread(start_local_broker, settings)
    workdir = Path("lab-runs")
    if action == "run":
        result = await asyncio.to_thread(
            run_experiment, guarantee, sink, fault, events=events, kills=kills, seed=seed,
            bootstrap=settings.bootstrap, workdir=workdir,
            faust_fixes="none" if stock_faust else "all",
            producer_idempotence=not no_producer_idempotence, keep_topics=keep_topics,
        )
        if as_json:
            print(json.dumps(result.as_json()))
        else:
            _print_result(result)
        return
    if action == "soak":
        from common.durations import parse_duration
        from lab.soak import run_soak, write_report

        result = await asyncio.to_thread(
            run_soak, minutes=minutes, rate=rate, kill_every=kill_every, bounce_every=bounce_every,
            bootstrap=settings.bootstrap, guarantee=guarantee, seed=seed, workdir=workdir,
            horizon_s=None if horizon is None else parse_duration(horizon),
        )
        paths = write_report(result, out)
        console.print(f"soak {'exact' if result.exact else 'NOT exact'}: {result.counts}; "
                      f"RSS growth {result.rss_growth_mb()} MB; report: {paths[0]}")
        if not result.exact:
            raise SystemExit(1)
        return
    # The broker faults need the local 3-broker cluster: BROKER_URL listing its hosts.
    cluster = len(settings.broker_hosts) >= 3
    if outages:
        cells = outage_cells(cluster=cluster, events=events)
        scale = (f"Infrastructure faults: {events} records per cell, one fault each, "
                 f"{'on the local 3-broker cluster' if cluster else 'on one broker (no broker faults)'}.")
    else:
        cells = list(QUICK) if quick else full_cells(cluster=cluster)
        scale = (f"Quick matrix: {events} records and {kills} kills per cell." if quick else
                 f"Full matrix: {events} records and {kills} kills per at_least_once and at_most_once "
                 "cell; every exactly_once cell at 5,000 records and 20 kills (where the fault kills).")
    done: list = measured_before(out / "semantics.json", cells, code=code_version()) if resume else []
    if done:
        console.print(f"resuming: {len(done)} of {len(cells)} cells were measured on this code already")
    todo = [cell for cell in cells if cell not in {c for c, _ in done}]
    with Progress(console=console) as progress:
        task = progress.add_task("lab matrix", total=len(cells), completed=len(done))

        def advance(cell, result) -> None:
            mark = "[green]as predicted[/green]" if result.as_predicted else "[red]NOT as predicted[/red]"
            progress.console.print(f"{cell.label}: {mark} ({result.seconds:.0f} s)")
            progress.advance(task)
            done.append((cell, result))
            # Rewrite the report after every cell: an interrupted matrix still says what it measured.
            progress_note = "" if len(done) == len(cells) else f" Partial: {len(done)} of {len(cells)} cells so far."
            in_order = sorted(done, key=lambda measured: cells.index(measured[0]))
            write_reports(in_order, out, title="Kafka delivery semantics, measured", scale=scale + progress_note)

        await asyncio.to_thread(
            run_cells, todo, events=events, kills=kills, seed=seed,
            bootstrap=settings.bootstrap, workdir=workdir, on_result=advance,
        )
    console.print(f"wrote {out}/semantics.md, .html, .png and .json")


def _print_result(result) -> None:
    data = result.as_json()
    table = Table(title=f"{result.guarantee} / {result.sink} / {result.fault} (seed {result.seed})")
    for column in ("measure", "count", "predicted"):
        table.add_column(column)
    for key in ("events", "unique_events", "charged_unique", "duplicate_charges", "lost",
                "output_duplicates", "output_missing", "open_transactions", "balance_mismatches",
                "log_duplicates", "dead_lettered", "kills", "restarts", "rebalances", "retries"):
        table.add_row(key, str(data[key]), data["predicted"].get(key, ""))
    Console().print(table)
    verdict = "[green]as predicted[/green]" if result.as_predicted else "[red]NOT as predicted[/red]"
    Console().print(f"{verdict}: {result.prediction.why}")
    for note in result.notes:
        Console().print(f"note: {note}")
