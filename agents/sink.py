"""sink: charge each applied payment in the external system.

    {prefix}.applied (account -> AppliedPayment)  ->  SINK_DB table ``charges``
                                                  or POST {PAYMENT_API_URL}/v1/charges

The source text's last point made runnable: Kafka transactions end at Kafka.
The database write is not part of any Kafka transaction, so under EVERY
guarantee a crash after the write and before the offset commit delivers the
event again, and the charge happens again unless the database refuses it.

Records are taken in batches of what is already fetched (``BATCH_MAX``, see
agents/processing.py ``batches``). A batch's database charges go in one
transaction (one commit instead of one per event; a refusal of any row makes the
sink charge them one by one, so only the refused record is dead-lettered); the
payment API gets one call per event. The batch is acked after all its effects,
so a crash repeats the whole batch, and each mode below answers that as it
answers any redelivery.

A record the target never takes while it takes the others (an API that answers 500 to one
account, a database trigger that raises for one row) is not an outage, though it looks like
one: retried as one, it held its batch, and every later charge, for good. The sink tells them
apart by evidence (:class:`FailingCharges`): once a batch failed, its records are charged one
by one, those that never failed first, and the first failure ends the try (in an outage, one
call's wait per try, as before); a record that keeps failing while others are charged is
set aside (left unacked, so no commit passes it) when more records wait behind it, tried
again with a later batch after a backoff, and after SINK_GIVE_UP_AFTER of failures with
other charges made meanwhile, dead-lettered (``effect_failed``, the target's last answer as
the reason). While nothing is charged at all, nothing is dead-lettered.

- SINK_MODE=naive: a plain insert. A redelivery is a second charge: the lab's
  crash point ``sink.after_effect`` shows duplicates > 0 even under exactly_once.
- SINK_MODE=idempotent: the idempotency key is the event id, guarded by a
  UNIQUE constraint, inserted with ON CONFLICT DO NOTHING: redeliveries,
  crashes and rebalances all end in one charge per event.
- SINK_MODE=transactional: the charge row carries the record it came from
  (topic, partition, offset) under a UNIQUE constraint: offsets stored with
  the effect, in one database statement. A redelivered record is refused by
  the database, so the Kafka commit no longer decides whether a charge
  repeats (streams_app/ledger.py says why there is no per-partition position
  to seek to: Faust can deliver a record after later ones).
- SINK_TARGET=api: the same contract against an HTTP payment API
  (payment_api/). naive sends no Idempotency-Key, and its client retries a
  timed-out or dropped request: if the first attempt was charged, the retry
  charges again. idempotent sends Idempotency-Key = event id: the API answers
  a retry or a redelivery with the first charge, so one event is one charge
  whatever the retries, crashes and rebalances, as long as the API still has
  the key: the worker refuses to start against an API that keeps keys for
  less than DEDUP_HORIZON (streams_app/key_retention.py). transactional is
  refused at start-up (settings.py): an HTTP call cannot join a database
  transaction.
- PROCESSING_GUARANTEE=at_most_once: the offset is committed BEFORE the charge
  (agents/processing.py); a crash in between loses the charge for good
  (crash point ``sink.after_commit``). Shown for completeness, never
  recommended for money.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from faust.types import EventT
from tenacity import RetryCallState

from agents.failing_charges import FailingCharges
from agents.processing import AppProcessing, Batch
from faust_guarantees.holding import Released
from payment_api.client import PaymentClient
from payment_api.errors import RetryableError
from streams_app import metrics
from streams_app.exceptions import ChargeGivenUp, ChargeRefused, SettingsError, SinkError, Unavailable
from streams_app.faults import crashpoint
from streams_app.key_retention import KeyRetentionGuard
from streams_app.ledger import Charge, ChargeStats, Ledger
from streams_app.logs import record_fields
from streams_app.models import AppliedPayment, parse_applied
from streams_app.retrying import RetryPolicy
from streams_app.settings import Settings
from streams_app.topics import Topics, place

log = logging.getLogger(__name__)

#: How long one try of a batch's charges may wait for the database or the API inside processing_batch(),
#: where under exactly_once it holds the commit gate (and so every stage's commits); then
#: the try gives up (Unavailable) and the sink waits OUTSIDE the gate before the next one.
TRY_S = 2.0
#: The waits between tries, for as long as the outage lasts: the charge is delayed, never skipped.
OUTAGE_WAIT = RetryPolicy()
#: A bounded number of HTTP attempts per try; API_OUTAGE_RETRY tries again after them.
API_RETRIES = 3
#: Waits between calls while the payment API is unavailable (RetryableError), for one try.
#: A refusal of the request itself (RequestRejected: 400, 413, 422) is not retried: it is
#: dead-lettered; any other answer is the API's, not the record's (payment_api/client.py).
API_OUTAGE_RETRY = RetryPolicy(give_up_after=TRY_S)
#: One call, no retry: a record's charge right after another went through (:meth:`Sink._charge_each`).
ONE_ATTEMPT = RetryPolicy(give_up_after=0.0)


def _queued(stream: Any) -> int:
    """Records waiting in ``stream``'s queue (0 when it has none to look at)."""
    queue = getattr(stream.channel, "queue", None)
    return queue.qsize() if queue is not None else 0


def effect_target(settings: Settings) -> str:
    """Where the charges go, password masked: for the dashboard."""
    return settings.shown("payment_api_url" if settings.sink_target == "api" else "sink_db")


class Sink:
    """The sink stage of one app: its agent, and its clients of the external system."""

    def __init__(self, app: Any, topics: Topics, processing: AppProcessing) -> None:
        self.app = app
        self.settings = settings = app.settings
        self.processing = processing
        self.ledger = Ledger(settings.sink_db, retry=RetryPolicy(give_up_after=TRY_S))
        self.idempotent = settings.sink_mode == "idempotent"
        self.offsets_in_database = settings.sink_mode == "transactional"
        self.payments_api = (PaymentClient(settings.payment_api_url, timeout=settings.payment_api_timeout)
                             if settings.sink_target == "api" else None)
        #: Only keys can be forgotten: the check is for the idempotent API sink.
        self.retention_guard = (
            KeyRetentionGuard(self.payments_api, dedup_horizon=settings.dedup_horizon,
                              api_url=settings.shown("payment_api_url"), on_refusal=self._stop_worker)
            if self.payments_api is not None and self.idempotent else None
        )
        if self.retention_guard is not None:
            app.start_checks.append(self.retention_guard.at_start)
        app.on_before_shutdown.connect(self._close_clients)
        self.failing = FailingCharges(settings.sink_give_up_after, holdings=processing.holdings)
        # Its only Kafka outputs are dead letters, and its charges are idempotent: under exactly_once
        # a record set aside (a hole) does not hold its partition's transaction (whole-transactions).
        processing.sends_only_dead_letters(topics.applied)

        async def charge_payments(stream: Any) -> None:
            """Perform the external side effect once per delivery (naive) or per event id."""
            stream = stream.noack()  # acked by processing_batch(): after the effects, or before them in at_most_once
            async for batch in processing.batches(stream):
                events = self.failing.resume(batch, app.consumer_generation_id, quiet=_queued(stream) == 0)
                await self._charge_until_answered(stream, events)

        self.agent = app.agent(topics.applied, name="agents.sink.charge_payments")(charge_payments)

    async def _charge_until_answered(self, stream: Any, events: list[EventT]) -> None:
        """Try ``events``' charges until the target answered each (charged, refused: dead-lettered,
        or given up) or they were set aside; while the target is down, wait between tries
        (OUTAGE_WAIT, outside processing_batch(): the commit gate is free meanwhile). The
        records are held through the kit: at a revocation or a stop it ends the waits and
        releases them, unacked (a rebalance must not wait for the database)."""
        failing = self.failing
        # What each event's charge answered, kept across tries: an outage in the middle of a
        # batch of API calls must not repeat the calls that went through (without a key,
        # each repeat would be a charge that no crash or redelivery caused).
        answers: dict[int, bool] = {}
        with self.processing.holdings.hold(events) as held:

            async def one_try() -> None:
                async with held.attempt():
                    generation = self.app.consumer_generation_id
                    stale = [e for e in held.events if e.message.generation_id != generation]
                    if stale:
                        # Delivered before a rebalance (the kit releases a waiting batch at a revocation,
                        # unless its fix is off): they come again from the committed offset, to this
                        # worker or another (Faust drops them too).
                        log.info("sink: %d records delivered before a rebalance left to their next delivery",
                                 len(stale))
                        failing.forget(stale)
                        held.events = [e for e in held.events if e.message.generation_id == generation]
                    unanswered = [e for e in held.events if id(e) not in answers]
                    if failing.set_aside_if_waiting(unanswered, more_waiting=_queued(stream) > 0):
                        log.warning("sink: %d records whose charges keep failing set aside (unacked) while the "
                                    "sink goes on; first %s", len(unanswered), place(unanswered[0].message))
                        held.events = [e for e in held.events if id(e) in answers]
                    if held.events:
                        await self._charge_batch(stream, held.events, answers)

            try:
                await replace(OUTAGE_WAIT, sleep=held.sleep).run(
                    one_try, retry_on=lambda exc: isinstance(exc, Unavailable), before_sleep=self._log_outage)
            except Released:
                log.info("sink: %d records released unacked at a revocation or a stop; they come again "
                         "from the committed offset", len(held.events))
        failing.forget(held.events)

    async def _stop_worker(self, reason: SettingsError) -> None:
        """The API's key retention turned out too short after the start: stop the worker
        (exit status 1, the reason logged) rather than charge; never returns."""
        log.critical("sink: %s", reason)
        await self.app.crash(reason)
        await asyncio.Event().wait()  # cancelled by the stop

    async def _charge_batch(self, stream: Any, events: list[EventT], answers: dict[int, bool]) -> None:
        """One try at a batch's charges, inside processing_batch(): to the database in one
        transaction (a refusal: one by one, to dead-letter only the refused), or to the API
        one call per event; once any of them failed, one by one (:meth:`_charge_each`).
        Crash point ``sink.after_effect`` per event, after the batch's effects and before
        its offsets can be committed."""
        settings = self.settings
        async with self.processing.processing_batch(stream, events, stage="sink") as work:
            payments: list[tuple[EventT, AppliedPayment]] = []
            for event in events:
                with work.record(event):
                    payments.append((event, parse_applied(event.value, max_bytes=settings.max_record_bytes,
                                                          max_amount=settings.max_amount)))
            pending = [p for p in payments if id(p[0]) not in answers]
            if self.payments_api is None and not any(self.failing.failing(event) for event, _ in pending):
                await self._charge_in_database(work, pending, answers)
            else:
                await self._charge_each(work, pending, answers)
            metrics.sink_answered(settings.sink_target)
            for event, payment in payments:
                if work.ok(event):
                    if self.offsets_in_database and not answers[id(event)]:
                        log.info("sink: %s was charged before; the database refused it again",
                                 place(event.message), extra=record_fields(event.message, stage="sink",
                                                                           event_id=payment.event_id))
                    crashpoint("sink.after_effect")

    async def _charge_each(self, work: Batch, payments: list[tuple[EventT, AppliedPayment]],
                           answers: dict[int, bool]) -> None:
        """Charge ``payments`` one by one, those that never failed first.

        A record that failed alone before, or whose turn comes right after a charge went
        through, gets one attempt (no retries: the target answers, or the record is known to
        fail). Any other record's failure ends the try (Unavailable: the batch waits and is
        tried again) unless a charge went through since the previous such failure: in an
        outage one call's wait per try, as before. So does TRY_S spent on failures in the try
        (the commit gate is held meanwhile). Each failure is noted
        (:meth:`FailingCharges.failed`); a record given up is dead-lettered."""
        failing = self.failing
        loop = asyncio.get_running_loop()
        charged_since_failure = False
        spent = 0.0
        last: Unavailable | None = None
        for event, payment in failing.in_order(payments, lambda p: p[0]):
            with work.record(event):
                known = failing.failed_alone(event)
                started = loop.time()
                try:
                    answers[id(event)] = await self._charge_one(event, payment, once=known or charged_since_failure)
                except Unavailable as exc:
                    spent += loop.time() - started
                    reason = failing.failed(event, exc)
                    if reason is not None:
                        log.error("sink: giving up %s: %s", place(event.message), reason,
                                  extra=record_fields(event.message, stage="sink", event_id=payment.event_id))
                        raise ChargeGivenUp(reason) from exc
                    if spent >= TRY_S or not (known or charged_since_failure):
                        raise
                    if not known:
                        charged_since_failure = False
                    last = exc
                    continue
                except ChargeRefused:
                    failing.forget([event])
                    raise
                failing.charged(event)
                charged_since_failure = True
        if last is not None and any(id(event) not in answers and work.ok(event) for event, _ in payments):
            raise last

    async def _charge_one(self, event: EventT, payment: AppliedPayment, *, once: bool) -> bool:
        """One record's charge (False: the target had it already); ``once``: one attempt."""
        if self.payments_api is not None:
            return await self._charge_through_api(self.payments_api, payment, once=once)
        return (await self._charge_rows([_charge_row(event, payment)], policy=ONE_ATTEMPT if once else None))[0]

    async def _charge_in_database(self, work: Batch, payments: list[tuple[EventT, AppliedPayment]],
                                  answers: dict[int, bool]) -> None:
        """All of ``payments`` in one database transaction; if the database refuses any of
        them, each on its own, so that only the refused ones are dead-lettered. If the
        transaction fails as in an outage, every record of it is noted as failed: the next
        try goes one by one (:meth:`_charge_each`), which tells an outage from a record."""
        try:
            results = await self._charge_rows([_charge_row(event, payment) for event, payment in payments])
        except ChargeRefused:
            for event, payment in payments:
                with work.record(event):  # a refusal (ChargeRefused) dead-letters this one
                    answers[id(event)] = (await self._charge_rows([_charge_row(event, payment)]))[0]
            return
        except Unavailable:
            self.failing.suspect(event for event, _ in payments)
            raise
        for (event, _), result in zip(payments, results):
            answers[id(event)] = result
            self.failing.charged(event)

    async def _charge_rows(self, charges: list[Charge], policy: RetryPolicy | None = None) -> list[bool]:
        """Charge ``charges`` in one database transaction; per charge, False when the database
        says it was already made. An outage past TRY_S (``policy``: the ledger's retries by
        default) is Unavailable: the batch is tried again later, its effects delayed, never skipped."""
        try:
            return await self.ledger.charge_many(charges, mode=self.settings.sink_mode, policy=policy)
        except SinkError as exc:
            raise self._unavailable(exc) from exc

    async def _charge_through_api(self, api: PaymentClient, payment: AppliedPayment, *, once: bool = False) -> bool:
        """One charge through the payment API; False when the API says it was already made
        (the same idempotency key). A refusal of the request (RequestRejected) is raised for
        the DLQ; an outage past TRY_S is Unavailable, as for the database."""
        guard = self.retention_guard

        async def call() -> bool:
            if guard is not None:
                await guard.before_charge()
            result = await api.charge(
                payment.amount, payment.currency, payment.account, reference=payment.event_id,
                idempotency_key=payment.event_id if self.idempotent else None, retries=0 if once else API_RETRIES,
            )
            return not result.replayed

        try:
            return await (ONE_ATTEMPT if once else API_OUTAGE_RETRY).run(
                call, retry_on=lambda exc: isinstance(exc, RetryableError), before_sleep=_log_api_retry)
        except RetryableError as exc:  # still down after TRY_S
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> Unavailable:
        """The sink's target is still down after TRY_S: the batch waits and is tried again."""
        return Unavailable(f"{self.settings.sink_target} unavailable: {exc}")

    def _log_outage(self, state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        metrics.sink_waiting(self.settings.sink_target)
        log.warning("sink: %s; waiting %.2f s (attempt %d), other stages go on",
                    state.outcome.exception(), state.next_action.sleep, state.attempt_number)

    async def charge_stats(self) -> ChargeStats:
        """Charges counted by the external system itself (the database, or the payment API's
        own database through GET /v1/stats), never by this agent."""
        if self.payments_api is None:
            return await self.ledger.stats()
        api = await self.payments_api.stats()
        return ChargeStats(api["charges"], api["distinct_references"], api["total_amount"])

    def effect_target(self) -> str:
        """Where the charges go, password masked: for the dashboard."""
        return effect_target(self.settings)

    async def _close_clients(self, sender: object, **kwargs: object) -> None:
        if self.payments_api is not None:
            await self.payments_api.close()


def _charge_row(event: EventT, payment: AppliedPayment) -> Charge:
    message = event.message
    return Charge(event_id=payment.event_id, account=payment.account, amount=payment.amount,
                  currency=payment.currency, created_at=payment.created_at,
                  topic=message.topic, partition=message.partition, offset=message.offset)


def _log_api_retry(state: RetryCallState) -> None:
    assert state.outcome is not None and state.next_action is not None
    metrics.sink_waiting("api")
    log.warning("sink: payment API unavailable (%s); retrying in %.2f s",
                state.outcome.exception(), state.next_action.sleep)


def register(app: Any, topics: Topics, tables: Any, processing: AppProcessing) -> Sink:
    """Declare the sink agent on ``app`` (it keeps no table)."""
    return Sink(app, topics, processing)
