"""LOG_FORMAT=json: one JSON object per log line, for log shippers.

Text logs are for people; a log pipeline (Loki, Elasticsearch, CloudWatch) wants
fields it can filter on without a regular expression. With ``LOG_FORMAT=json``
the worker's handlers (set up by Faust/mode when the worker starts, from the
app's ``logging_config``) write each record as one line::

    {"time": "2026-12-05T01:02:03.456Z", "level": "WARNING", "logger": "agents.processing",
     "message": "...", "stage": "ingest", "topic": "payments.raw", "partition": 2, "offset": 1045}

``stage``, ``topic``, ``partition``, ``offset`` and ``event_id`` appear when the
log call passes them (``extra=record_fields(message, stage=...)``). Nothing is
configured at import: :func:`logging_config` only returns the dictConfig.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

#: The record attributes copied into the JSON object when a log call sets them.
FIELDS = ("stage", "topic", "partition", "offset", "event_id")


class JsonFormatter(logging.Formatter):
    """A :class:`logging.Formatter` writing one JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # json.dumps escapes newlines: a traceback stays on the one line.
        return json.dumps(out, default=str, ensure_ascii=False)


def record_fields(message: Any = None, *, stage: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    """``extra=`` for a log call about one Kafka record (a Faust Message) and/or stage."""
    fields: dict[str, Any] = {"stage": stage, "event_id": event_id}
    if message is not None:
        fields.update(topic=message.topic, partition=message.partition, offset=message.offset)
    return {k: v for k, v in fields.items() if v is not None}


def logging_config(log_format: str) -> dict[str, Any] | None:
    """The app's ``logging_config`` for ``log_format`` (None: Faust's own text format).

    Merged into the config mode builds for the worker (``merge``): its handlers
    stay, their formatters ("default" for a log file, "colored" for the console)
    become :class:`JsonFormatter`.
    """
    if log_format == "text":
        return None
    if log_format != "json":
        raise ValueError(f"LOG_FORMAT={log_format!r}: expected text or json")
    json_formatter = {"()": f"{__name__}.JsonFormatter"}
    return {"version": 1, "merge": True, "formatters": {"default": json_formatter, "colored": json_formatter}}
