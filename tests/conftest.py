"""Test configuration shared by unit and integration tests.

The entry point builds the Faust app from the environment the first time
``streams_app.app`` is asked for, so the in-process app used by unit tests is
configured here, before any test asks: memory tables and a throw-away sink database. Integration tests
start real workers as subprocesses with their own environment.
"""

import os
import tempfile

os.environ.setdefault("STORE_URL", "memory://")
os.environ.setdefault("SINK_DB", f"sqlite:///{tempfile.mkdtemp(prefix='sink-unit-')}/charges.db")
os.environ.setdefault("APP_ID", "unit-tests")
os.environ.setdefault("TOPIC_PREFIX", "unit")

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.kafka_cluster", "tests.fixtures.postgres", "tests.fixtures.pipeline"]
