"""The kit in someone else's app: examples/order_dedup.py (about 30 lines, faust_guarantees)
under exactly_once, its worker SIGKILLed at random while orders flow, read back with
read_committed by the lab's engine for any Faust app (lab/apps.py): every order id exactly
once. The same app written in stock Faust (examples/order_dedup_stock.py) does not hold it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from faust_guarantees.dead_letters import CODE
from lab import apps

pytestmark = pytest.mark.integration


def _run(app: str, kafka_bootstrap: str, workdir: Path, seed: int, workers: int = 1,
         crash_at: str | None = None, records: list[tuple[bytes, bytes]] | None = None,
         kills: int = 4, invariant: apps.Invariant = apps.each_key_once, group: str = "dedup",
         dead_letters: bool = False) -> apps.AppResult:
    prefix = f"ex-{uuid.uuid4().hex[:8]}"
    outputs = [f"{prefix}.unique"] + ([f"{prefix}.dlq"] if dead_letters else [])
    app_run = apps.AppRun(
        app=app, input_topic=prefix, output_topics=outputs, group=f"{prefix}-{group}",
        bootstrap=kafka_bootstrap, workdir=workdir, guarantee="exactly_once", env={"ORDERS_PREFIX": prefix},
    )
    records = apps.order_records(2000, seed=seed) if records is None else records
    return apps.run(app_run, records, invariant, kills=kills, seed=seed,
                    workers=workers, crash_at=crash_at)


def test_an_order_in_any_format_is_forwarded_not_dropped_by_faust_s_decoder(kafka_bootstrap, tmp_path):
    """Orders whose values are not JSON (bytes of another format, a null) come out like the
    others. A topic declared ``value_type=bytes`` without ``value_serializer="raw"`` decodes
    values with the app's default JSON codec, and Faust's conductor acks a value it cannot
    decode and drops it: no output, no dead letter (the example did, until session 16)."""
    odd = [(b"order-proto", b"\x08\x96\x01\x12\x03abc"), (b"order-text", b"not json"),
           (b"order-null", None),
           # refused (no key): dead-lettered; with the kit's default redact (None until session
           # 17) building its dead letter crashed the agent, again at every restart
           (None, b'{"order": "no key"}')]
    result = _run("examples.order_dedup", kafka_bootstrap, tmp_path / "formats", seed=11,
                  records=apps.order_records(200, seed=11) + odd, kills=0)
    assert result.inputs == 204
    assert result.holds, result.summary()


def _decoded_once_and_the_rest_dead_lettered(inputs, outputs):
    """Each order the model decodes comes out once; each other record is in the DLQ, its
    bytes as they were (a null as a null), marked undecodable."""
    unique, dlq = outputs.values()
    decodable = [r for r in inputs if r.value and r.value.startswith(b'{"order"')]
    problems = apps.each_key_once(decodable, {"unique": unique})
    letters = Counter((r.key, r.value) for r in dlq if (CODE, b"undecodable") in list(r.headers))
    odd = Counter((r.key, r.value) for r in inputs if not (r.value and r.value.startswith(b'{"order"')))
    if letters != odd:
        problems.append(f"dead letters {dict(letters)} for the undecodable inputs {dict(odd)}")
    return problems


def test_a_record_its_model_cannot_decode_is_dead_lettered_not_dropped_by_faust_s_conductor(kafka_bootstrap, tmp_path):
    """A typed topic (a faust.Record, Faust's JSON codec): Faust's conductor acks a record
    the model cannot decode and drops it (no output, no dead letter, no log line). Through
    the kit's discipline it is dead-lettered with its original bytes, in the source
    partition's transaction, under SIGKILLs."""
    odd = [(b"order-proto", b"\x08\x96\x01\x12\x03abc"), (b"order-text", b"not json"),
           (b"order-null", None), (b"order-short", b'{"id": 1}'), (b"order-list", b"[1, 2]")]
    records = apps.order_records(300, seed=13)
    records = records[:100] + odd[:2] + records[100:200] + odd[2:] + records[200:]
    result = _run("examples.order_dedup_typed", kafka_bootstrap, tmp_path / "typed", seed=13, records=records,
                  kills=2, invariant=_decoded_once_and_the_rest_dead_lettered, group="typed", dead_letters=True)
    assert result.inputs == 305 and result.kills == 2
    assert result.holds, result.summary()


def test_the_example_app_through_the_kit_forwards_every_order_once_under_sigkills(kafka_bootstrap, tmp_path):
    result = _run("examples.order_dedup", kafka_bootstrap, tmp_path / "kit", seed=3)
    assert result.kills == 4 and result.inputs == 2000
    assert result.holds, result.summary()


def test_with_two_workers_every_kill_is_also_a_rebalance_and_the_kit_s_app_stays_exact(kafka_bootstrap, tmp_path):
    # Two kills (four in the one-worker test): each restart is a rebalance of both workers.
    result = _run("examples.order_dedup", kafka_bootstrap, tmp_path / "kit-2", seed=5, workers=2, kills=2)
    assert result.kills == 2
    assert result.holds, result.summary()


def test_the_same_app_in_stock_faust_does_not(kafka_bootstrap, tmp_path):
    """Without the kit the same SIGKILLs lose or repeat orders (or the worker never drains).
    Seen with this seed: 1,259 of 1,584 order ids repeated in the output (3,279 records):
    stock Faust sends outputs to a topic the app does not consume outside the transaction
    (faust-streaming#177), so each replay after a SIGKILL writes them again."""
    result = _run("examples.order_dedup_stock", kafka_bootstrap, tmp_path / "stock", seed=3)
    assert not result.holds, result.summary()


def test_killed_at_its_own_crash_point_the_kit_s_app_stays_exact_and_stock_faust_does_not(kafka_bootstrap, tmp_path):
    """The lab's named crash points in someone else's app: both examples mark
    ``orders.after_forward`` (an output sent, its offset not committed); each worker start is
    armed to SIGKILL itself there. Two kills each (CI time): every one lands where stock
    Faust has already sent an output it will send again."""
    kit = _run("examples.order_dedup", kafka_bootstrap, tmp_path / "kit-point", seed=7, kills=2,
               crash_at="orders.after_forward")
    assert kit.kills == 2 and kit.holds, kit.summary()
    stock = _run("examples.order_dedup_stock", kafka_bootstrap, tmp_path / "stock-point", seed=7, kills=2,
                 crash_at="orders.after_forward")
    assert stock.kills == 2 and not stock.holds, stock.summary()
