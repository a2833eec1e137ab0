"""Injected faults: route latency, errors and hangs; worker crashes; cold starts that never finish."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest
from emulator_support import call, endpoint_state, sdk
from support import eventually

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator


async def test_route_faults_add_latency_errors_and_hangs_until_cleared():
    async with running_emulator() as emu:
        await emu.set_faults({"routes": {"endptjobs": {"latency": 0.3}, "pubkey": {"hang": 1, "hang_seconds": 0.2}}})
        started = time.monotonic()
        status, _ = await call("GET", f"{emu.url}/api/v0/endptjobs/?api_key={emu.api_key}")
        assert status == 200 and time.monotonic() - started >= 0.3
        assert await call("GET", f"{emu.url}/pubkey/") == (504, {"error": "injected fault: hang"})

        await emu.set_faults({"routes": {"*": {"errors": {"503": 1.0}}}})
        assert (await call("GET", f"{emu.url}/pubkey/"))[0] == 503
        assert (await call("GET", f"{emu.url}/_emulator/state"))[0] == 200, "/_emulator is never faulted"
        assert (await call("GET", f"{emu.url}/_emulator/faults"))[1]["faults"]["routes"]["*"]["errors"] == {"503": 1.0}

        await emu.set_faults({"routes": {}})
        assert (await call("GET", f"{emu.url}/pubkey/"))[0] == 200


async def test_a_429_from_route_fails_the_sdk_session_at_once_and_faults_load_from_config():
    faults = {"routes": {"route": {"errors": {"429": 1.0}}}}
    async with running_emulator(faults=faults) as emu, sdk(emu) as client:
        endpoint = await client.get_endpoint("demo")
        started = time.monotonic()
        with pytest.raises(Exception, match="HTTP 429"):
            await endpoint.session(cost=100, lifetime=10, timeout=30)
        assert time.monotonic() - started < 2, "no retry inside the SDK"
        await emu.set_faults({"routes": {"route": {"errors": {"500": 0.5, "429": 0.5}}, "session_create": {}},
                              "seed": 7})  # fmt: skip
        statuses = {(await call("POST", f"{emu.url}/route/", {"endpoint": "demo", "api_key": emu.api_key}))[0]
                    for _ in range(20)}  # fmt: skip
        assert statuses == {429, 500}


async def test_a_deleted_endpoint_is_neither_listed_nor_routed_until_restored():
    async with running_emulator() as emu:
        listing = f"{emu.url}/api/v0/endptjobs/?api_key={emu.api_key}"
        (endpoint,) = (await call("GET", listing))[1]["results"]
        one = f"{emu.url}/api/v0/endptjobs/{endpoint['id']}/?api_key={emu.api_key}"
        route = ("POST", f"{emu.url}/route/", {"endpoint": "demo", "api_key": emu.api_key})
        assert (await call(*route))[0] == 200

        await emu.set_faults({"deleted_endpoints": ["demo"]})
        assert (await call("GET", listing))[1]["results"] == []
        assert (await call("GET", one))[0] == 404
        assert await call(*route) == (404, {"success": False, "error": "endpoint 'demo' not found"})

        await emu.set_faults({"deleted_endpoints": []})
        assert [e["endpoint_name"] for e in (await call("GET", listing))[1]["results"]] == ["demo"]
        assert (await call(*route))[0] == 200


async def test_a_crashed_worker_loses_its_session_and_the_next_session_gets_another_worker():
    async with running_emulator(**RECOMMENDED_ENDPOINT, cold_start_seconds=0.2) as emu, \
            sdk(emu, max_poll_interval=1.0) as client:  # fmt: skip
        endpoint = await client.get_endpoint("demo")
        session = await endpoint.session(cost=100, lifetime=60, timeout=30)
        worker_id = int(session.url.rsplit("/", 1)[1])
        answer = await emu.set_faults({"crash_worker": worker_id})
        assert answer["crashed"] == [worker_id]
        state = await emu.state()
        # Only the crashed one: on a loaded machine the route may wait long enough for the
        # endpoint to start a second worker.
        (worker,) = [w for w in endpoint_state(state)["workers"] if w["id"] == worker_id]
        assert (worker["state"], worker["sessions"]) == ("error", [])
        assert state["session_log"][-1]["event"] == "end" and state["session_log"][-1]["reason"] == "crash"
        with pytest.raises(Exception):  # noqa: B017 (the SDK raises a bare Exception)
            await endpoint.get_session(session.session_id, session.auth_data)
        again = await endpoint.session(cost=100, lifetime=60, timeout=30)
        assert again.url != session.url
        running = {w["id"] for w in endpoint_state(await emu.state())["workers"] if w["state"] not in ("error", "stopped")}
        assert int(again.url.rsplit("/", 1)[1]) in running
        (crashed,) = (await emu.set_faults({"crash_worker": "random", "endpoint": "demo"}))["crashed"]
        assert crashed in running


async def test_a_cold_start_that_never_finishes():
    async with running_emulator(**RECOMMENDED_ENDPOINT, cold_start_seconds=0.1) as emu, \
            sdk(emu, max_poll_interval=1.0) as client:  # fmt: skip
        await emu.set_faults({"stuck_cold_starts": 1})
        endpoint = await client.get_endpoint("demo")
        with pytest.raises(asyncio.TimeoutError):
            await endpoint.session(cost=100, lifetime=10, timeout=3)
        state = await emu.state()
        assert [w["state"] for w in endpoint_state(state)["workers"]] == ["loading"]
        assert state["faults"]["stuck_cold_starts"] == 0, "one stuck start, used up"


async def test_a_process_worker_crash_kills_it_and_its_consumer(tmp_path):
    report = tmp_path / "consumer.json"
    script = (
        "import json, os, time; "
        "keys = ('NULL_CONTROL_PORT', 'NULL_CONTROL_URL', 'VAST_WORKER_ID', 'QUEUE_URL', 'EXTRA'); "
        f"open({str(report)!r}, 'w').write(json.dumps({{'pid': os.getpid(), **{{k: os.environ[k] for k in keys}}}})); "
        "time.sleep(600)"
    )  # fmt: skip
    consumer = {"command": f"{sys.executable} -c \"{script}\"", "env": {"EXTRA": "1"}, "queue_url": "redis://q"}
    always_one = {**RECOMMENDED_ENDPOINT, "min_load": 100}
    async with running_emulator(workers="process", **always_one, cold_start_seconds=0, consumer=consumer) as emu:
        seen = await eventually(lambda: report.exists() and report.read_text(), 20, "the consumer to start")
        env = json.loads(seen)
        (worker,) = endpoint_state(await emu.state())["workers"]
        assert env["NULL_CONTROL_URL"] == worker["control_url"] == f"http://127.0.0.1:{env['NULL_CONTROL_PORT']}"
        assert (env["VAST_WORKER_ID"], env["QUEUE_URL"], env["EXTRA"]) == (str(worker["id"]), "redis://q", "1")
        await eventually(lambda: _state_of(emu, worker["id"], "idle"), 20, "the worker to be ready")
        # The older /delete_requests/ body shape is accepted too; a wrong mtoken is not.
        mtoken = f"emulator-{worker['id']}"
        older = {"worker_id": worker["id"], "mtoken": mtoken, "request_idxs": [4242], "success": True}
        assert (await call("POST", f"{emu.url}/delete_requests/", older))[0] == 200
        assert 4242 in endpoint_state(await emu.state())["deleted_request_idxs"]
        assert (await call("POST", f"{emu.url}/worker_status/", {"id": worker["id"], "mtoken": "x"}))[0] == 401
        process = emu.pool.kind.processes[worker["id"]]
        assert (await emu.set_faults({"crash_worker": worker["id"]}))["crashed"] == [worker["id"]]
        await eventually(lambda: not process.running, 10, "the worker process to die")
        await eventually(lambda: not _alive(env["pid"]), 10, "the consumer to die")
        assert await _state_of(emu, worker["id"], "error")


async def _state_of(emu, worker_id: int, wanted: str) -> bool:
    return any(w["id"] == worker_id and w["state"] == wanted for w in endpoint_state(await emu.state())["workers"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
