"""lab matrix --resume: a saved cell is reused only when measured on the same code."""

from __future__ import annotations

from lab.matrix import Cell, measured_before, save_json
from lab.runner import ExperimentResult, Injected
from lab.scenarios import predict


def _result(cell: Cell, duplicates: int) -> ExperimentResult:
    counts = {"events": 300, "unique_events": 240, "charged_unique": 240, "duplicate_charges": duplicates,
              "lost": 0, "output_duplicates": 0, "output_missing": 0, "open_transactions": 0,
              "balance_mismatches": 0, "log_duplicates": 0, "mismatch_examples": ["acct-1 USD: x"]}
    return ExperimentResult(
        cell.guarantee, cell.sink, cell.fault, seed=1, faust_fixes="all", producer_idempotence=True,
        counts=counts, injected=Injected(kills=2, restarts=2), prediction=predict(cell.guarantee, cell.sink, cell.fault),
        drained=True, seconds=61.0, run_id="lab-x", notes=["a note"],
    )


def test_a_saved_cell_reads_back_as_it_was(tmp_path):
    cell = Cell("at_least_once", "naive", "crash-after-effect")
    result = _result(cell, duplicates=3)
    save_json([(cell, result)], tmp_path / "semantics.json", code="abc123")
    [(again_cell, again)] = measured_before(tmp_path / "semantics.json", [cell], code="abc123")
    assert again_cell == cell
    assert again.as_json() == result.as_json()
    assert again.as_predicted == result.as_predicted


def test_cells_measured_on_other_code_or_not_in_the_matrix_run_again(tmp_path):
    kept, other = Cell("at_least_once", "naive", "crash-after-effect"), Cell("exactly_once", "naive", "none")
    path = tmp_path / "semantics.json"
    save_json([(kept, _result(kept, 3)), (other, _result(other, 0))], path, code="abc123")
    assert measured_before(path, [kept, other], code="def456") == []
    assert [c for c, _ in measured_before(path, [kept], code="abc123")] == [kept]
    assert measured_before(path, [kept], code="abc123+changes") == []
    assert measured_before(tmp_path / "missing.json", [kept], code="abc123") == []


def test_the_headline_counts_the_pipeline_apart_from_the_stock_faust_reference_cells():
    """Stock-Faust cells exist to show what stock Faust breaks: their failures must not
    read as failures of the pipeline, nor hide one of the pipeline's."""
    from lab.report import headline

    ours_ok, ours_bad = Cell("at_least_once", "naive", "crash-after-effect"), Cell("exactly_once", "naive", "none")
    stock = Cell("exactly_once", "idempotent", "random-kills", faust_fixes="none")
    results = [(ours_ok, _result(ours_ok, 3)), (ours_bad, _result(ours_bad, 5)), (stock, _result(stock, 1))]
    assert [r.as_predicted for _, r in results] == [True, False, False]
    assert headline(results) == (
        "**1 of 2 cells of this project's pipeline came out as the source text predicts.** "
        "Stock Faust, on the 1 reference cell run without the fixes: 0 of 1 as predicted."
    )
