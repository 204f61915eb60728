"""No password of SINK_DB, PAYMENT_API_URL or BROKER_URL reaches an output: the
show-settings table, settings errors, SinkError, the dashboard's target."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.sink import effect_target
from streams_app.exceptions import SettingsError, SinkError
from streams_app.ledger import Ledger
from streams_app.retrying import RetryPolicy
from streams_app.settings import Settings
from tests.charging import charge

REPO = Path(__file__).resolve().parents[2]
SECRET = "hunter2-topsecret"
SECRET_ENV = {
    "SINK_DB": f"postgresql://payments:{SECRET}@127.0.0.1:1/payments",
    "PAYMENT_API_URL": f"http://api:{SECRET}@127.0.0.1:8081",
    "BROKER_URL": f"kafka://kafka:{SECRET}@127.0.0.1:9092",
}


def test_show_settings_masks_every_password(tmp_path: Path) -> None:
    env = {**os.environ, **SECRET_ENV, "PYTHONPATH": str(REPO), "STORE_URL": "memory://",
           "APP_DATADIR": str(tmp_path), "COLUMNS": "250"}
    shown = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "streams_app", "show-settings"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    output = shown.stdout + shown.stderr
    assert SECRET not in output
    assert "postgresql://payments:***@127.0.0.1:1/payments" in output
    assert "http://api:***@127.0.0.1:8081" in output and "kafka://kafka:***@127.0.0.1:9092" in output


@pytest.mark.parametrize(("name", "value"), [
    ("SINK_DB", f"mysql://root:{SECRET}@db/payments"),              # wrong scheme
    ("SINK_DB", f"postgresql://u:{SECRET}@[::1:5432/db"),           # libpq would echo it whole
    ("SINK_DB", f"host=db user=u password={SECRET} port=x"),         # not a URL at all
    ("PAYMENT_API_URL", f"ftp://u:{SECRET}@api:8081"),
    ("BROKER_URL", f"kafka://u:{SECRET}@127.0.0.1"),                 # no port
])
def test_a_settings_error_does_not_echo_the_password(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert SECRET not in message
    assert f"{name}=" in message and "***" in message


def test_a_percent_encoded_password_is_not_quoted_by_libpq_either() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SINK_DB": "postgresql://u:s3%cretpw@db/payments"})
    assert "s3%cretpw" not in str(err.value) and "not a valid PostgreSQL URL" in str(err.value)


def test_the_kafka_bootstrap_has_no_userinfo() -> None:
    assert Settings.from_env(SECRET_ENV).bootstrap == "127.0.0.1:9092"


def test_sink_error_names_the_database_without_its_password() -> None:
    async def scenario() -> str:
        # nothing listens on port 1; a bounded policy gives up (the sink's never does)
        ledger = Ledger(SECRET_ENV["SINK_DB"], retry=RetryPolicy(give_up_after=0.5))
        try:
            with pytest.raises(SinkError) as err:
                await charge(ledger, event_id="e1")
            return str(err.value)
        finally:
            await ledger.close()

    message = asyncio.run(scenario())
    assert SECRET not in message
    assert "postgresql://payments:***@127.0.0.1:1/payments" in message


def test_the_dashboard_target_is_masked() -> None:
    assert effect_target(Settings.from_env(SECRET_ENV)) == "postgresql://payments:***@127.0.0.1:1/payments"
    assert effect_target(Settings.from_env({**SECRET_ENV, "SINK_TARGET": "api"})) == "http://api:***@127.0.0.1:8081"
