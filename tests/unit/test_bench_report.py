"""bench/report.py: the targets say what limits a missed throughput ratio."""

from __future__ import annotations

from types import SimpleNamespace

from bench.report import _targets

RATIOS = {
    "faust_alo_over_raw_alo": 0.02, "faust_eos_over_faust_alo": 1.5, "faust_alo_over_quix_alo": 0.04,
    "faust_eos_over_quix_eos": 0.05, "faust_min_alo_over_raw_alo": 0.03, "faust_alo_over_faust_min_alo": 0.63,
    "faust_min_alo_over_quix_alo": 0.06, "faust_min_eos_over_quix_eos": 0.11, "faust_eos_over_faust_min_eos": 0.47,
    "faust_min_eos_over_raw_eos": 0.0972,
    "faust_eos_pipeline_ci0.1_over_faust_alo_pipeline_ci0.1": 0.78, "faust_alo_pipeline_over_faust_alo": 0.55,
}


def _by_name(ratios):
    return {t["target"]: t for t in _targets(SimpleNamespace(restarts=[], restore=None, latencies={}, specs={}), ratios)}


def test_a_missed_throughput_target_is_split_into_faust_itself_and_the_pipeline():
    targets = _by_name(RATIOS)
    raw = targets["Faust at_least_once >= 50 % of the raw loop"]
    assert raw["met"] is False and round(raw["margin"], 2) == -0.96
    assert raw["detail"] == "Faust itself (one stock agent, one hop): 3%; this project's stage: 63% of that agent"
    assert targets["Faust >= Quix Streams, exactly_once"]["detail"].startswith(
        "Faust itself (one stock agent, one hop): 11%; this project's stage: 47%")
    assert targets["Faust exactly_once >= 80 % of Faust at_least_once (default commit interval)"]["detail"] == \
        "the whole pipeline at commit interval 0.1 s: 78%"


def test_without_the_minimal_agent_the_detail_is_empty_not_invented():
    ratios = {k: v for k, v in RATIOS.items() if "faust_min" not in k and "ci0.1" not in k}
    throughput = [t for name, t in _by_name(ratios).items() if name.startswith("Faust")]
    assert len(throughput) == 4
    for target in throughput:
        assert target["detail"] == ""


def _doc(targets, restore=None):
    systems = {"raw_alo": {"cpu_s_per_million": 73.2}, "faust_min_alo": {"cpu_s_per_million": 1976.2},
               "raw_eos": {"throughput_eps": 6716.0}, "faust_min_eos": {"throughput_eps": 653.0}}
    return {"targets": targets, "systems": systems, "ratios": RATIOS, "state": {"restore": restore},
            "profiles": {"faust_alo": {"busy_share": 0.49}}}


def test_the_report_says_what_limits_each_missed_target_from_the_run_s_own_figures():
    from bench.markdown import _limits_section

    targets = list(_by_name(RATIOS).values())
    text = "\n".join(_limits_section(_doc(targets)))
    assert "reaches 3% of the raw loop under at_least_once (it awaits" in text
    assert "10% under exactly_once (where it awaits no send) and spends 1.98 ms of CPU per event" in text
    assert "against the raw loop's 0.07 ms" in text and "robinhood/faust#563" in text
    assert "at_least_once.** This project's dedup stage runs at 63% of that agent on the same work" in text
    assert "the sink's charge, in one process) at 55% of the dedup stage; py-spy found its worker busy 49%" in text
    assert "exactly_once.** This project's dedup stage runs at 47% of that agent on the same work" in text
    assert "Next step" in text


def test_nothing_is_said_when_every_target_is_met():
    from bench.markdown import _limits_section

    met = [dict(t, met=True) for t in _by_name(RATIOS).values()]
    assert _limits_section(_doc(met)) == []


def test_a_run_that_did_not_drain_is_never_reported_as_correct_output():
    from bench.markdown import _notes_section, _summary

    run = {"partitions": 4, "run": 2, "drained": False, "exit_code": 0, "problem": None}
    doc = {"ratios": {}, "all_correct": True, "systems": {"faust_alo_ci0.1": {"run_details": [run]}}}
    assert "1 run(s) did not drain their input** (`faust_alo_ci0.1` p4 run 3)" in _summary(doc)
    assert "exactly its input's unique events" not in _summary(doc)
    assert any("`faust_alo_ci0.1` p4 run 3: did NOT drain" in line for line in _notes_section(doc))


def test_a_system_key_names_its_worker_processes_and_reads_back():
    """`faust_alo_w2` is two worker processes of one group; its key reads back to itself and
    its label and settings say so (the scaling rows of reports/bench.md)."""
    from bench.one import spec_for

    two = spec_for("faust_alo_w2")
    assert (two.kind, two.guarantee, two.variant.workers, two.key) == ("faust", "at_least_once", 2, "faust_alo_w2")
    assert "2 worker processes" in two.label and two.settings["worker_processes"] == 2
    assert spec_for("faust_eos_pipeline").variant.workers == 1
