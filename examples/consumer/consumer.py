"""The reference consumer: the demo's unit of work, run beside the null PyWorker by the vqs-consumer runtime.

    vqs-consumer run examples/consumer/consumer.py:work --source "$QUEUE_URL" --results jobs:results

The runtime (consumer/, docs/consumer.md) does the rest: takes a unit, renews its lease while this
works, acks it and writes the result, takes the next unit before releasing the session
(`POST http://127.0.0.1:$NULL_CONTROL_PORT/release`), redoes a dead worker's units, dead-letters
what keeps failing, stops cleanly on SIGTERM, serves /health and /metrics. Replace `work()` with yours.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from vqs_consumer import Context, handler


class Job(BaseModel):
    """A stream entry such as the demo's `{id, seconds, enqueued_at}` (fields not named here are ignored)."""

    seconds: float = 1.0


@handler
async def work(job: Job, ctx: Context) -> dict[str, float]:
    """The demo's jobs only say how long to take."""
    ctx.progress(0.0, "started")
    await asyncio.sleep(job.seconds)
    return {"seconds": job.seconds}
