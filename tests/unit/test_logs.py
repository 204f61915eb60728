"""LOG_FORMAT=json (streams_app/logs.py): one JSON object per line, with the record's fields."""

from __future__ import annotations

import io
import json
import logging
import sys
from types import SimpleNamespace

import pytest
from mode.utils.logging import _setup_logging

from streams_app.exceptions import SettingsError
from streams_app.logs import JsonFormatter, logging_config, record_fields
from streams_app.settings import Settings


def formatted(**extra) -> dict:
    logger = logging.getLogger("test.logs")
    record = logger.makeRecord("test.logs", logging.WARNING, __file__, 1, "dead-lettering %s", ("x",), None,
                               extra=extra)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_a_record_about_a_kafka_record_carries_stage_topic_partition_offset_and_event_id():
    message = SimpleNamespace(topic="payments.raw", partition=2, offset=1045)
    out = formatted(**record_fields(message, stage="ingest", event_id="evt-1"))
    assert out["message"] == "dead-lettering x" and out["level"] == "WARNING" and out["logger"] == "test.logs"
    assert (out["stage"], out["topic"], out["partition"], out["offset"], out["event_id"]) == \
        ("ingest", "payments.raw", 2, 1045, "evt-1")
    assert out["time"].endswith("Z")


def test_fields_a_call_does_not_pass_are_absent_and_a_traceback_stays_on_one_line():
    assert set(formatted()) == {"time", "level", "logger", "message"}
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_the_worker_logging_setup_writes_json_lines(monkeypatch):
    """The config goes through mode's own worker logging setup, as `faust worker` does."""
    saved = logging.root.handlers[:], logging.root.level
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        _setup_logging(level="INFO", stream=stream, logging_config=logging_config("json"))
        logging.getLogger("streams_app.test").info("hello %s", "there", extra={"stage": "dedup"})
    finally:
        logging.root.handlers[:] = saved[0]
        logging.root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert {"message": "hello there", "stage": "dedup"}.items() <= lines[-1].items()


def test_text_is_fausts_own_format_and_other_values_are_refused():
    assert logging_config("text") is None
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "yaml"})
