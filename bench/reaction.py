"""How fast `run` reacts: seconds from a unit entering the queue to the session it asks for.

Runs the real controller (a subprocess) against the emulator and a private redis-server, twice:
polling only, and with Redis keyspace notifications on (the source's `watch()` wakes the loop).
Measured from outside: XADD, then poll the controller's /metrics until open + opening sessions
reach 1. Writes bench/reaction.md. Needs `redis-server` on PATH.

    python bench/reaction.py [--samples 15] [--poll-interval 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.child import start_controller
from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator
from controller.ports import free_port

HERE = Path(__file__).resolve().parent
STREAM, GROUP = "reaction:jobs", "workers"


async def supply(http: aiohttp.ClientSession, metrics_url: str) -> float:
    async with http.get(metrics_url) as response:
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("vqs_sessions_open", "vqs_sessions_opening")
    )


async def until(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("the controller did not react within 30 s")
        await asyncio.sleep(0.005)


async def measure(push: bool, samples: int, poll_interval: float, workdir: Path) -> list[float]:
    port = free_port()
    events = ["--notify-keyspace-events", "Kt"] if push else []
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(workdir), *events],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    redis_url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.from_url(redis_url, decode_responses=True)
    controller = None
    try:
        await until(lambda: _pings(client), 10)
        await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        async with running_emulator(**RECOMMENDED_ENDPOINT, cold_start_seconds=0.2) as emulator:
            metrics_port = free_port()
            config = {
                "vast": {"api_key": emulator.api_key, "url": emulator.url},
                "metrics_port": metrics_port,
                "state_dir": str(workdir / f"state-{push}"),
                "log_format": "json",
                "scalers": [{
                    "name": "jobs", "endpoint": "demo", "poll_interval": poll_interval,
                    "source": f"{redis_url}?stream={STREAM}&group={GROUP}",
                    "policy": {"scale_down_delay": 0},
                }],
            }  # fmt: skip
            path = workdir / f"config-{push}.yaml"
            path.write_text(yaml.safe_dump(config))
            controller = await start_controller(path, asyncio.subprocess.DEVNULL)
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                await until(lambda: _answers(http, metrics_url))
                return [await _one(client, http, metrics_url, poll_interval) for _ in range(samples)]
    finally:
        if controller is not None:
            controller.send_signal(signal.SIGTERM)
            await asyncio.wait_for(controller.wait(), 20)
        await client.aclose()
        server.terminate()
        server.wait(10)


async def _one(client: aioredis.Redis, http: aiohttp.ClientSession, metrics_url: str, poll: float) -> float:
    # A random phase against the poll schedule, so the samples cover it evenly.
    await asyncio.sleep(random.uniform(0, poll))
    started = time.monotonic()
    await client.xadd(STREAM, {"job": "1"})
    await until(lambda: _at_least(http, metrics_url, 1))
    reacted = time.monotonic() - started
    reply = await client.xreadgroup(GROUP, "bench", {STREAM: ">"}, count=1)
    await client.xack(STREAM, GROUP, reply[0][1][0][0])
    await until(lambda: _at_most(http, metrics_url, 0))
    return reacted


async def _pings(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:
        return False


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        await supply(http, url)
        return True
    except aiohttp.ClientError:
        return False


async def _at_least(http: aiohttp.ClientSession, url: str, n: int) -> bool:
    return await supply(http, url) >= n


async def _at_most(http: aiohttp.ClientSession, url: str, n: int) -> bool:
    return await supply(http, url) <= n


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vqs-reaction-") as tmp:
        for push, label in ((False, "polling only"), (True, "Redis keyspace notifications")):
            seconds = await measure(push, args.samples, args.poll_interval, Path(tmp))
            rows.append(
                f"| {label} | {statistics.median(seconds):.3f} | {quantile(seconds, 0.95):.3f} | {max(seconds):.3f} |"
            )
            print(rows[-1], flush=True)
    (HERE / "reaction.md").write_text(
        "# Reaction time: unit queued -> session requested\n\n"
        f"Generated by `python bench/reaction.py` ({args.samples} samples each, poll_interval "
        f"{args.poll_interval:g} s, Redis stream source, the emulator, the real `run` process; measured "
        "from outside through /metrics, so each value includes up to ~5 ms of scrape polling).\n\n"
        "| wake-up | p50 (s) | p95 (s) | max (s) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Polling alone reacts within one poll interval (plus the read and the jitter). With\n"
        "`notify-keyspace-events` including `K` and `t` on the Redis server, the source's `watch()`\n"
        "wakes the loop at once and the poll interval only bounds how stale a missed event can be.\n"
    )


if __name__ == "__main__":
    asyncio.run(main())
