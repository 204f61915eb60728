"""The sink's database modes on a real PostgreSQL (started by infra/postgres.py),
and the ledger through what production does to it: a server restart in the
middle of a stream, a refused statement, an answer to COMMIT that never comes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from urllib.parse import urlsplit

import psycopg
import pytest

from infra import postgres
from streams_app import ledger as ledger_module
from streams_app.exceptions import ChargeRefused, SinkError
from streams_app.ledger import Charge, Ledger
from streams_app.retrying import RetryPolicy
from tests.charging import PAYMENT, charge

pytestmark = pytest.mark.integration


def test_every_sink_mode_on_postgresql(fresh_db):
    async def scenario():
        ledger = Ledger(fresh_db)
        naive = [await charge(ledger, "naive", event_id="e1") for _ in range(2)]
        keyed = [await charge(ledger, event_id="e2") for _ in range(2)]
        at = dict(topic="t.applied", partition=0, event_id="e3")
        stored = [await charge(ledger, "transactional", offset=7, **at),
                  await charge(ledger, "transactional", offset=7, **at),
                  await charge(ledger, "transactional", offset=3, **at)]  # an earlier record, not charged yet
        stats = await ledger.stats()
        await ledger.close()
        return naive, keyed, stored, stats

    naive, keyed, stored, stats = asyncio.run(scenario())
    assert naive == [True, True]
    assert keyed == [True, False]
    assert stored == [True, False, True]
    assert (stats.charges, stats.charged_events, stats.duplicate_charges) == (5, 3, 2)


EVENTS = 60
STOP_AFTER = 20  # charged events before the server goes down
#: Longer than the ledger needs to call it an outage: a try fails after
#: ledger.CHECKOUT_TIMEOUT_S without a connection.
DOWN_S = ledger_module.CHECKOUT_TIMEOUT_S + 2.0


def test_a_postgresql_restart_mid_stream_delays_charges_and_loses_or_repeats_none(own_pg_server, own_fresh_db):
    """The server is stopped (fast shutdown: every connection is cut) after 20 of 60
    charges and started again 7 s later. The charges in between wait; then all go in,
    each exactly once, and nothing escapes the ledger."""
    port = own_pg_server.port

    async def scenario():
        ledger = Ledger(own_fresh_db)
        down = asyncio.Event()
        observed = {"outage_while_down": False, "stats_while_down": None}

        async def watch_outage() -> None:
            deadline = time.monotonic() + DOWN_S
            while time.monotonic() < deadline:
                observed["outage_while_down"] |= ledger.outage
                await asyncio.sleep(0.1)

        async def read_stats() -> None:
            try:
                await ledger.stats()
            except SinkError as exc:  # the dashboard's read gives up instead of hanging
                observed["stats_while_down"] = str(exc)

        async def restart() -> None:
            await asyncio.to_thread(postgres.stop, port)
            down.set()
            await asyncio.gather(watch_outage(), read_stats())
            await asyncio.to_thread(postgres.start, port)

        charged = []
        restarter = None
        for i in range(EVENTS):
            if i == STOP_AFTER:
                restarter = asyncio.create_task(restart())
                await down.wait()  # the next charges certainly meet the outage
            charged.append(await charge(ledger, event_id=f"e{i}"))
        await restarter
        # Redelivered, four at a time (the pool has up to 4 connections): all refused.
        redelivered = await asyncio.gather(*(
            charge(ledger, event_id=f"e{i}") for i in range(EVENTS)
        ))
        stats = await ledger.stats()
        state = (ledger.outage, ledger.retries, ledger.last_error)
        await ledger.close()
        return charged, redelivered, stats, state, observed

    charged, redelivered, stats, (outage, retries, last_error), observed = asyncio.run(scenario())
    assert charged == [True] * EVENTS
    assert redelivered == [False] * EVENTS
    assert (stats.charges, stats.charged_events, stats.duplicate_charges) == (EVENTS, EVENTS, 0)
    assert stats.total_amount == EVENTS * PAYMENT["amount"]
    assert observed["outage_while_down"], "the ledger did not report the outage while the server was down"
    assert outage is False and retries > 0
    assert last_error
    stats_error = observed["stats_while_down"]
    assert stats_error and "still unavailable" in stats_error
    password = urlsplit(own_fresh_db).password
    assert f":{password}@" not in stats_error and ":***@" in stats_error


def test_privileges_taken_away_make_charges_wait_not_refused(fresh_db):
    """An operator revokes INSERT on the charges table (or the table goes, or the server turns
    read-only after a failover): the database refuses every statement, but not for the
    record's sake. Before: ChargeRefused, and the sink dead-lettered every payment one by
    one. Now an outage: retried (SinkError once a bounded try gives up, as for a server
    down) until the privilege is back, then charged once."""
    async def admin(statement: str) -> None:
        async with await psycopg.AsyncConnection.connect(fresh_db, autocommit=True) as conn:
            await conn.execute(statement)

    async def scenario():
        bounded = Ledger(fresh_db, retry=RetryPolicy(first_wait=0.05, max_wait=0.2, give_up_after=1.0))
        waiting = Ledger(fresh_db, retry=RetryPolicy(first_wait=0.05, max_wait=0.2))
        try:
            assert await charge(bounded, event_id="e1")
            await admin("REVOKE INSERT ON charges FROM CURRENT_USER")
            with pytest.raises(SinkError, match="InsufficientPrivilege"):
                await charge(bounded, event_id="e2")
            outage = bounded.outage

            async def grant_later() -> None:
                await asyncio.sleep(1.0)
                await admin("GRANT INSERT ON charges TO CURRENT_USER")

            charged, _ = await asyncio.gather(charge(waiting, event_id="e2"), grant_later())
            return outage, charged, waiting.retries, await waiting.stats()
        finally:
            await bounded.close()
            await waiting.close()

    outage, charged, retries, stats = asyncio.run(scenario())
    assert outage is True
    assert charged is True and retries > 0
    assert (stats.charges, stats.charged_events) == (2, 2)


def test_a_charge_waiting_for_a_lock_is_an_outage_not_a_hang(fresh_db):
    """A migration or an operator holds a lock on the charges table (LOCK TABLE, a long
    ALTER TABLE). Before: the sink's INSERT waited for it without end, inside the commit
    gate under exactly_once (every stage's commits stopped; the broker aborts a transaction
    open 60 s). Now the server ends the wait (lock_timeout): an outage, retried until the
    lock is gone, then charged once."""
    async def scenario():
        bounded = Ledger(fresh_db, retry=RetryPolicy(first_wait=0.05, max_wait=0.2, give_up_after=1.0))
        try:
            assert await charge(bounded, event_id="e1")
            async with await psycopg.AsyncConnection.connect(fresh_db) as holder:
                await holder.execute("LOCK TABLE charges IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                with pytest.raises(SinkError, match="LockNotAvailable"):
                    await charge(bounded, event_id="e2")
                waited = time.monotonic() - started
                await holder.rollback()
            charged = await charge(bounded, event_id="e2")
            return waited, charged, await bounded.stats()
        finally:
            await bounded.close()

    waited, charged, stats = asyncio.run(scenario())
    assert waited < 2 * ledger_module.LOCK_TIMEOUT_MS / 1000 + 1.0, waited
    assert charged is True
    assert (stats.charges, stats.charged_events) == (2, 2)


def test_a_database_that_stops_answering_is_an_outage_not_a_hang(own_pg_server, own_fresh_db):
    """The server stops answering without closing anything (a paused VM, a network that drops
    packets: here SIGSTOP to every server process). No error ever comes: before, the charge
    waited for ever on its pooled connection. Now each wait for an answer is bounded
    (NO_ANSWER_S, then psycopg's cancel attempt): an outage; once the server answers again
    the charge is made, once."""
    async def scenario():
        bounded = Ledger(own_fresh_db, retry=RetryPolicy(first_wait=0.05, max_wait=0.2, give_up_after=1.0))
        try:
            assert await charge(bounded, event_id="e1")  # a pooled connection, in use
            pids = _server_pids(own_pg_server)  # with the backends serving it
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(SinkError, match="did not answer|timeout|Timeout"):
                    await charge(bounded, event_id="e2")
                waited = time.monotonic() - started
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            waiting = Ledger(own_fresh_db, retry=RetryPolicy(first_wait=0.05, max_wait=0.2))
            try:
                charged = await asyncio.wait_for(charge(waiting, event_id="e2"), 60)
                return waited, charged, await waiting.stats()
            finally:
                await waiting.close()
        finally:
            await bounded.close()

    waited, charged, stats = asyncio.run(scenario())
    assert waited < ledger_module.NO_ANSWER_S + 15.0, waited
    assert charged is True
    assert (stats.charges, stats.charged_events) == (2, 2)


def _server_pids(server: postgres.PgInfo) -> list[int]:
    """The postmaster's pid and its children's (every backend and helper process)."""
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    return [postmaster, *map(int, children)]


def test_after_a_refused_statement_the_next_charge_on_the_same_connection_works(fresh_db):
    """The old ledger left the failed transaction open: every later statement on that
    connection failed with "current transaction is aborted"."""
    async def scenario():
        ledger = Ledger(fresh_db, pool_min_size=1, pool_max_size=1)  # one connection: the same one
        with pytest.raises(ChargeRefused, match="NotNullViolation") as refused:
            await charge(ledger, event_id=None)
        with pytest.raises(ChargeRefused, match="NumericValueOutOfRange"):
            await charge(ledger, event_id="big", amount=2**63 - 1 + 1)
        after = [await charge(ledger, event_id="e1"),
                 await charge(ledger, event_id="e1")]
        stats = await ledger.stats()
        state = (ledger.outage, ledger.retries)
        await ledger.close()
        return refused.value, after, stats, state

    refused, after, stats, state = asyncio.run(scenario())
    assert isinstance(refused.__cause__, psycopg.errors.NotNullViolation)
    assert after == [True, False]
    assert (stats.charges, stats.charged_events) == (1, 1)
    assert state == (False, 0)  # a refusal is neither an outage nor retried


class CutAfterCommit:
    """A TCP proxy in front of PostgreSQL that, when armed, lets the client's COMMIT
    through and then drops the server's answer and both connections: the commit
    happened, the client never hears it (an ambiguous failure)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.armed = False
        self.cuts = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in self._writers), return_exceptions=True)

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self._port)
        self._writers += [client_out, server_out]
        commit_sent = asyncio.Event()

        async def upstream() -> None:
            while data := await client_in.read(65536):
                if self.armed and b"COMMIT" in data:
                    self.armed = False
                    commit_sent.set()  # before forwarding: the next answer is the commit's
                server_out.write(data)
                await server_out.drain()
            server_out.close()

        async def downstream() -> None:
            while data := await server_in.read(65536):
                if commit_sent.is_set():
                    self.cuts += 1
                    break  # the answer to COMMIT, never delivered
                client_out.write(data)
                await client_out.drain()
            client_out.close()
            server_out.close()

        await asyncio.gather(upstream(), downstream(), return_exceptions=True)


@pytest.mark.parametrize("mode, rows", [("idempotent", 1), ("transactional", 1), ("naive", 2)])
def test_a_commit_whose_answer_is_lost_is_retried_without_a_double_charge(fresh_db, mode, rows):
    """Idempotent and transactional: the retry meets the UNIQUE constraint, one charge.
    Naive: the retry is a second charge, the mode's documented flaw (as a redelivery is)."""
    parts = urlsplit(fresh_db)

    async def scenario():
        async with (proxy := CutAfterCommit(parts.port)) as proxy_port:
            via_proxy = parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy_port}")
            ledger = Ledger(f"{via_proxy.geturl()}?sslmode=disable&gssencmode=disable")
            warm = await charge(ledger, event_id="warm-up")  # schema made
            proxy.armed = True
            if mode == "transactional":
                result = await charge(ledger, "transactional", topic="t", partition=0, offset=1, event_id="e1")
            else:
                result = await charge(ledger, mode, event_id="e1")
            state = (proxy.cuts, ledger.retries, ledger.outage)
            await ledger.close()
            return warm, result, state

    warm, result, (cuts, retries, outage) = asyncio.run(scenario())
    with psycopg.connect(fresh_db) as conn:
        charged = conn.execute("SELECT COUNT(*) FROM charges WHERE event_id = 'e1'").fetchone()[0]
    assert warm is True
    assert (cuts, outage) == (1, False) and retries >= 1
    assert charged == rows
    # The retry cannot know the lost attempt went in: with a key it says "already charged".
    assert result is (mode == "naive")


def test_a_batch_on_postgresql_is_one_transaction_with_each_mode_s_answer(fresh_db):
    def rows(*ids, first_offset=0):
        return [Charge(event_id=i, topic="t.applied", partition=0, offset=first_offset + n, **PAYMENT)
                for n, i in enumerate(ids)]

    async def scenario():
        ledger = Ledger(fresh_db)
        naive = await ledger.charge_many(rows("n1", "n1"), mode="naive")
        keyed = await ledger.charge_many(rows("k1", "k1", "k2"), mode="idempotent")
        stored = await ledger.charge_many(rows("s1", "s2", first_offset=5), mode="transactional")
        again = await ledger.charge_many(rows("s2", "s3", first_offset=6), mode="transactional")
        with pytest.raises(ChargeRefused, match="NotNullViolation"):
            await ledger.charge_many(rows("r1", None), mode="idempotent")
        stats = await ledger.stats()
        await ledger.close()
        return naive, keyed, stored, again, stats

    naive, keyed, stored, again, stats = asyncio.run(scenario())
    assert naive == [True, True] and keyed == [True, False, True]
    assert stored == [True, True] and again == [False, True]
    assert (stats.charges, stats.charged_events) == (2 + 2 + 3, 1 + 2 + 3), "the refused batch left nothing"
