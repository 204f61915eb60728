"""A lab run started with a relative work directory: its workers run in the repository, the
lab wherever it was started, so every path they share is made absolute (a matrix started
from a clone once read an empty sink database beside the one its workers charged)."""

from __future__ import annotations

from pathlib import Path

from lab.workers import PipelineConfig


def test_a_relative_workdir_means_the_same_files_to_the_lab_and_its_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig(run_id="run-1", workdir=Path("lab-runs") / "run-1")
    env = config.env("w1", web_port=6100)
    assert config.workdir == tmp_path / "lab-runs" / "run-1"
    assert env["SINK_DB"] == f"sqlite:///{tmp_path}/lab-runs/run-1/sink.db"
    assert Path(env["APP_DATADIR"]).is_absolute()
