"""Settings are validated once, with messages that name the value and the fix."""

import pytest

from streams_app.exceptions import SettingsError
from streams_app.settings import Settings, broker_hosts, parse_duration


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
                       "BROKER_COMMIT_INTERVAL": "0.5", "STREAM_BUFFER_MAXSIZE": "8"})
    assert env == {"STREAM_BUFFER_MAXSIZE": "8"}


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


# --- BROKER_URL host lists and replication ------------------------------------------------

CLUSTER_URL = "kafka://127.0.0.1:29092;127.0.0.1:29093;127.0.0.1:29094"
CLUSTER_HOSTS = ("127.0.0.1:29092", "127.0.0.1:29093", "127.0.0.1:29094")


@pytest.mark.parametrize("url", [
    CLUSTER_URL,
    "kafka://127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094",
    "kafka://127.0.0.1:29092;kafka://127.0.0.1:29093;kafka://127.0.0.1:29094",
    " kafka://127.0.0.1:29092 ; 127.0.0.1:29093 ; 127.0.0.1:29094 ; ",
])
def test_broker_url_takes_faust_s_host_list_forms(url):
    assert broker_hosts(url) == CLUSTER_HOSTS
    s = Settings.from_env({"BROKER_URL": url})
    assert s.broker_hosts == CLUSTER_HOSTS
    assert s.bootstrap == ",".join(CLUSTER_HOSTS)


def test_every_host_is_the_same_host_list_faust_derives():
    from faust.utils.urls import urllist

    faust_hosts = tuple(f"{u.host}:{u.port}" for u in urllist(CLUSTER_URL, default_scheme="kafka"))
    assert faust_hosts == broker_hosts(CLUSTER_URL)


@pytest.mark.parametrize("url,named", [
    ("kafka://127.0.0.1:29092;127.0.0.1", "'127.0.0.1'"),
    ("kafka://a:1;http://b:2", "'http://b:2'"),
    ("127.0.0.1:9092;127.0.0.1:9093", "kafka://HOST1:PORT1;HOST2:PORT2"),
    ("kafka://a:port", "'kafka://a:port'"),
    ("kafka://;", "kafka://HOST:PORT"),
])
def test_a_bad_host_in_the_list_is_named_with_the_forms_allowed(url, named):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"BROKER_URL": url})
    message = str(err.value)
    assert named in message and "kafka://HOST:PORT" in message


@pytest.mark.parametrize("url,replication,min_insync", [
    ("kafka://127.0.0.1:9092", 1, 1),
    ("kafka://a:1;b:2", 2, 1),
    (CLUSTER_URL, 3, 2),
    ("kafka://a:1;b:2;c:3;d:4;e:5", 3, 2),
])
def test_replication_defaults_follow_the_hosts_listed(url, replication, min_insync):
    s = Settings.from_env({"BROKER_URL": url})
    assert (s.replication_factor, s.min_insync_replicas) == (replication, min_insync)
    assert s.topic_configs == {"min.insync.replicas": str(min_insync)}


def test_replication_settings_override_the_defaults():
    # A bootstrap list may name only part of a bigger cluster: more replicas than hosts is allowed.
    s = Settings.from_env({"BROKER_URL": "kafka://a:1", "REPLICATION_FACTOR": "3", "MIN_INSYNC_REPLICAS": "2"})
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)
    # Only the replication factor set: min.insync.replicas follows it, not the host count.
    s = Settings.from_env({"BROKER_URL": CLUSTER_URL, "REPLICATION_FACTOR": "1"})
    assert (s.replication_factor, s.min_insync_replicas) == (1, 1)
    s = Settings.from_env({"BROKER_URL": "kafka://a:1", "REPLICATION_FACTOR": "5"})
    assert (s.replication_factor, s.min_insync_replicas) == (5, 2)


def test_min_insync_above_the_replication_factor_says_what_to_change():
    with pytest.raises(SettingsError, match="MIN_INSYNC_REPLICAS=3 is more than REPLICATION_FACTOR=2.*lower"):
        Settings.from_env({"BROKER_URL": CLUSTER_URL, "REPLICATION_FACTOR": "2", "MIN_INSYNC_REPLICAS": "3"})


@pytest.mark.parametrize("env", ["REPLICATION_FACTOR", "MIN_INSYNC_REPLICAS"])
@pytest.mark.parametrize("text", ["0", "-1", "three"])
def test_replication_settings_are_whole_numbers_from_one(env, text):
    with pytest.raises(SettingsError, match=f"{env}='{text}' is invalid"):
        Settings.from_env({env: text})


def test_show_settings_documents_the_replication_settings():
    described = {env: (default, doc) for env, default, doc in Settings.describe()}
    assert described["REPLICATION_FACTOR"][0] == "auto" and "3 for three" in described["REPLICATION_FACTOR"][1]
    assert described["MIN_INSYNC_REPLICAS"][0] == "auto" and "acks=all" in described["MIN_INSYNC_REPLICAS"][1]


def test_faust_gets_every_host_and_the_replication_settings():
    """The app module is built from the unit-test environment: one host, 1/1."""
    from streams_app import app, settings

    assert [f"{u.host}:{u.port}" for u in app.conf.broker] == list(settings.broker_hosts)
    assert app.conf.topic_replication_factor == settings.replication_factor
    topic = app.topic("unit-durable", config={"retention.ms": "1000"})
    assert topic.config == {"min.insync.replicas": str(settings.min_insync_replicas), "retention.ms": "1000"}
    # A table's own extra_topic_configs win over the app-wide default, and the changelog gets both.
    from streams_app import pipeline

    changelog = pipeline.tables.seen_events.table.changelog_topic.config
    assert changelog["min.insync.replicas"] == str(settings.min_insync_replicas)
    assert changelog["cleanup.policy"] == "compact,delete"


def test_the_commit_interval_follows_the_guarantee_unless_set():
    """exactly_once: 0.1 s (downstream sees output only after a commit); otherwise 1 s."""
    assert Settings.from_env({"PROCESSING_GUARANTEE": "exactly_once"}).commit_interval == 0.1
    assert Settings.from_env({"PROCESSING_GUARANTEE": "at_least_once"}).commit_interval == 1.0
    assert Settings.from_env({"PROCESSING_GUARANTEE": "exactly_once", "BROKER_COMMIT_INTERVAL": "250ms"}
                             ).commit_interval == 0.25
    assert "BROKER_COMMIT_INTERVAL" not in Settings.from_env({}).faust_env({"BROKER_COMMIT_INTERVAL": "5"})


@pytest.mark.parametrize("env,text", [("BROKER_COMMIT_INTERVAL", "0"), ("BROKER_COMMIT_INTERVAL", "soon"),
                                      ("BATCH_MAX", "0")])
def test_commit_interval_and_batch_size_must_be_positive(env, text):
    with pytest.raises(SettingsError, match=f"{env}='{text}' is invalid"):
        Settings.from_env({env: text})


def test_the_kafka_request_timeout_is_kafka_s_30_s_and_at_least_5_s():
    assert Settings.from_env({}).kafka_request_timeout == 30.0
    assert Settings.from_env({"KAFKA_REQUEST_TIMEOUT": "10s"}).kafka_request_timeout == 10.0
    with pytest.raises(SettingsError, match="KAFKA_REQUEST_TIMEOUT='1' is invalid.*at least 5 s"):
        Settings.from_env({"KAFKA_REQUEST_TIMEOUT": "1"})


def test_the_app_s_kafka_requests_wait_the_request_timeout_and_its_group_requests_faust_s():
    """bounded-kafka-requests, on the clients the app builds (nothing connects): the
    producer's connections and Produce requests wait KAFKA_REQUEST_TIMEOUT and its buffer
    Faust's producer_request_timeout; the consumer's default connections the request timeout,
    its group coordinator's Faust's broker_request_timeout."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka.client import ConnectionGroup

    from streams_app import app

    async def built() -> None:
        producer = app.producer._new_producer()
        assert producer.client._request_timeout_ms == 30_000 == producer._sender._request_timeout_ms
        assert producer._request_timeout_ms == app.conf.producer_request_timeout * 1000  # buffer room
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        assert consumer._client._request_timeout_ms == 30_000  # every connection's handshake, and fetches
        assert consumer._fetch_max_wait_ms == 500  # Faust's 1500 ms held the connection's other requests
        await producer.client.close()
        await consumer._client.close()

        # The client's connections: default ones wait the request timeout, the coordinator's Faust's.
        from faust_guarantees.fixes.bounded_kafka_requests import bound_default_requests

        class Client:
            _request_timeout_ms = 90_000

            async def _get_conn(self, node_id, *, group=ConnectionGroup.DEFAULT, no_hint=False):
                return SimpleNamespace(_request_timeout=self._request_timeout_ms / 1000)  # as aiokafka makes them

        client = Client()
        bound_default_requests(client, 30.0)
        assert (await client._get_conn(1))._request_timeout == 30.0
        assert (await client._get_conn(1, group=ConnectionGroup.COORDINATION))._request_timeout == 90.0

    asyncio.run(built())


def test_stages_are_all_by_default_and_kept_in_pipeline_order():
    assert Settings.from_env({}).stages == ("dedup", "apply", "sink")
    assert Settings.from_env({"STAGES": "all"}).stages == ("dedup", "apply", "sink")
    assert Settings.from_env({"STAGES": " sink, dedup "}).stages == ("dedup", "sink")


def test_an_unknown_stage_is_named_with_the_stages_allowed():
    with pytest.raises(SettingsError, match="STAGES='dedup,ingest' is invalid: unknown stage ingest; "
                                            "use all or a comma list of: dedup, apply, sink"):
        Settings.from_env({"STAGES": "dedup,ingest"})


def test_a_worker_declares_the_agents_of_its_stages_only(tmp_path):
    """STAGES=dedup: the app has the dedup agent only, not the sink's start check (the API
    sink's key retention), and its dashboard says the charges are not counted here (the app is
    built once per process: a subprocess)."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import asyncio, json, streams_app\n"
        "app = streams_app.app\n"
        "print(json.dumps([sorted(a.split('.')[-1] for a in app.agents), sorted(c.__qualname__ for c in app.start_checks + app.kafka_checks),"
        " asyncio.run(streams_app.pipeline.views.charges())[1]]))\n"
    )
    env = {**os.environ, "STAGES": "dedup", "SINK_TARGET": "api", "APP_DATADIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    agents, start_checks, charges = json.loads(out.stdout.strip().splitlines()[-1])
    assert agents == ["dedup_payments"]
    assert start_checks == ["declare_topics.<locals>._check_partition_counts"]
    assert charges == "the sink stage does not run on this worker (STAGES=dedup)"
    env["STAGES"] = "all"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    agents, start_checks, _ = json.loads(out.stdout.strip().splitlines()[-1])
    assert agents == ["apply_payments", "charge_payments", "dedup_payments"]
    assert start_checks == ["KeyRetentionGuard.at_start", "declare_topics.<locals>._check_partition_counts"]


def test_importing_any_module_builds_no_app_and_patches_nothing():
    """Only the entry point (``streams_app.app``) builds the app and declares the pipeline on
    it: every other module of the project can be imported to read a constant or a helper
    (the lab, the benchmark, tests) without an app or its kit installed. (The benchmark's
    stock Faust app, an entry point of its own like streams_app, is left out.)"""
    import subprocess
    import sys

    script = (
        "import asyncio, importlib, pkgutil\n"
        "import faust.tables.recovery\n"
        "packages = ('streams_app', 'tables', 'agents', 'views', 'lab', 'bench', 'common', 'payment_api', 'outbox')\n"
        "names = []\n"
        "for name in packages:\n"
        "    package = importlib.import_module(name)\n"
        "    names += [m.name for m in pkgutil.walk_packages(package.__path__, name + '.') if not m.name.endswith(('__main__', '.faust_minimal'))]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "import streams_app.application as application\n"
        "assert application._current is None, 'an import built the app'\n"
        "assert 'app' not in vars(importlib.import_module('streams_app'))\n"
        "assert faust.tables.recovery.asyncio is asyncio, 'an import installed the kit'\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[-1]) > 60  # the modules were found and imported


def test_gc_tuning_freezes_start_up_and_raises_the_young_threshold():
    import gc

    from streams_app.application import GC_THRESHOLDS, tune_gc

    assert Settings.from_env({}).gc_tuning is True
    assert Settings.from_env({"GC_TUNING": "false"}).gc_tuning is False
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
