"""Seeking a partition back without losing records: the fixes' one way to seek."""

from __future__ import annotations

from typing import Any


async def quiescent_seek(consumer: Any, seek: Any) -> None:
    """Run ``seek()`` (a coroutine function) while the fetcher delivers nothing.

    A seek while the fetcher runs lets records of a batch fetched before it through
    after it: they move Faust's read offset past the records fetched again from the
    sought offset, which Faust then drops as already read. Stopping the consumer's
    flow first ends the batch in progress (Faust's getmany stops delivering it) and
    holds the next fetch until the flow resumes (what Consumer.wait_for_stopped_flow
    is for). A flow already stopped (a rebalance) is left stopped.
    """
    if not consumer.flow_active:
        await seek()
        return
    app = consumer.app
    generation = app.consumer_generation_id
    consumer.stop_flow()
    try:
        await consumer.wait_for_stopped_flow()
        await seek()
    finally:
        if app.consumer_generation_id == generation:  # else a rebalance owns the flow now
            consumer.resume_flow()


async def seek_back(consumer: Any, tp: Any, offset: int) -> None:
    """Deliver ``tp`` again from ``offset``: forget its acked offsets (the records after
    it come again and are acked again when skipped as processed) and seek with the flow
    stopped. The stall heal's remedy, and the seek-back fault's (streams_app/faults.py)."""
    if consumer._acked.get(tp):
        consumer._acked[tp].clear()
        consumer._acked_index[tp].clear()
    await quiescent_seek(consumer, lambda: consumer.seek(tp, offset))
