"""The lab's fault proxy cutting a connection, as a network partition does (no broker needed:
an echo server stands in, since the proxy only frames bytes)."""

from __future__ import annotations

import socket
import struct
import threading

from lab.proxy import FaultProxy
from lab.workers import free_port


def _server(handle) -> tuple[int, threading.Event]:
    """A local server running ``handle(conn)`` for each connection, until the event is set."""
    port, stop = free_port(), threading.Event()
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return port, stop


def _echo_server() -> tuple[int, threading.Event]:
    """A server that answers every size-prefixed frame with itself."""
    return _server(_echo)


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def _frame(correlation_id: int) -> bytes:
    body = struct.pack(">hhi", 3, 0, correlation_id)  # a Metadata request header
    return struct.pack(">i", len(body)) + body


def _round_trip(port: int, correlation_id: int) -> bytes:
    """The answer to one frame; b"" when the proxy closed or reset the connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(_frame(correlation_id))
            return conn.recv(64)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(64)
    except ConnectionResetError:
        return b""


def test_a_cut_proxy_drops_and_refuses_connections_until_healed():
    target, stop = _echo_server()
    proxy = FaultProxy(listen_port=free_port(), target_port=target, drop_rate=0.0).start()
    try:
        assert _round_trip(proxy.listen_port, 7) == _frame(7)
        open_conn = socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=2)
        open_conn.sendall(_frame(8))
        assert open_conn.recv(64) == _frame(8)
        proxy.cut()
        assert _recv(open_conn) == b"", "an open connection is dropped by the cut"
        assert _round_trip(proxy.listen_port, 9) == b"", "a new connection is refused while cut"
        proxy.heal()
        assert _round_trip(proxy.listen_port, 10) == _frame(10)
        open_conn.close()
    finally:
        proxy.stop()
        stop.set()


def _produce_response(version: int, *errors: int, correlation_id: int = 42, topic: str = "t.unique") -> bytes:
    from aiokafka.protocol.produce import ProduceResponse_v2, ProduceResponse_v5

    response_type = {2: ProduceResponse_v2, 5: ProduceResponse_v5}[version]
    fields = (7, 0, 0, 0) if version == 5 else (7, 0, 0)
    partitions = [(n, error, *fields[1:]) for n, error in enumerate(errors)]
    body = struct.pack(">i", correlation_id) + response_type(topics=[(topic, partitions)], throttle_time_ms=0).encode()
    return struct.pack(">i", len(body)) + body


def test_only_an_answer_saying_every_batch_was_appended_is_worth_dropping():
    """A refused Produce request (NotLeaderForPartition: 6) appended nothing: losing its
    answer makes a resend that duplicates nothing, so the proxy passes it on."""
    from lab.proxy import appended

    for version in (2, 5):
        assert appended(_produce_response(version, 0, 0), version)
        assert not appended(_produce_response(version, 0, 6), version)
        assert not appended(_produce_response(version, 6), version)
    assert not appended(_produce_response(5, 0), 99), "a version aiokafka cannot read is never dropped"
    assert not appended(b"\x00\x00\x00\x04\x00\x00\x00\x2a", 5), "nor an answer it cannot decode"


def _fake_broker() -> tuple[int, threading.Event]:
    """Answers every request with a Produce v5 answer for one partition of t.unique, appended."""

    def answer(conn: socket.socket) -> None:
        with conn:
            while header := conn.recv(4):
                frame = conn.recv(struct.unpack(">i", header)[0])
                (correlation_id,) = struct.unpack_from(">i", frame, 4)
                conn.sendall(_produce_response(5, 0, correlation_id=correlation_id))

    return _server(answer)


def _produce(port: int, correlation_id: int, topic: str = "t.unique") -> bytes:
    from aiokafka.protocol.produce import ProduceRequest_v5

    request = ProduceRequest_v5(None, -1, 1000, [(topic, [(0, b"records")])]).encode()
    body = struct.pack(">hhih", 0, 5, correlation_id, 4) + b"test" + request  # header v1: client id "test"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(struct.pack(">i", len(body)) + body)
            return conn.recv(256)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_only_answers_for_the_counted_topics_are_dropped():
    """The producer-retry fault spends its drops on requests carrying a topic whose
    duplicates the lab counts; an answer for other topics only goes through."""
    target, stop = _fake_broker()
    elsewhere = FaultProxy(listen_port=free_port(), target_port=target, drop_rate=1.0, max_drops=1,
                           topics=frozenset({"t.applied"})).start()
    counted = FaultProxy(listen_port=free_port(), target_port=target, drop_rate=1.0, max_drops=1,
                         topics=frozenset({"t.unique"})).start()
    try:
        assert _produce(elsewhere.listen_port, 5) == _produce_response(5, 0, correlation_id=5)
        assert elsewhere.stats.dropped_responses == 0  # a request for t.unique is not chosen
        assert _produce(counted.listen_port, 7, topic="t.other") == _produce_response(5, 0, correlation_id=7)
        assert _produce(counted.listen_port, 6) == b""
        assert counted.stats.dropped_responses == 1 and counted.stats.dropped_topics == {"t.unique": 1}
    finally:
        elsewhere.stop()
        counted.stop()
        stop.set()
