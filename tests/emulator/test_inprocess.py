"""What only the in-process kind needs showing: the reserve flavor, consumers, a full endpoint, on_close."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from aiohttp import web
from emulator_support import call, endpoint_state, sdk
from support import eventually

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator
from controller.ports import free_port

#: One worker kept active with no demand at all.
ALWAYS_ONE = {**RECOMMENDED_ENDPOINT, "min_load": 100, "cold_start_seconds": 0}


def reserve_body(emu, url: str, request_idx: int, duration) -> dict:
    auth = {"endpoint": "demo", "url": url, "cost": 100, "reqnum": request_idx, "request_idx": request_idx,
            "signature": emu.pool.signer.sign(url)}  # fmt: skip
    return {"auth_data": auth, "payload": {"duration": duration}}


async def test_reserve_flavor_holds_until_duration_release_or_disconnect():
    async with running_emulator(worker_flavor="reserve", **ALWAYS_ONE) as emu, sdk(emu) as client:
        endpoint = await client.get_endpoint("demo")
        result = await endpoint.request("/reserve", {"duration": 0.2})
        assert result["response"] == {"result": {"released": "duration_elapsed", "duration": 0.2}}
        (worker,) = [w for w in endpoint_state(await emu.state())["workers"] if w["url"] == result["url"]]
        url = worker["url"]

        held = asyncio.create_task(call("POST", f"{url}/reserve", reserve_body(emu, url, 901, 600)))
        await eventually(lambda: _held(emu, 901), 5, "the reservation to be held")
        status, _ = await call("POST", f"{url}/reserve", reserve_body(emu, url, 902, 1))
        assert status == 429, "one reservation holds the whole worker"
        assert await call("POST", f"{worker['control_url']}/release") == (200, {"released": 1})
        assert await held == (200, {"result": {"released": "release", "duration": 600}})

        dropped = asyncio.create_task(call("POST", f"{url}/reserve", reserve_body(emu, url, 903, 600)))
        await eventually(lambda: _held(emu, 903), 5, "the third reservation to be held")
        dropped.cancel()  # the client goes away: the hold ends
        await eventually(lambda: _freed(emu, 903), 5, "the worker to be free after the disconnect")
        status, body = await call("POST", f"{url}/reserve", reserve_body(emu, url, 904, "soon"))
        assert status == 422 and "duration" in body["payload"]
        log = [(e["event"], e["request_idx"]) for e in (await emu.state())["session_log"]]
        assert ("create", 901) in log and ("end", 901) in log and ("end", 903) in log


async def _held(emu, request_idx: int) -> bool:
    return any(request_idx in w["grants"] for w in endpoint_state(await emu.state())["workers"])


async def _freed(emu, request_idx: int) -> bool:
    return request_idx in endpoint_state(await emu.state())["deleted_request_idxs"]


async def test_a_full_endpoint_makes_a_second_session_wait_and_on_close_route_is_called():
    closed: list[dict] = []
    app = web.Application()

    async def on_close(request: web.Request) -> web.Response:
        closed.append(await request.json())
        return web.json_response({})

    app.router.add_post("/closed", on_close)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running_emulator(**RECOMMENDED_ENDPOINT, max_workers=1, cold_start_seconds=0.1) as emu, \
                sdk(emu) as client:  # fmt: skip
            endpoint = await client.get_endpoint("demo")
            session = await endpoint.session(
                cost=100, lifetime=60, timeout=30,
                on_close_route=f"http://127.0.0.1:{port}/closed", on_close_payload={"job": "j1"},
            )  # fmt: skip
            with pytest.raises(asyncio.TimeoutError):
                await endpoint.session(cost=100, lifetime=60, timeout=2.5)
            assert endpoint_state(await emu.state())["waiting"], "the second route is still counted as waiting"
            await session.close()
            assert closed == [{"job": "j1", "session_id": session.session_id}]
    finally:
        await runner.cleanup()


async def test_a_consumer_runs_beside_each_inprocess_worker_and_stops_with_it(tmp_path):
    report = tmp_path / "consumer.json"
    script = (
        "import json, os, time; keys = ('NULL_CONTROL_URL', 'VAST_WORKER_ID', 'QUEUE_URL'); "
        f"open({str(report)!r}, 'w').write(json.dumps({{'pid': os.getpid(), **{{k: os.environ[k] for k in keys}}}})); "
        "time.sleep(600)"
    )  # fmt: skip
    consumer = {"command": f"{sys.executable} -c \"{script}\"", "queue_url": "nats://q"}
    # inactivity_timeout 0: the worker stops as soon as its session ends.
    async with running_emulator(**{**RECOMMENDED_ENDPOINT, "inactivity_timeout": 0}, cold_start_seconds=0.2,
                                consumer=consumer) as emu, sdk(emu) as client:  # fmt: skip
        session = await (await client.get_endpoint("demo")).session(cost=100, lifetime=60, timeout=30)
        env = json.loads(await eventually(lambda: report.exists() and report.read_text(), 10, "the consumer"))
        (worker,) = endpoint_state(await emu.state())["workers"]
        assert (env["NULL_CONTROL_URL"], env["VAST_WORKER_ID"], env["QUEUE_URL"]) == (
            worker["control_url"], str(worker["id"]), "nats://q")  # fmt: skip
        assert await call("GET", f"{env['NULL_CONTROL_URL']}/health") == (200, {"ok": True})
        await session.close()
        await eventually(lambda: not _alive(env["pid"]), 10, "the consumer to stop with its idle worker")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
