"""The lab's predictions for the payment API sinks and faults (what the matrix asserts)."""

import pytest

from lab.matrix import QUICK, full_cells
from lab.scenarios import API_SINKS, FAULTS, GUARANTEES, applies, predict, sink_env


def test_api_sinks_map_to_a_mode_and_the_api_target():
    assert sink_env("api-naive") == {"SINK_MODE": "naive", "SINK_TARGET": "api"}
    assert sink_env("transactional") == {"SINK_MODE": "transactional", "SINK_TARGET": "database"}


@pytest.mark.parametrize("guarantee", GUARANTEES)
@pytest.mark.parametrize("fault", ["api-timeout", "api-drop-after-commit"])
def test_without_a_key_a_lost_answer_is_a_second_charge_with_one_it_is_not(guarantee, fault):
    assert predict(guarantee, "api-naive", fault).expect["duplicate_charges"] == ">0"
    idempotent = predict(guarantee, "api-idempotent", fault).expect
    assert set(idempotent.values()) == {"=0"}


def test_against_kafka_faults_an_api_sink_is_predicted_as_its_database_twin():
    for guarantee in GUARANTEES:
        for fault in ("crash-after-effect", "random-kills", "rebalance"):
            for sink in API_SINKS:
                twin = sink.removeprefix("api-")
                assert predict(guarantee, sink, fault).expect == predict(guarantee, twin, fault).expect


def test_api_faults_only_meet_api_sinks_in_every_matrix():
    assert not applies("idempotent", "api-timeout") and applies("api-idempotent", "api-timeout")
    for cell in (*QUICK, *full_cells(cluster=True)):
        assert applies(cell.sink, cell.fault), cell
    api_cells = {(c.guarantee, c.sink, c.fault) for c in full_cells() if c.sink in API_SINKS}
    assert {(g, s, f) for g in GUARANTEES for s in API_SINKS
            for f in ("api-timeout", "api-drop-after-commit")} <= api_cells
    assert all(FAULTS[f].api_only is False for f in ("none", "crash-after-effect"))


def test_infrastructure_faults_are_predicted_harmless_with_an_idempotent_sink():
    """The issue's claim for broker, database, API and zombie faults: exactly_once exact;
    at_least_once with the idempotent sink charges each event once and loses nothing."""
    from lab.matrix import outage_cells
    from lab.scenarios import OUTAGES

    cells = outage_cells(cluster=True)
    assert {c.fault for c in cells} == set(OUTAGES)
    for cell in cells:
        expect = predict(cell.guarantee, cell.sink, cell.fault).expect
        if cell.guarantee == "exactly_once":
            assert set(expect.values()) == {"=0"}, cell
        else:
            assert expect["duplicate_charges"] == expect["lost"] == "=0", cell
    assert not {c.fault for c in outage_cells(cluster=False)} & {"broker-kill", "broker-pause", "controller-kill"}
    assert not applies("api-idempotent", "db-outage") and not applies("idempotent", "api-outage")
