"""What a failed broker start quotes from the broker's log (infra/kafka: _log_excerpt).

CI on d2bc2e2: a node that could not bind its port had first logged a passing ERROR
(NotControllerException while the quorum elected), and the start's error quoted that one
instead of the bind failure.
"""

from __future__ import annotations

from pathlib import Path

from infra.kafka import _log_excerpt

PASSING = """[2026-12-07 07:32:48,100] ERROR [BrokerLifecycleManager id=2] Unable to register broker
org.apache.kafka.common.errors.NotControllerException: The active controller appears to be node 3.
[2026-12-07 07:32:48,900] INFO [SocketServer listenerType=BROKER, nodeId=2] Starting
"""
FATAL = """[2026-12-07 07:32:49,497] ERROR Exiting Kafka due to fatal exception during startup. (kafka.Kafka$)
java.lang.RuntimeException: Received a fatal error while waiting for all of the SocketServer Acceptors to be started
\tat kafka.server.BrokerServer.startup(BrokerServer.scala:512)
Caused by: org.apache.kafka.common.KafkaException: Socket server failed to bind to 127.0.0.1:53340
\tat kafka.network.Acceptor.openServerSocket(SocketServer.scala:734)
Caused by: java.net.BindException: Address already in use
\tat java.base/sun.nio.ch.Net.bind0(Native Method)
[2026-12-07 07:32:49,510] INFO [KafkaRaftServer nodeId=2] shutting down
"""


def test_the_error_that_stopped_the_broker_is_quoted_with_its_root_cause(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(PASSING + FATAL)
    quoted = _log_excerpt(log).split("--- last")[0]
    assert "Exiting Kafka due to fatal exception" in quoted
    assert "Caused by: java.net.BindException: Address already in use" in quoted
    assert "NotControllerException" not in quoted


def test_without_a_fatal_error_the_first_error_is_quoted(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(PASSING)
    quoted = _log_excerpt(log).split("--- last")[0]
    assert quoted.startswith(f"First error, in {log}") and "NotControllerException" in quoted
