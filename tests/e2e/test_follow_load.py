"""Sessions follow a changing load: real null worker processes, real consumers, a Redis stream.

Each worker runs the consumer runtime (examples/consumer/consumer.py's handler) beside it, as on a
Vast instance: it takes a unit, works, acks and releases its session. The controller only watches the queue.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from harness import API_KEY, count, scaler_config, wait_for
from support import free_port

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator

CONSUMER = Path(__file__).resolve().parents[2] / "examples" / "consumer" / "consumer.py"
POLL = 0.5
JOB_SECONDS = 2.0
#: (seconds, jobs per second): 60 s of changing load, then nothing.
LOAD = [(15, 1.0), (20, 2.5), (10, 0.5), (15, 1.5)]


async def produce(queue, produced: list[tuple[float, str]]) -> None:
    for seconds, rate in LOAD:
        last = time.monotonic()
        end = last + seconds
        credit = 0.0
        while last < end:
            # Credit by the time that passed, not by the sleep asked for: a busy machine oversleeps.
            now = min(time.monotonic(), end)
            credit += rate * (now - last)
            last = now
            while credit >= 1:
                credit -= 1
                job_id = uuid.uuid4().hex
                await queue.client.xadd(queue.stream, {"id": job_id, "seconds": str(JOB_SECONDS)})
                produced.append((time.monotonic(), job_id))
            await asyncio.sleep(0.25)


async def depth(client: aioredis.Redis, stream: str, group: str) -> int:
    (info,) = [g for g in await client.xinfo_groups(stream) if g["name"] == group]
    return int(info["lag"] or 0) + int(info["pending"])


async def test_sessions_follow_the_work_and_return_to_zero(queue, controllers):
    results = f"{queue.stream}:results"
    consumer = {
        "command": shlex.join(
            [sys.executable, "-m", "vqs_consumer", "run", f"{CONSUMER}:work", "--results", results]
        ),
        "queue_url": queue.source_url,
        "health": True,
    }
    async with running_emulator(
        api_key=API_KEY, workers="process", **RECOMMENDED_ENDPOINT, cold_start_seconds=1.0, consumer=consumer
    ) as emulator:
        port = free_port()
        config = scaler_config(emulator, queue.source_url, callback_url=f"http://127.0.0.1:{port}")
        config["scalers"][0]["poll_interval"] = POLL
        config["scalers"][0]["policy"]["scale_down_delay"] = 0
        # A fresh worker's consumer waits for Vast to have seen it ready (READY_SETTLE_SECONDS), and a
        # busy machine slows every consumer, so at the peak more units can wait than the endpoint's
        # 20 workers: the policy's cap must sit above any backlog this load can build (>= 80 units).
        config["scalers"][0]["policy"]["max_sessions"] = 200
        controller = await controllers({**config, "metrics_port": port}).start()

        produced: list[tuple[float, str]] = []
        samples: list[tuple[float, int, int]] = []
        producer = asyncio.create_task(produce(queue, produced))
        while not producer.done() or samples[-1][1] or samples[-1][2]:
            metrics = await controller.metrics()
            supply = sum(
                v for (name, labels), v in metrics.items()
                if name in ("vqs_sessions_open", "vqs_sessions_opening")
            )
            samples.append((time.monotonic(), await depth(queue.client, queue.stream, queue.group), int(supply)))
            assert samples[-1][0] - samples[0][0] < 150, "the work did not drain within 90 s of the load's end"
            await asyncio.sleep(0.25)
        await producer

        await wait_for(lambda: _zero(emulator), 15, what="no session left on the emulator")
        done = [json.loads(raw) for raw in await queue.client.lrange(results, 0, -1)]
        await queue.client.delete(results)

    # Every unit processed exactly once.
    assert sorted(job["id"] for job in done) == sorted(job_id for _, job_id in produced)
    assert len(produced) >= 80
    # Sessions follow the work within one poll interval (with its jitter) and a sampling step:
    # every unit that arrived before that has a session (open or opening) ...
    lag = POLL * 1.1 + 0.3
    short = [
        (round(t - samples[0][0], 2), work, supply)
        for t, work, supply in samples
        if supply < work - sum(1 for at, _ in produced if t - lag < at <= t)
    ]
    # ... and no session outlives its work by more than that (a release is seen at once, a
    # surplus is closed on the next tick).
    over = [
        (round(t - samples[0][0], 2), work, supply)
        for t, work, supply in samples
        if supply > max(w for at, w, _ in samples if t - lag <= at <= t)
    ]
    assert len(short) + len(over) <= len(samples) * 0.05, f"{len(samples)} samples; short: {short}, over: {over}"


async def _zero(emulator) -> bool:
    return await count(emulator) == 0
