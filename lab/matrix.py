"""The matrix: guarantee x sink x fault, each cell one experiment, and its report.

``QUICK`` is the set of cells CI runs (every claim the tests assert, a few
hundred events each); ``full_cells()`` is every combination, plus the
producer-retry fault with idempotence off and on, plus stock-Faust cells that
show what the fixes in faust_guarantees change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .runner import ExperimentResult, run_experiment
from .scenarios import API_SINKS, DB_SINKS, FAULTS, GUARANTEES, OUTAGES, applies


@dataclass(frozen=True)
class Cell:
    guarantee: str
    sink: str
    fault: str
    producer_idempotence: bool = True
    faust_fixes: str = "all"
    events: int | None = None  # None: the matrix's default
    kills: int | None = None

    @property
    def label(self) -> str:
        extra = []
        if self.fault == "producer-retry":
            extra.append("idempotence " + ("on" if self.producer_idempotence else "off"))
        if self.faust_fixes != "all":
            extra.append("stock Faust" if self.faust_fixes == "none" else f"fixes: {self.faust_fixes}")
        suffix = f" ({', '.join(extra)})" if extra else ""
        return f"{self.guarantee} / {self.sink} / {self.fault}{suffix}"


QUICK: tuple[Cell, ...] = (
    Cell("at_least_once", "naive", "crash-after-effect"),
    Cell("at_least_once", "idempotent", "crash-after-effect"),
    Cell("at_least_once", "idempotent", "random-kills"),
    Cell("at_least_once", "naive", "crash-before-commit"),
    Cell("at_most_once", "naive", "crash-before-commit"),
    Cell("exactly_once", "idempotent", "random-kills"),
    Cell("exactly_once", "idempotent", "crash-mid-transaction"),
    Cell("exactly_once", "naive", "crash-after-effect"),
    Cell("exactly_once", "transactional", "crash-after-effect"),
    Cell("at_least_once", "idempotent", "producer-retry", producer_idempotence=False),
    Cell("at_least_once", "idempotent", "producer-retry", producer_idempotence=True),
    Cell("at_least_once", "idempotent", "rebalance"),
    Cell("exactly_once", "idempotent", "rebalance"),
    Cell("at_least_once", "api-naive", "api-drop-after-commit"),
    Cell("at_least_once", "api-idempotent", "api-drop-after-commit"),
    Cell("exactly_once", "api-naive", "api-timeout"),
    Cell("exactly_once", "api-idempotent", "api-timeout"),
    Cell("exactly_once", "api-idempotent", "crash-after-effect"),
)

#: What an API sink meets in the full matrix: the API's own faults, and the Kafka-side
#: crashes that redeliver to the sink (the other faults act upstream of any sink).
API_FAULTS = ("crash-after-effect", "random-kills", "rebalance", "api-timeout", "api-drop-after-commit")

#: Stock Faust next to the fixed pipeline: the cells where a fix changes the outcome.
STOCK: tuple[Cell, ...] = (
    Cell("exactly_once", "idempotent", "crash-mid-transaction", faust_fixes="none"),
    Cell("exactly_once", "idempotent", "random-kills", faust_fixes="none"),
    Cell("at_least_once", "idempotent", "crash-after-effect", faust_fixes="none"),
)


def outage_cells(*, cluster: bool, events: int = 2000) -> list[Cell]:
    """The infrastructure's faults (:data:`~lab.scenarios.OUTAGES`) under exactly_once and
    at_least_once with the idempotent sink (the API one for api-outage): the issue's
    claim is that none of them loses or repeats a charge. The broker faults need the
    local 3-broker cluster (``cluster``)."""
    return [
        Cell(guarantee, "api-idempotent" if fault == "api-outage" else "idempotent", fault, events=events)
        for guarantee in ("exactly_once", "at_least_once")
        for fault in sorted(OUTAGES)
        if cluster or FAULTS[fault].needs != "cluster"
    ]


def full_cells(eos_events: int = 5000, eos_kills: int = 20, *, cluster: bool = False) -> list[Cell]:
    """Every guarantee x database sink x fault, every guarantee x API sink x the faults
    that reach it (:data:`API_FAULTS`); every exactly_once cell at the large scale
    (``eos_events`` events, ``eos_kills`` kills where the fault kills); then the
    infrastructure's faults (:func:`outage_cells`)."""
    cells: list[Cell] = []
    for guarantee in GUARANTEES:
        for sink in DB_SINKS + API_SINKS:
            for fault in FAULTS:
                if fault in OUTAGES or not applies(sink, fault) or (sink in API_SINKS and fault not in API_FAULTS):
                    continue
                scale: dict[str, int] = {}
                if guarantee == "exactly_once":  # the scale of evidence for exactly_once
                    scale = {"events": eos_events, "kills": eos_kills}
                if fault == "producer-retry":
                    cells += [Cell(guarantee, sink, fault, producer_idempotence=on, **scale) for on in (False, True)]
                else:
                    cells.append(Cell(guarantee, sink, fault, **scale))
    return sorted(cells, key=_priority) + list(STOCK) + outage_cells(cluster=cluster)


#: The order of the full matrix: the strongest claims first, so that an interrupted run
#: (its report is rewritten after every cell) has measured what matters most.
_SINK_ORDER = ("idempotent", "api-idempotent", "transactional", "api-naive", "naive")
_FAULT_ORDER = ("random-kills", "crash-mid-transaction", "crash-after-effect", "api-drop-after-commit",
                "api-timeout", "rebalance", "crash-before-commit", "producer-retry", "none",
                *sorted(OUTAGES))


def _priority(cell: Cell) -> tuple[int, int, int]:
    return (cell.guarantee != "exactly_once", _SINK_ORDER.index(cell.sink), _FAULT_ORDER.index(cell.fault))


def run_cells(
    cells: Iterable[Cell], *, events: int, kills: int, seed: int, bootstrap: str, workdir: Path,
    on_result: Callable[[Cell, ExperimentResult], None] | None = None,
) -> list[tuple[Cell, ExperimentResult]]:
    results = []
    for cell in cells:
        result = run_experiment(
            cell.guarantee, cell.sink, cell.fault,
            events=cell.events or events, kills=cell.kills if cell.kills is not None else kills,
            seed=seed, bootstrap=bootstrap, workdir=workdir, faust_fixes=cell.faust_fixes,
            producer_idempotence=cell.producer_idempotence,
        )
        results.append((cell, result))
        if on_result:
            on_result(cell, result)
    return results


def save_json(results: list[tuple[Cell, ExperimentResult]], path: Path, *, code: str) -> None:
    path.write_text(json.dumps(
        [{"cell": cell.label, "code": code, **result.as_json()} for cell, result in results], indent=1,
    ))


def measured_before(path: Path, cells: Iterable[Cell], *, code: str) -> list[tuple[Cell, ExperimentResult]]:
    """The cells of a saved matrix (``semantics.json``) measured on the same code,
    for ``lab matrix --resume``: a matrix takes hours, and a run that was stopped
    goes on where it stopped. Cells measured on other code are run again."""
    if not path.exists() or code.endswith("+changes") or code == "unknown":
        return []
    by_label = {cell.label: cell for cell in cells}
    return [
        (by_label[saved["cell"]], ExperimentResult.from_json(saved))
        for saved in json.loads(path.read_text())
        if saved.get("code") == code and saved.get("cell") in by_label
    ]
