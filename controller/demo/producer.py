"""The demo's producer, and what the queue tells about each job afterwards.

Each job is one stream entry `{id, seconds, enqueued_at}`; the reference consumer copies those
fields into its result line, so a job's queue wait is `started_at - enqueued_at`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as redis

from controller.demo.load import Job

#: XPENDING pages through the group's pending entries this many at a time.
PENDING_PAGE = 500


async def create_group(client: redis.Redis, stream: str, group: str) -> None:
    """The stream and its consumer group, so the controller's first read finds both."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@dataclass
class Producer:
    """Plays `jobs` into `stream` at their times after `run()` starts."""

    client: redis.Redis
    stream: str
    jobs: Sequence[Job]
    clock: Callable[[], float] = time.monotonic
    #: job id -> Unix time it was enqueued
    produced: dict[str, float] = field(default_factory=dict)
    #: stream entry id -> job id
    entries: dict[str, str] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.produced)

    async def run(self) -> None:
        """Add each job when its time comes; jobs due together go in one pipeline."""
        start = self.clock()
        index = 0
        while index < len(self.jobs):
            delay = self.jobs[index].at - (self.clock() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            now = self.clock() - start
            due = []
            while index < len(self.jobs) and self.jobs[index].at <= now:
                due.append((f"job-{index:05d}", self.jobs[index]))
                index += 1
            await self._add(due)

    async def _add(self, due: list[tuple[str, Job]]) -> None:
        enqueued_at = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id, job in due:
                pipe.xadd(self.stream, {"id": job_id, "seconds": job.seconds, "enqueued_at": enqueued_at})
            entry_ids = await pipe.execute()
        for (job_id, _), entry_id in zip(due, entry_ids, strict=True):
            self.produced[job_id] = enqueued_at
            self.entries[_text(entry_id)] = job_id


async def read_results(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The consumers' result lines (one JSON object per finished job)."""
    return [json.loads(line) for line in await client.lrange(key, 0, -1)]


@dataclass(frozen=True, slots=True)
class Pending:
    """A stream entry taken by a consumer and not acked yet."""

    entry_id: str
    consumer: str  # the reference consumer names itself after its worker id
    times_delivered: int


async def pending(client: redis.Redis, stream: str, group: str) -> list[Pending]:
    """Every entry of the group taken but not acked."""
    found: list[Pending] = []
    start = "-"
    while True:
        page = await client.xpending_range(stream, group, min=start, max="+", count=PENDING_PAGE)
        found += [
            Pending(_text(e["message_id"]), _text(e["consumer"]), int(e["times_delivered"])) for e in page
        ]
        if len(page) < PENDING_PAGE:
            return found
        start = "(" + _text(page[-1]["message_id"])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
