"""Settings are validated once, with messages that name the value and the fix."""

import pytest

from streams_app.exceptions import SettingsError
from streams_app.settings import Settings, parse_duration


def test_defaults_are_the_documented_ones():
    s = Settings.from_env({})
    assert s.processing_guarantee == "at_least_once"
    assert s.broker_url == "kafka://127.0.0.1:9092"
    assert s.store == "rocksdb://"
    assert (s.web_bind, s.web_port) == ("127.0.0.1", 6066)
    assert s.web_tables_enabled is False
    assert s.sink_mode == "idempotent"
    assert s.topic("raw") == "payments.raw"


def test_environment_switches_the_guarantee():
    s = Settings.from_env({"PROCESSING_GUARANTEE": "exactly_once"})
    assert s.processing_guarantee == "exactly_once"
    assert s.faust_guarantee == "exactly_once"


def test_at_most_once_runs_faust_at_least_once():
    s = Settings.from_env({"PROCESSING_GUARANTEE": "at_most_once"})
    assert s.faust_guarantee == "at_least_once"


def test_every_bad_value_is_reported_with_the_allowed_ones():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({
            "PROCESSING_GUARANTEE": "exactly-once",
            "WEB_PORT": "70000",
            "SINK_MODE": "maybe",
            "BROKER_URL": "localhost:9092",
        })
    message = str(err.value)
    assert "PROCESSING_GUARANTEE='exactly-once'" in message
    assert "at_least_once, exactly_once, at_most_once" in message
    assert "WEB_PORT='70000'" in message and "1 to 65535" in message
    assert "SINK_MODE='maybe'" in message and "idempotent, naive" in message
    assert "kafka://HOST:PORT" in message
    assert len(err.value.problems) == 4


def test_config_file_then_environment(tmp_path):
    config = tmp_path / "app.toml"
    config.write_text('processing_guarantee = "exactly_once"\nweb_port = 7000\nweb_tables_enabled = true\n')
    s = Settings.from_env({"STREAMS_APP_CONFIG": str(config), "WEB_PORT": "7100"})
    assert s.processing_guarantee == "exactly_once"
    assert s.web_port == 7100  # the environment wins over the file
    assert s.web_tables_enabled is True


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "app.toml"
    config.write_text('guarantee = "exactly_once"\n')
    with pytest.raises(SettingsError, match="unknown key 'guarantee'"):
        Settings.from_env({"STREAMS_APP_CONFIG": str(config)})


def test_faust_does_not_see_the_variables_we_own():
    s = Settings.from_env({})
    env = s.faust_env({"PROCESSING_GUARANTEE": "x", "WEB_PORT": "1", "APP_STORE": "y",
                       "BROKER_COMMIT_INTERVAL": "0.5"})
    assert env == {"BROKER_COMMIT_INTERVAL": "0.5"}


@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("15m", 900.0), ("24h", 86400.0),
                                          ("7d", 604800.0), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_bad_duration_says_the_format():
    with pytest.raises(SettingsError, match="DEDUP_HORIZON='a week'.*7d"):
        Settings.from_env({"DEDUP_HORIZON": "a week"})


def test_the_sink_target_and_the_payment_api_url_are_validated():
    s = Settings.from_env({"SINK_TARGET": "api", "PAYMENT_API_URL": "http://127.0.0.1:9000/"})
    assert (s.sink_target, s.payment_api_url) == ("api", "http://127.0.0.1:9000")
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SINK_TARGET": "email", "PAYMENT_API_URL": "127.0.0.1:9000"})
    message = str(err.value)
    assert "SINK_TARGET='email'" in message and "database, api" in message
    assert "PAYMENT_API_URL='127.0.0.1:9000'" in message and "http://HOST:PORT" in message


def test_offsets_stored_with_the_effect_need_a_database():
    with pytest.raises(SettingsError, match="SINK_MODE='transactional' needs SINK_TARGET='database'"):
        Settings.from_env({"SINK_MODE": "transactional", "SINK_TARGET": "api"})
