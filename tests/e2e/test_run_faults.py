"""Faults never crash `run`, never scale it to zero on an error, and it recovers once they end."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from harness import LEASE_SECONDS, PausableProxy, count, metric_is, scaler_config, sessions, wait_for

from controller.sessions import WORKER_GC_SLACK


async def test_route_429_and_5xx_bursts_are_retried(emulator, queue, controllers):
    controller = await controllers(scaler_config(emulator, queue.source_url)).start()
    await emulator.set_faults({"routes": {"route": {"errors": {"429": 0.5, "503": 0.3}}}, "seed": 7})
    await queue.add(3)
    await wait_for(lambda: _failures(controller), 20, what="failed opens under the fault")
    await emulator.set_faults({"routes": {}})
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 3), 20, what="3 sessions after the burst")
    assert await count(emulator) == 3
    assert controller.proc.returncode is None


async def _failures(controller) -> float:
    metrics = await controller.metrics()
    return sum(v for (name, _), v in metrics.items() if name == "vqs_session_open_failures_total")


async def test_a_crashed_worker_is_replaced(emulator, queue, controllers):
    controller = await controllers(scaler_config(emulator, queue.source_url)).start()
    await queue.add(2)
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 2), 20, what="2 sessions")
    victim = (await sessions(emulator))[0]["worker"]["id"]
    await emulator.set_faults({"crash_worker": victim})
    # A dead worker does not answer, which a network fault looks like too: its session is kept
    # until its lease could have run out (up to 1.5 leases after the last renewal, plus the
    # workers' expiry slack), then counted lost and replaced because the queue still wants 2.
    lost_within = 1.5 * LEASE_SECONDS + WORKER_GC_SLACK
    await wait_for(lambda: _replaced(emulator, victim), lost_within + 10, what="a session on another worker")
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 2), 10, what="2 sessions again")
    assert controller.proc.returncode is None


async def _replaced(emulator, victim: int) -> bool:
    now = await sessions(emulator)
    return len(now) == 2 and all(s["worker"]["id"] != victim for s in now)


async def test_a_cold_start_that_never_finishes_stays_opening(emulator, queue, controllers):
    await emulator.set_faults({"stuck_cold_starts": True})
    controller = await controllers(scaler_config(emulator, queue.source_url)).start()
    await queue.add(2)
    await wait_for(lambda: metric_is(controller, "vqs_sessions_opening", 2), 10, what="2 opening")
    await asyncio.sleep(3)
    assert await controller.metric("vqs_sessions_opening", scaler="jobs") == 2
    assert await controller.metric("vqs_sessions_opened_total", scaler="jobs") == 0
    await emulator.set_faults({"stuck_cold_starts": 0})
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 2), 30, what="2 sessions after the fault")


async def test_source_down_for_30s_holds_the_sessions(emulator, queue, controllers, redis_url):
    parts = urlsplit(redis_url)
    proxy = PausableProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.up()
    source = queue.source_url.replace(f"{parts.hostname}:{parts.port or 6379}", f"127.0.0.1:{proxy.port}")
    controller = await controllers(scaler_config(emulator, source)).start()
    try:
        await queue.add(2)
        await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 2), 20, what="2 sessions")
        await proxy.down()
        await wait_for(lambda: _read_errors(controller), 10, what="read errors")
        for _ in range(30):
            await asyncio.sleep(1)
            assert await controller.metric("vqs_sessions_open", scaler="jobs") == 2
        assert (await controller.get("/readyz"))[0] == 503
        await proxy.up()
        await wait_for(lambda: _ready(controller), 10, what="ready again")
        # Recovered: the work finishes and the sessions follow it down.
        await queue.ack(*await queue.take("worker-1", 2))
        await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 0), 15, what="scale to zero")
    finally:
        await proxy.down()


async def _read_errors(controller) -> bool:
    return await controller.metric("vqs_source_read_errors_total", scaler="jobs") > 0


async def _ready(controller) -> bool:
    return (await controller.get("/readyz"))[0] == 200
