"""The payment API over real HTTP on loopback, against real SQLite and PostgreSQL.

Most tests run the aiohttp app in-process on a random port (``AppRunner`` on
a real socket); restart and crash tests run ``python -m payment_api serve`` as
a subprocess so that the process really goes away.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from payment_api.client import PaymentClient
from payment_api.errors import RequestRejected, RetryableError
from payment_api.models import Charge, ChargeRequest
from payment_api.server import (
    FAULTS,
    STORE,
    Faults,
    Settings,
    create_app,
    prune_expired_keys,
)
from payment_api.store import Acquired, Store

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHARGE = {"amount": 1999, "currency": "EUR", "account": "acct-1"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty database of each kind: a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'payments.db'}"
    url: str = request.getfixturevalue("fresh_db")
    return url


@dataclass
class InProcessApi:
    base_url: str
    app: web.Application

    @property
    def store(self) -> Store:
        return self.app[STORE]

    @property
    def faults(self) -> Faults:
        return self.app[FAULTS]


@asynccontextmanager
async def serve(db_url: str, **settings: float) -> AsyncIterator[InProcessApi]:
    """Run the app on a random loopback port for the duration of the block."""
    runner = web.AppRunner(create_app(Settings(db_url=db_url, **settings)))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield InProcessApi(f"http://{host}:{port}", runner.app)
    finally:
        await runner.cleanup()


async def post_charge(
    session: aiohttp.ClientSession, base_url: str, body: bytes | dict[str, Any], headers: Any = None
) -> tuple[int, bytes, Any]:
    """POST raw bytes (or a dict as JSON); return status, body and headers."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    async with session.post(f"{base_url}/v1/charges", data=data, headers=headers) as response:
        return response.status, await response.read(), response.headers


async def get_stats(base_url: str) -> dict[str, int]:
    async with PaymentClient(base_url) as client:
        return await client.stats()


def test_same_key_and_body_repeated_gives_one_charge_and_identical_replies(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, aiohttp.ClientSession() as session:
            replies = [await post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-1"}) for _ in range(5)]
            # The same parameters in another key order and spacing are the same request.
            reordered = b'{ "account": "acct-1", "currency": "EUR", "amount": 1999 }'
            replies.append(await post_charge(session, api.base_url, reordered, {"Idempotency-Key": "evt-1"}))
            assert {(status, body) for status, body, _ in replies} == {(201, replies[0][1])}
            assert [headers.get("Idempotent-Replayed") for _, _, headers in replies] == [None] + ["true"] * 5
            assert json.loads(replies[0][1])["id"].startswith("ch_")
            stats = await get_stats(api.base_url)
            assert (stats["charges"], stats["idempotency_keys"], stats["replays"]) == (1, 1, 5)

    asyncio.run(scenario())


@pytest.mark.parametrize("change", [{"amount": 2000}, {"currency": "USD"}, {"account": "acct-2"}])
def test_same_key_with_other_parameters_is_rejected(db_url: str, change: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, aiohttp.ClientSession() as session:
            first, _, _ = await post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-1"})
            status, body, _ = await post_charge(
                session, api.base_url, {**CHARGE, **change}, {"Idempotency-Key": "evt-1"}
            )
            assert (first, status) == (201, 422)
            assert json.loads(body)["error"]["type"] == "idempotency_key_reused"
            stats = await get_stats(api.base_url)
            assert (stats["charges"], stats["mismatches"]) == (1, 1)

    asyncio.run(scenario())


def test_concurrent_requests_with_one_key_charge_once_and_the_other_gets_409(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, aiohttp.ClientSession() as session:
            api.faults.delay_ms = 500
            first, second = await asyncio.gather(
                post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-1"}),
                post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-1"}),
            )
            assert sorted([first[0], second[0]]) == [201, 409]
            conflict = first if first[0] == 409 else second
            assert json.loads(conflict[1])["error"]["type"] == "idempotency_key_in_use"
            stats = await get_stats(api.base_url)
            assert (stats["charges"], stats["conflicts"]) == (1, 1)

    asyncio.run(scenario())


def test_a_burst_of_concurrent_duplicates_charges_once(db_url: str) -> None:
    """No delay: the duplicates race on the key's unique constraint itself."""

    async def scenario() -> None:
        async with serve(db_url) as api, aiohttp.ClientSession() as session:
            replies = await asyncio.gather(
                *(post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-1"}) for _ in range(20))
            )
            created = [body for status, body, _ in replies if status == 201]
            assert {status for status, _, _ in replies} <= {201, 409}
            assert len(set(created)) == 1
            assert (await get_stats(api.base_url))["charges"] == 1

    asyncio.run(scenario())


def test_retry_after_a_dropped_connection_with_a_key_charges_once(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url, timeout=5) as client:
            api.faults.drop_after_commit = 1
            result = await client.charge(1999, "EUR", "acct-1", idempotency_key="evt-1", retries=3)
            assert (result.attempts, result.replayed) == (2, True)
            assert [c.id for c in await client.list_charges("acct-1")] == [result.charge.id]

    asyncio.run(scenario())


def test_retry_after_a_dropped_connection_without_a_key_charges_twice(db_url: str) -> None:
    """The naive mode: the client cannot know the first attempt succeeded, so it pays again."""

    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url, timeout=5) as client:
            api.faults.drop_after_commit = 1
            result = await client.charge(1999, "EUR", "acct-1", retries=3)
            assert (result.attempts, result.replayed) == (2, False)
            charges = await client.list_charges("acct-1")
            assert len(charges) == 2
            assert result.charge.id == charges[1].id

    asyncio.run(scenario())


def test_client_timeouts_and_409s_are_retried_until_the_replay(db_url: str) -> None:
    """A slow provider: the client times out, its retry meets the lock (409), a later one the replay."""

    async def scenario() -> None:
        async with serve(db_url) as api:
            api.faults.delay_ms = 1000
            async with PaymentClient(api.base_url, timeout=0.3, backoff_initial_s=0.1, backoff_max_s=0.3) as client:
                result = await client.charge(1999, "EUR", "acct-1", idempotency_key="evt-1", retries=20)
            stats = await get_stats(api.base_url)
            assert result.replayed
            assert (stats["charges"], stats["replays"]) == (1, 1)
            assert stats["conflicts"] >= 1

    asyncio.run(scenario())


def test_faults_can_be_changed_at_runtime(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url) as client:
            assert await client.set_faults(delay_ms=50) == {"delay_ms": 50, "drop_after_commit": False,
                                                            "fail_accounts": []}
            assert await client.set_faults(drop_after_commit=True) == {"delay_ms": 50, "drop_after_commit": True,
                                                                       "fail_accounts": []}
            with pytest.raises(RequestRejected) as rejected:
                await client.set_faults(delay_ms=-1)
            assert rejected.value.status == 400
            with pytest.raises(RetryableError):
                await client.charge(1999, "EUR", "acct-1", retries=1)
            assert (await client.stats())["charges"] == 2
            await client.set_faults(drop_after_commit=False, delay_ms=0, fail_accounts=["acct-7"])
            with pytest.raises(RetryableError, match="acct-7 cannot be charged"):
                await client.charge(1999, "EUR", "acct-7", idempotency_key="evt-7", retries=0)
            assert not (await client.charge(1999, "EUR", "acct-8", idempotency_key="evt-8")).replayed
            assert (await client.stats())["charges"] == 3

    asyncio.run(scenario())


def test_get_charge_by_id(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url) as client, aiohttp.ClientSession() as session:
            charge = (await client.charge(1999, "EUR", "acct-1")).charge
            async with session.get(f"{api.base_url}/v1/charges/{charge.id}") as response:
                assert (response.status, await response.json()) == (200, charge.model_dump())
            async with session.get(f"{api.base_url}/v1/charges/ch_unknown") as response:
                assert response.status == 404
                assert (await response.json())["error"]["type"] == "not_found"

    asyncio.run(scenario())


BAD_REQUESTS: list[tuple[str, bytes, Any, int, str]] = [
    ("invalid JSON", b"{bad", None, 400, "invalid_json"),
    ("empty body", b"", None, 400, "invalid_json"),
    ("not UTF-8", b"\xff\xfe{}", None, 400, "invalid_json"),
    ("array", b"[1, 2]", None, 400, "invalid_request"),
    ("string", b'"charge"', None, 400, "invalid_request"),
    ("null", b"null", None, 400, "invalid_request"),
    ("missing amount", b'{"currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    ("amount as string", b'{"amount": "100", "currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    ("amount as float", b'{"amount": 1.5, "currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    ("amount as bool", b'{"amount": true, "currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    ("zero amount", b'{"amount": 0, "currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    ("negative amount", b'{"amount": -5, "currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    ("absurd amount", b'{"amount": 1000000000001, "currency": "EUR", "account": "a"}', None, 400, "invalid_request"),
    (
        "huge amount",
        b'{"amount": 1' + b"0" * 40 + b', "currency": "EUR", "account": "a"}',
        None,
        400,
        "invalid_request",
    ),
    ("lowercase currency", b'{"amount": 1, "currency": "eur", "account": "a"}', None, 400, "invalid_request"),
    ("long currency", b'{"amount": 1, "currency": "EURO", "account": "a"}', None, 400, "invalid_request"),
    ("numeric currency", b'{"amount": 1, "currency": 978, "account": "a"}', None, 400, "invalid_request"),
    ("empty account", b'{"amount": 1, "currency": "EUR", "account": ""}', None, 400, "invalid_request"),
    ("NUL in account", b'{"amount": 1, "currency": "EUR", "account": "a\\u0000b"}', None, 400, "invalid_request"),
    ("unknown field", b'{"amount": 1, "currency": "EUR", "account": "a", "amout": 2}', None, 400, "invalid_request"),
    ("oversize body", b'{"account": "' + b"a" * 17 * 1024 + b'"}', None, 413, "payload_too_large"),
    ("empty key", json.dumps(CHARGE).encode(), {"Idempotency-Key": ""}, 400, "invalid_idempotency_key"),
    ("key too long", json.dumps(CHARGE).encode(), {"Idempotency-Key": "k" * 256}, 400, "invalid_idempotency_key"),
    ("key with tab", json.dumps(CHARGE).encode(), {"Idempotency-Key": "a\tb"}, 400, "invalid_idempotency_key"),
    (
        "two keys",
        json.dumps(CHARGE).encode(),
        CIMultiDict([("Idempotency-Key", "a"), ("Idempotency-Key", "b")]),
        400,
        "invalid_idempotency_key",
    ),
    ("valid key, bad body", b'{"amount": 0}', {"Idempotency-Key": "evt-1"}, 400, "invalid_request"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "error_type"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_requests_get_a_json_4xx_and_create_nothing(
    db_url: str, body: bytes, headers: Any, status: int, error_type: str
) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, aiohttp.ClientSession() as session:
            got_status, got_body, got_headers = await post_charge(session, api.base_url, body, headers)
            assert got_status == status
            assert got_headers["Content-Type"].startswith("application/json")
            error = json.loads(got_body)["error"]
            assert error["type"] == error_type
            assert error["message"]
            stats = await get_stats(api.base_url)
            assert (stats["charges"], stats["idempotency_keys"]) == (0, 0)

    asyncio.run(scenario())


def test_prune_removes_expired_keys_only(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url) as client:
            await client.charge(1999, "EUR", "acct-1", idempotency_key="old")
            await asyncio.sleep(0.05)
            cutoff = time.time()
            await asyncio.sleep(0.05)
            await client.charge(1999, "EUR", "acct-1", idempotency_key="recent")

            assert await prune_expired_keys(api.store, retention_s=3600, now=cutoff + 3600) == 1

            assert (await client.stats())["idempotency_keys"] == 1
            assert (await client.charge(1999, "EUR", "acct-1", idempotency_key="recent")).replayed
            # A forgotten key is a new request: this is why retention must outlast retries.
            assert not (await client.charge(1999, "EUR", "acct-1", idempotency_key="old")).replayed
            assert (await client.stats())["charges"] == 3

    asyncio.run(scenario())


def test_expired_keys_are_pruned_periodically(db_url: str) -> None:
    async def scenario() -> None:
        async with (
            serve(db_url, key_retention_s=0.2, prune_interval_s=0.1) as api,
            PaymentClient(api.base_url) as client,
        ):
            await client.charge(1999, "EUR", "acct-1", idempotency_key="evt-1")
            deadline = time.monotonic() + 5
            while (await client.stats())["idempotency_keys"] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stats = await client.stats()
            assert (stats["idempotency_keys"], stats["charges"]) == (0, 1)

    asyncio.run(scenario())


HOUR = 3600.0


async def completed_key(store: Store, key: str, created_at: float) -> None:
    """A key whose charge completed at ``created_at`` (epoch s): as if charged back then."""
    request = ChargeRequest.model_validate(CHARGE)
    claim = await store.claim_key(key, request.fingerprint(), created_at, 30.0)
    assert isinstance(claim, Acquired)
    charge = Charge.create(request, created_at)
    assert await store.complete_key(key, claim.token, charge, 201, charge.model_dump_json())


def test_a_key_older_than_a_day_within_the_retention_is_still_honoured(db_url: str) -> None:
    """The pipeline may deliver an event again within DEDUP_HORIZON (7 d): the API, keeping
    keys 7 d by default, answers a 25-hour-old key with the first charge, while its pruner
    runs (it deletes an 8-day-old key meanwhile)."""

    async def scenario() -> None:
        async with serve(db_url, prune_interval_s=0.05) as api, aiohttp.ClientSession() as session:
            now = time.time()
            await completed_key(api.store, "evt-25h", now - 25 * HOUR)
            await completed_key(api.store, "evt-8d", now - 8 * 24 * HOUR)
            deadline = time.monotonic() + 10
            while (await get_stats(api.base_url))["idempotency_keys"] > 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # a few more prune rounds
            status, _, headers = await post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-25h"})
            stats = await get_stats(api.base_url)
            assert (status, headers.get("Idempotent-Replayed")) == (201, "true")
            assert (stats["idempotency_keys"], stats["charges"], stats["replays"]) == (1, 2, 1)

    asyncio.run(scenario())


def test_with_a_one_day_retention_the_same_key_charges_again(db_url: str) -> None:
    """The failure this guards against: the old 24-hour pruning forgot the key."""

    async def scenario() -> None:
        async with serve(db_url, key_retention_s=24 * HOUR, prune_interval_s=0.05) as api, \
                aiohttp.ClientSession() as session:
            await completed_key(api.store, "evt-25h", time.time() - 25 * HOUR)
            deadline = time.monotonic() + 10
            while (await get_stats(api.base_url))["idempotency_keys"] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            status, _, headers = await post_charge(session, api.base_url, CHARGE, {"Idempotency-Key": "evt-25h"})
            assert (status, headers.get("Idempotent-Replayed")) == (201, None)
            assert (await get_stats(api.base_url))["charges"] == 2

    asyncio.run(scenario())


def test_config_reports_the_default_key_retention(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url) as client:
            config = await client.config()
            assert config["key_retention_seconds"] == 7 * 24 * HOUR

    asyncio.run(scenario())


# --------------------------------------------------------------------------- subprocess servers


@dataclass
class ApiProcess:
    base_url: str
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(api: ApiProcess, log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            pytest.fail(f"payment API exited with {api.process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{api.base_url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"payment API did not become healthy:\n{log_path.read_text()}")


@contextmanager
def api_process(db_url: str, log_path: Path, *options: str) -> Iterator[ApiProcess]:
    """Run ``python -m payment_api serve`` until the block ends (SIGTERM unless already dead)."""
    port = _free_port()
    command = [sys.executable, "-m", "payment_api", "serve", "--port", str(port), "--db", db_url, *options]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    api = ApiProcess(f"http://127.0.0.1:{port}", process)
    try:
        _wait_healthy(api, log_path)
        yield api
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_a_restarted_server_keeps_charges_keys_and_counters(db_url: str, tmp_path: Path) -> None:
    log_path = tmp_path / "api.log"

    async def charge(base_url: str) -> tuple[str, bool]:
        async with PaymentClient(base_url) as client:
            result = await client.charge(1999, "EUR", "acct-1", idempotency_key="evt-1")
            return result.charge.id, result.replayed

    with api_process(db_url, log_path) as api:
        first_id, first_replayed = asyncio.run(charge(api.base_url))
    with api_process(db_url, log_path) as api:
        second_id, second_replayed = asyncio.run(charge(api.base_url))
        stats = asyncio.run(get_stats(api.base_url))
    assert (first_replayed, second_replayed, second_id) == (False, True, first_id)
    assert (stats["charges"], stats["idempotency_keys"], stats["replays"]) == (1, 1, 1)


def test_a_key_locked_by_a_crashed_server_is_retaken_after_the_lock_timeout(db_url: str, tmp_path: Path) -> None:
    """SIGKILL mid-charge leaves the key locked and no charge; after the lock timeout a retry charges once."""
    log_path = tmp_path / "api.log"
    lock_timeout = 4.0

    async def charge(base_url: str, timeout: float, retries: int) -> bool:
        async with PaymentClient(base_url, timeout=timeout, backoff_initial_s=0.2, backoff_max_s=0.5) as client:
            return (await client.charge(1999, "EUR", "acct-1", idempotency_key="evt-1", retries=retries)).replayed

    with api_process(db_url, log_path, "--delay-ms", "60000", "--lock-timeout", str(lock_timeout)) as api:
        locked_at = time.time()
        with pytest.raises(RetryableError):
            asyncio.run(charge(api.base_url, timeout=0.5, retries=0))
        api.process.kill()
    with api_process(db_url, log_path, "--lock-timeout", str(lock_timeout)) as api:
        with pytest.raises(RetryableError, match="409"):
            asyncio.run(charge(api.base_url, timeout=5, retries=0))
        assert time.time() - locked_at < lock_timeout, "restart took longer than the lock timeout"
        replayed = asyncio.run(charge(api.base_url, timeout=5, retries=30))
        stats = asyncio.run(get_stats(api.base_url))
    assert not replayed
    assert stats["charges"] == 1


def test_a_reference_is_stored_and_counted_but_never_deduplicates(db_url: str) -> None:
    async def scenario() -> None:
        async with serve(db_url) as api, PaymentClient(api.base_url) as client:
            first = await client.charge(1999, "EUR", "acct-1", reference="evt-7")
            second = await client.charge(1999, "EUR", "acct-1", reference="evt-7")  # no key: a new charge
            keyed = await client.charge(500, "EUR", "acct-1", reference="evt-8", idempotency_key="evt-8")
            again = await client.charge(500, "EUR", "acct-1", reference="evt-8", idempotency_key="evt-8")
            assert first.charge.id != second.charge.id and again.replayed and again.charge == keyed.charge
            assert (await client.list_charges())[0].reference == "evt-7"
            stats = await client.stats()
            assert (stats["charges"], stats["distinct_references"], stats["total_amount"]) == (3, 2, 4498)
            # Same key, other reference: other parameters, refused like any other mismatch.
            with pytest.raises(RequestRejected) as rejected:
                await client.charge(500, "EUR", "acct-1", reference="evt-9", idempotency_key="evt-8")
            assert rejected.value.status == 422

    asyncio.run(scenario())


def test_the_key_retention_option_reaches_v1_config(db_url: str, tmp_path: Path) -> None:
    async def config(base_url: str) -> dict[str, float]:
        async with PaymentClient(base_url) as client:
            return await client.config()

    with api_process(db_url, tmp_path / "api.log", "--key-retention", "36h") as api:
        assert asyncio.run(config(api.base_url))["key_retention_seconds"] == 36 * HOUR
    assert "idempotency keys kept 36h" in (tmp_path / "api.log").read_text()
