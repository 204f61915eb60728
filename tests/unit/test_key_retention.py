"""The worker's check that the payment API keeps idempotency keys at least DEDUP_HORIZON."""

from __future__ import annotations

import asyncio
import logging

import pytest

from payment_api.errors import RequestRejected, RetryableError
from streams_app.commands import payment_api_command
from streams_app.exceptions import SettingsError
from streams_app.key_retention import KeyRetentionGuard, retention_problem
from streams_app.settings import Settings

DAY = 86400.0
URL = "http://u:***@127.0.0.1:8081"


class FakeApi:
    """Answers GET /v1/config with ``retention``; None: does not answer."""

    def __init__(self, retention: float | None) -> None:
        self.retention = retention
        self.calls = 0

    async def config(self) -> dict[str, float]:
        self.calls += 1
        if self.retention is None:
            raise RetryableError("no response from the payment API: connection refused")
        return {"key_retention_seconds": self.retention}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard(api: FakeApi, refusals: list[SettingsError], clock: Clock | None = None) -> KeyRetentionGuard:
    async def refuse(exc: SettingsError) -> None:
        refusals.append(exc)

    return KeyRetentionGuard(api, dedup_horizon=7 * DAY, api_url=URL, on_refusal=refuse,
                             recheck_interval=300.0, clock=clock or Clock())


def test_the_message_says_what_to_change() -> None:
    assert retention_problem(7 * DAY, 7 * DAY, URL) is None
    problem = retention_problem(DAY, 7 * DAY, URL)
    assert problem is not None
    assert f"PAYMENT_API_URL={URL} keeps idempotency keys for 1d, less than DEDUP_HORIZON=7d" in problem
    assert "--key-retention 7d" in problem and "IDEMPOTENCY_KEY_RETENTION=7d" in problem
    assert "DEDUP_HORIZON to at most 1d" in problem


def test_a_too_short_retention_refuses_the_start() -> None:
    with pytest.raises(SettingsError, match="keeps idempotency keys for 1d"):
        asyncio.run(guard(FakeApi(DAY), []).at_start())


def test_a_long_enough_retention_starts_and_is_not_asked_again_before_charges() -> None:
    api = FakeApi(30 * DAY)
    checked = guard(api, [])

    async def scenario() -> None:
        await checked.at_start()
        await checked.before_charge()

    asyncio.run(scenario())
    assert checked.verified and api.calls == 1


def test_an_unreachable_api_is_a_warning_at_start_and_checked_before_the_first_charge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api, refusals = FakeApi(None), []
    checked = guard(api, refusals)

    async def scenario() -> None:
        with caplog.at_level(logging.WARNING):
            await checked.at_start()  # no exception: the worker starts
        with pytest.raises(RetryableError):
            await checked.before_charge()  # the sink retries the charge later
        api.retention = DAY  # the API comes up, keeping keys a day
        with pytest.raises(SettingsError):
            await checked.before_charge()

    asyncio.run(scenario())
    assert "checking again before the first charge" in caplog.text
    assert len(refusals) == 1 and "less than DEDUP_HORIZON=7d" in str(refusals[0])
    assert not checked.verified


def test_the_check_is_repeated_after_the_recheck_interval() -> None:
    api, clock, refusals = FakeApi(7 * DAY), Clock(), []
    checked = guard(api, refusals, clock)

    async def scenario() -> None:
        await checked.at_start()
        clock.now = 299.0
        await checked.before_charge()
        assert api.calls == 1
        api.retention = DAY  # restarted with a shorter retention
        clock.now = 301.0
        with pytest.raises(SettingsError):
            await checked.before_charge()

    asyncio.run(scenario())
    assert api.calls == 2 and len(refusals) == 1


def test_an_api_without_v1_config_is_refused() -> None:
    class OldApi:
        async def config(self) -> dict[str, float]:
            raise RequestRejected(404, "not_found", "no such route")

    checked = KeyRetentionGuard(OldApi(), dedup_horizon=7 * DAY, api_url=URL, on_refusal=lambda exc: None)
    with pytest.raises(SettingsError, match="does not say how long it keeps idempotency keys"):
        asyncio.run(checked.at_start())


def test_the_demo_starts_the_api_keeping_keys_for_the_dedup_horizon() -> None:
    command = payment_api_command(Settings.from_env({"DEDUP_HORIZON": "30d", "PAYMENT_API_URL": "http://127.0.0.1:9001"}))
    assert command[1:4] == ["-m", "payment_api", "serve"]
    assert command[command.index("--key-retention") + 1] == "30d"
    assert command[command.index("--port") + 1] == "9001"


def test_the_sink_crashes_the_worker_on_a_late_refusal_and_never_charges(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the start, a too-short retention stops the worker (Faust's app.crash: the
    worker exits 1 with the reason) and the charge waits until the stop cancels it."""
    from streams_app import pipeline

    sink = pipeline.stages["sink"]
    crashed: list[BaseException] = []

    async def crash(reason: BaseException) -> None:
        crashed.append(reason)

    monkeypatch.setattr(sink.app, "crash", crash)
    refusal = SettingsError(["too short"])

    async def scenario() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sink._stop_worker(refusal), timeout=0.2)

    asyncio.run(scenario())
    assert crashed == [refusal]


async def _guard_against(answer: tuple[int, bytes], refusals: list[SettingsError], *, verified_first: bool,
                         at_start: bool) -> object:
    """A real PaymentClient and guard against a server answering GET /v1/config with
    ``answer`` (after one true answer when ``verified_first``); what the start check or the
    check before a charge raised (None when nothing)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from payment_api.client import PaymentClient

    asked = 0

    async def config(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        if verified_first and asked == 1:
            return web.json_response({"key_retention_seconds": 30 * DAY})
        return web.Response(status=answer[0], body=answer[1], content_type="application/json")

    async def refuse(exc: SettingsError) -> None:
        refusals.append(exc)

    app = web.Application()
    app.router.add_get("/v1/config", config)
    clock = Clock()
    async with TestServer(app) as server:
        client = PaymentClient(str(server.make_url("")), backoff_initial_s=0.001, backoff_max_s=0.001)
        checked = KeyRetentionGuard(client, dedup_horizon=7 * DAY, api_url=URL, on_refusal=refuse,
                                    recheck_interval=300.0, clock=clock)
        try:
            if verified_first:
                await checked.before_charge()
                clock.now = 301.0  # the check is due again
            await (checked.at_start() if at_start else checked.before_charge())
        except Exception as exc:  # noqa: BLE001 (the outcome under test)
            return exc
        finally:
            await client.close()
    return None


NOT_ITS_CONFIG = [
    (503, b'{"error": {"type": "http_error", "message": "down"}}'), (502, b"<html>bad gateway</html>"),
    (500, b""), (429, b""), (408, b""), (401, b""), (403, b""),
    (200, b"<html>a proxy's page</html>"), (200, b'{"key_retention_se'),
]


@pytest.mark.parametrize("answer", NOT_ITS_CONFIG)
def test_an_answer_that_is_not_the_api_s_config_makes_charges_wait_and_never_stops_the_worker(answer):
    """An outage behind a gateway (5xx, a proxy's page, a body cut short), throttling or
    credentials taken away: the retention is unknown for now, so the start goes on with a
    warning and the charges wait (RetryableError: the sink retries), without stopping the
    worker. Before, every status but 200 was a refusal: a 503 at start refused the start, and
    a 503 at a re-check stopped the worker (and a 200 that was not JSON raised ValueError,
    which the sink dead-lettered as the payment's processing error)."""
    refusals: list[SettingsError] = []
    assert asyncio.run(_guard_against(answer, refusals, verified_first=False, at_start=True)) is None
    outcome = asyncio.run(_guard_against(answer, refusals, verified_first=True, at_start=False))
    assert isinstance(outcome, RetryableError), outcome
    assert refusals == []


@pytest.mark.parametrize("answer", [(404, b""), (405, b""), (200, b'{"version": 1}'), (200, b'[]'),
                                    (200, b'{"key_retention_seconds": "a week"}')])
def test_an_api_that_does_not_say_refuses_the_start_but_only_holds_charges_once_running(answer):
    """No /v1/config, or one without a retention: the start is refused with what to do. Once
    running (the API answered before), the same answer holds the charges back (they wait, as
    in an outage) rather than stopping the worker: it may be a gateway's route or a deploy
    in progress, and unchecked charges are never made."""
    refusals: list[SettingsError] = []
    outcome = asyncio.run(_guard_against(answer, refusals, verified_first=False, at_start=True))
    assert isinstance(outcome, SettingsError) and "does not say how long it keeps" in str(outcome), outcome
    outcome = asyncio.run(_guard_against(answer, refusals, verified_first=True, at_start=False))
    assert isinstance(outcome, RetryableError) and "does not say" in str(outcome), outcome
    assert refusals == []
