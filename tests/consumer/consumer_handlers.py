"""Handlers the consumer tests run in real `vqs-consumer` processes; each job says how to behave."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import BaseModel

from vqs_consumer import Context, FatalError, RetryableError, handler

#: Printed by `work` as it starts a unit, before its id.
STARTED = "handler started unit"


class Job(BaseModel):
    id: str
    seconds: float = 0.0
    #: On the worker named `slow_on`, take `slow_seconds` instead: the unit a test stops that worker in.
    slow_on: str | None = None
    slow_seconds: float = 0.0
    fail: Literal["retryable", "fatal"] | None = None


@handler
async def work(job: Job, ctx: Context) -> dict:
    seconds = job.slow_seconds if ctx.worker == job.slow_on else job.seconds
    print(f"{STARTED} {job.id}", flush=True)  # tests stop a worker mid-unit once they see this
    ctx.progress(0.0, "started")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if job.fail == "retryable":
        raise RetryableError("not yet")
    if job.fail == "fatal":
        raise FatalError("never")
    return {"slept": seconds}


@handler
async def block_loop(job: Job) -> None:
    """Blocks the event loop itself (a handler bug): /health must notice."""
    time.sleep(job.seconds)



@handler
async def bad_result(job: Job) -> object:
    """Returns something that is not JSON data (a handler bug)."""
    return object()
