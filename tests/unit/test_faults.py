"""streams_app.faults: the lab's fault switches say what is wrong with a bad value."""

from __future__ import annotations

import pytest

from streams_app import faults


def test_a_crash_point_is_a_known_name_and_a_pass_number():
    assert faults._parse("sink.after_effect:25") == ("sink.after_effect", 25)
    with pytest.raises(SystemExit, match="unknown crash point"):
        faults._parse("sink.nowhere:3")
    with pytest.raises(SystemExit, match="expected NAME:N"):
        faults._parse("sink.after_effect:soon")


@pytest.mark.parametrize("spec", ["0", "-1", "often", "nan"])
def test_the_seek_back_interval_must_be_a_positive_number_of_seconds(spec):
    with pytest.raises(SystemExit, match="FAULT_SEEK_BACK_EVERY"):
        faults._positive_seconds("FAULT_SEEK_BACK_EVERY", spec)


def test_a_seek_back_interval_in_seconds():
    assert faults._positive_seconds("FAULT_SEEK_BACK_EVERY", "0.2") == 0.2


def test_without_the_switch_no_timer_is_added(monkeypatch):
    monkeypatch.delenv("FAULT_SEEK_BACK_EVERY", raising=False)

    class NoTimers:
        def timer(self, interval):
            raise AssertionError("no seek-back timer without FAULT_SEEK_BACK_EVERY")

    faults.install_seek_backs(NoTimers())
