"""Advise mode (a dry run), the legacy reserve worker, and two replicas with leader election."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid

import yaml
from harness import (
    API_KEY,
    EMULATOR_TIMINGS,
    count,
    creates,
    log_events,
    metric_is,
    post,
    scaler_config,
    wait_for,
)

from controller.emulator.testing import running_emulator

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex


async def test_advise_mode_decides_but_never_opens_until_switched_to_act(emulator, queue, controllers):
    config = scaler_config(emulator, queue.source_url)
    config["scalers"][0]["policy"]["mode"] = "advise"
    config["admin_token"] = ADMIN_TOKEN
    controller = await controllers(config).start()
    await queue.add(3)
    # That advise never acts is tests/test_loop.py's; here, the advice is served and nothing opened.
    await wait_for(lambda: _advised(controller, 3), 10, what="an advised scale-up")
    assert await creates(emulator) == 0
    _, text = await controller.get("/decisions")
    advised = [d for d in json.loads(text)["decisions"] if d["to_open"]]
    assert advised and all(d["mode"] == "advise" and not d["acted"] for d in advised)
    assert advised[-1]["target"] == 3 and advised[-1]["to_open"] == 3

    # No restart: the admin API switches it to act.
    status, entry = await post(f"{controller.url}/scalers/jobs/mode", {"mode": "act"}, ADMIN_TOKEN)
    assert status == 200 and entry["mode"] == "act"
    await wait_for(lambda: _sessions_are(emulator, 3), 20, what="3 sessions once acting")


async def _sessions_are(emulator, n: int) -> bool:
    return await count(emulator) == n


async def test_reserve_mode_holds_and_releases_legacy_reservations(queue, controllers):
    async with running_emulator(api_key=API_KEY, worker_flavor="reserve", **EMULATOR_TIMINGS) as emulator:
        config = scaler_config(emulator, queue.source_url, reservation="reserve")
        controller = await controllers(config).start()
        await queue.add(2)
        await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 2), 20, what="2 held reservations")
        assert len(log_events(await emulator.state(), "create", "reservation")) == 2
        # The work is done: the scale-down closes both (cancelling their held requests).
        await queue.ack(*await queue.take("worker-1", 2))
        await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 0), 15, what="reservations released")
        await wait_for(lambda: _reservations_ended(emulator, 2), 10, what="the emulator to see them end")


async def _reservations_ended(emulator, n: int) -> bool:
    return len(log_events(await emulator.state(), "end", "reservation")) == n


async def test_leader_failover_adopts_sessions_and_never_has_two_actors(emulator, queue, controllers, redis_url):
    tag = uuid.uuid4().hex[:8]
    lease = 4
    config = scaler_config(emulator, queue.source_url)
    config["leader"] = {"kind": "redis", "url": redis_url, "key": f"vqs-e2e:{tag}:leader", "lease_seconds": lease}
    config["state_url"] = f"{redis_url}?prefix=vqs-e2e:{tag}"
    first = await controllers(dict(config), "first").start()
    await wait_for(lambda: _leading(first, 1), 10, what="the first replica to lead")
    second = await controllers(dict(config), "second").start()
    await asyncio.sleep(1)
    assert await second.metric("vqs_leader") == 0
    assert (await second.get("/readyz"))[0] == 200  # a follower is ready

    await queue.add(3)
    await wait_for(lambda: metric_is(first, "vqs_sessions_open", 3), 20, what="3 sessions on the leader")
    assert await second.metric("vqs_sessions_opened_total", scaler="jobs") == 0

    first.kill9()
    killed_at = time.time()
    await first.proc.wait()
    await wait_for(lambda: _leading(second, 1), lease + 2, what="the follower to take over within a lease")
    await wait_for(lambda: metric_is(second, "vqs_sessions_adopted_total", 3), 10, what="re-adoption")
    await asyncio.sleep(2)
    state = await emulator.state()
    # Every session was opened by the first leader; the second adopted them and opened none.
    assert [e["t"] < killed_at for e in log_events(state, "create")] == [True] * 3
    assert await second.metric("vqs_sessions_opened_total", scaler="jobs") == 0

    # New work after the takeover is the new leader's alone.
    await queue.add(1)
    await wait_for(lambda: metric_is(second, "vqs_sessions_open", 4), 20, what="a 4th session")
    assert len(log_events(await emulator.state(), "create")) == 4


async def _leading(controller, value: int) -> bool:
    return await controller.metric("vqs_leader") == value


async def test_sighup_applies_an_edited_policy_without_a_restart(emulator, queue, controllers):
    config = scaler_config(emulator, queue.source_url)
    config["scalers"][0]["policy"]["mode"] = "advise"
    controller = await controllers(config).start()
    await queue.add(2)
    await wait_for(lambda: _advised(controller, 2), 10, what="an advised scale-up")

    config["scalers"][0]["policy"]["mode"] = "act"
    config["scalers"][0]["policy"]["max_sessions"] = 1
    controller.config_path.write_text(yaml.safe_dump(config))
    controller.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 1), 20, what="1 session (the new cap)")
    await asyncio.sleep(2)
    assert await count(emulator) == 1
    assert controller.proc.returncode is None


async def _advised(controller, n: int) -> bool:
    _, text = await controller.get("/decisions")
    return any(d["to_open"] == n and not d["acted"] for d in json.loads(text)["decisions"])
