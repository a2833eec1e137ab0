"""One contract, both worker kinds: what the unchanged SDK sees of the emulator.

Each test runs against real null worker processes (`process`) and virtual in-process workers
(`inprocess`); they must be indistinguishable through the SDK and /_emulator/state.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import types

import aiohttp
import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from emulator_support import call, endpoint_state, max_concurrent_per_worker, sdk, workers_by_state
from support import eventually
from vastai.serverless.client import endpoint as sdk_endpoint_module

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator
from controller.vast import OPEN_SLACK_SECONDS, VastClient, VastError

FAST = {**RECOMMENDED_ENDPOINT, "cold_start_seconds": 0.5, "inactivity_timeout": 2.0, "inactive_destroy_seconds": 1.0}


@pytest.fixture(params=["inprocess", "process"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def log_events(state: dict, session_id: str) -> list[str]:
    return [e["event"] for e in state["session_log"] if e["session_id"] == session_id]


def deleted(state: dict) -> list[int]:
    return endpoint_state(state)["deleted_request_idxs"]


async def test_sessions_through_the_sdk(kind):
    async with running_emulator(workers=kind, **FAST) as emu, sdk(emu, max_poll_interval=1.0) as client:
        endpoint = await client.get_endpoint("demo")
        assert endpoint.api_key == emu.endpoint_key("demo")
        assert (endpoint.data.config.target_util, endpoint.data.config.inactivity_timeout) == (1.0, 2.0)
        assert endpoint_state(await emu.state())["workers"] == [], "no demand, no workers"

        session = await endpoint.session(cost=100, lifetime=30, timeout=30)  # waits for a cold worker
        auth = session.auth_data
        assert auth["url"] == session.url and auth["cost"] == 100 and len(session.session_id) == 13
        status, pem = await call("GET", f"{emu.url}/pubkey/")
        message = SHA256.new(b'{\n    "url": "' + session.url.encode() + b'"\n}')
        pkcs1_15.new(RSA.import_key(pem)).verify(message, base64.b64decode(auth["signature"]))

        info = await endpoint.get_session(session.session_id, auth)
        assert (info.expiration, info.lifetime, info.auth_data) == (session.expiration, 30, auth)
        for extensions in (1, 2):  # each request inside the session adds one lifetime, cumulatively
            result = await session.request("/ping", {})
            assert (result["status"], result["response"]) == (200, {"result": "pong"})
            info = await endpoint.get_session(session.session_id, auth)
            assert info.expiration == pytest.approx(session.expiration + 30 * extensions)
        assert (await endpoint.get_session(session.session_id, auth)).expiration == info.expiration, "get: no extension"

        (worker,) = await endpoint.get_workers()
        assert (worker.status, worker.cur_load, worker.reqs_working, worker.perf) == ("idle", 100, 1, 100)
        view = await eventually(lambda: _worker_with_session(emu, session.session_id), 5, "the session in state")
        assert view["url"] == session.url and view["sessions"][0]["request_idx"] == auth["request_idx"]

        # max_sessions=1: a second session goes to another (new) worker.
        second = await endpoint.session(cost=100, lifetime=30, timeout=30)
        assert second.url != session.url
        await session.close()
        assert not session.open
        with pytest.raises(Exception, match="session does not exist"):
            await endpoint.get_session(session.session_id, auth)

        # /release on the worker's control server ends its session from inside the instance.
        other = await eventually(lambda: _worker_with_session(emu, second.session_id), 5, "the second session")
        assert await call("POST", f"{other['control_url']}/release") == (200, {"released": 1})
        state = await eventually(
            lambda: _state_if(emu, lambda s: "release" in log_events(s, second.session_id)
                              and {auth["request_idx"], second.auth_data["request_idx"]} <= set(deleted(s))),
            10, "the release in the session log and both request_idxs in /delete_requests/",
        )  # fmt: skip
        assert log_events(state, session.session_id) == ["create", "end"]
        assert log_events(state, second.session_id) == ["create", "release"]
        assert set(max_concurrent_per_worker(state["session_log"]).values()) == {1}
        with pytest.raises(Exception, match="session does not exist"):
            await endpoint.get_session(second.session_id, second.auth_data)


async def test_sessions_expire_idle_workers_stop_and_scale_to_zero(kind):
    async with running_emulator(workers=kind, **FAST) as emu, sdk(emu, max_poll_interval=1.0) as client:
        endpoint = await client.get_endpoint("demo")
        session = await endpoint.session(cost=100, lifetime=1, timeout=30)
        # Expiry lands within one lifetime plus the 5 s GC period.
        state = await eventually(
            lambda: _state_if(emu, lambda s: "expire" in log_events(s, session.session_id)), 10, "expiry"
        )
        with pytest.raises(Exception, match="session does not exist"):
            await endpoint.get_session(session.session_id, session.auth_data)
        await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s) == {"stopped": 1}), 10, "idle stop")
        state = await eventually(
            lambda: _state_if(emu, lambda s: endpoint_state(s)["workers"] == []), 10, "scale to zero"
        )
        billing = endpoint_state(state)["billing"]
        assert billing["loading_seconds"] >= 0.5 and billing["ready_seconds"] >= 1.0
        assert 0 < billing["inactive_seconds"] < 5
        params = endpoint_state(state)["params"]
        expected = ((billing["ready_seconds"] + billing["loading_seconds"]) * params["price_per_hour"]
                    + billing["inactive_seconds"] * params["storage_price_per_hour"]) / 3600  # fmt: skip
        assert billing["cost"] == pytest.approx(expected)
        if kind == "process":
            assert emu.pool.kind.processes == {}, "a stopped worker's process is gone"


async def _state_if(emu, predicate) -> dict | None:
    state = await emu.state()
    return state if predicate(state) else None


async def _worker_with_session(emu, session_id: str) -> dict | None:
    for worker in endpoint_state(await emu.state())["workers"]:
        if any(s["session_id"] == session_id for s in worker["sessions"]):
            return worker
    return None


# -- Vast as documented (issue 14): each point, on both worker kinds ------------------------------


@contextlib.asynccontextmanager
async def controller_endpoint(emu, clock=None):
    """The controller's own adapter (controller/vast.py) on the emulator's `demo` endpoint."""
    client = VastClient(emu.api_key, webserver_url=emu.url, autoscaler_url=emu.url, **({"clock": clock} if clock else {}))
    try:
        yield client.endpoint("demo")
    finally:
        await client.close()


async def test_routing_knows_loads_not_max_sessions_so_a_full_worker_answers_429_and_the_sdk_reroutes(kind):
    # Vast's default max_queue_time (30 s) admits a second session on a busy worker; max_workers 1
    # leaves no other: every route is granted the full worker, which refuses it.
    async with running_emulator(workers=kind, **{**FAST, "max_queue_time": 30.0, "max_workers": 1}) as emu, \
            controller_endpoint(emu) as endpoint:  # fmt: skip
        first = await endpoint.open_session(cost=100, lifetime=30, timeout=30)
        reroutes = 0

        def rerouted() -> None:
            nonlocal reroutes
            reroutes += 1

        started = time.monotonic()
        with pytest.raises(VastError) as refused:
            await endpoint.open_session(cost=100, lifetime=30, timeout=4, rerouted=rerouted)
        assert refused.value.kind == "timeout" and time.monotonic() - started < 4 + OPEN_SLACK_SECONDS
        assert reroutes >= 1, "the SDK routed again after the worker's 429"
        state = await emu.state()
        assert [len(w["sessions"]) for w in endpoint_state(state)["workers"]] == [1]
        assert state["requests"]["route"] >= 2 + reroutes
        if kind == "inprocess":
            assert state["requests"]["session_create"] >= 1 + reroutes
        assert await endpoint.close_session(first)


async def test_placement_among_free_workers_is_random_and_seeded(kind):
    async def placements(seed: int) -> list[str]:
        # Three workers always active (min_load 300); each session opened and closed in turn.
        async with running_emulator(workers=kind, **{**FAST, "min_load": 300.0}, seed=seed) as emu, \
                controller_endpoint(emu) as endpoint:  # fmt: skip
            await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s) == {"idle": 3}), 30, "3 workers")
            order = {w["url"]: i for i, w in enumerate(endpoint_state(await emu.state())["workers"])}
            chosen = []
            for _ in range(6):
                session = await endpoint.open_session(cost=100, lifetime=30, timeout=30)
                chosen.append(order[session.worker_url])
                await endpoint.close_session(session)
            return chosen

    seeds = (1, 2) if kind == "process" else (1, 2, 3, 4)
    runs = {seed: await placements(seed) for seed in seeds}
    assert runs[1] == await placements(1), "the same seed, the same choices"
    assert len({tuple(r) for r in runs.values()}) > 1 and any(len(set(r)) > 1 for r in runs.values())


async def test_inactivity_timeout_is_the_endpoints_and_unset_never_scales_to_zero(kind):
    never = {k: v for k, v in FAST.items() if k != "inactivity_timeout"}
    async with running_emulator(workers=kind, **never) as emu, sdk(emu, max_poll_interval=1.0) as client:
        endpoint = await client.get_endpoint("demo")
        assert endpoint.data.config.inactivity_timeout is None
        session = await endpoint.session(cost=100, lifetime=30, timeout=30)
        await session.close()
        # The worker's session is gone, yet one worker stays active: unset never scales to zero.
        await asyncio.sleep(3)
        assert workers_by_state(await emu.state()) == {"idle": 1}
    async with running_emulator(workers=kind, **FAST) as emu, sdk(emu, max_poll_interval=1.0) as client:
        endpoint = await client.get_endpoint("demo")
        sessions = [await endpoint.session(cost=100, lifetime=30, timeout=30) for _ in range(2)]
        await sessions[0].close()
        # One session left: the endpoint is not idle, its timer does not run, the idle worker goes.
        await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s) == {"idle": 1, "stopped": 1}),
                         10, "the worker without a session to stop")  # fmt: skip
        await sessions[1].close()
        stopped = await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s).get("idle", 0) == 0),
                                   10, "scale to zero after inactivity_timeout")  # fmt: skip
        log = endpoint_state(stopped)["worker_log"]
        last_end = max(e["t"] for e in stopped["session_log"] if e["event"] == "end")
        last_stop = max(e["t"] for e in log if e["state"] == "stopped")
        assert last_stop - last_end >= FAST["inactivity_timeout"] - 0.2


async def test_a_resume_can_fail_and_a_new_worker_cold_starts(kind):
    settings = {**FAST, "inactivity_timeout": 0.0, "inactive_destroy_seconds": 600.0}
    async with running_emulator(workers=kind, **settings) as emu, sdk(emu, max_poll_interval=1.0) as client:
        endpoint = await client.get_endpoint("demo")
        first = await endpoint.session(cost=100, lifetime=30, timeout=30)
        await first.close()
        await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s) == {"stopped": 1}), 10, "a stop")
        await emu.set_faults({"resume_failure": 1.0})
        second = await endpoint.session(cost=100, lifetime=30, timeout=30)
        state = await emu.state()
        assert endpoint_state(state)["resume_failures"] == 1
        assert second.url != first.url, "not the stopped worker: it could not resume"
        states = [e["state"] for e in endpoint_state(state)["worker_log"]]
        assert "resume_failed" in states


async def test_a_crashed_worker_refuses_connections(kind):
    async with running_emulator(workers=kind, **FAST) as emu, controller_endpoint(emu) as endpoint:
        session = await endpoint.open_session(cost=100, lifetime=30, timeout=30)
        worker = await eventually(lambda: _worker_with_session(emu, session.session_id), 5, "the session")
        await emu.set_faults({"crash_worker": worker["id"]})
        for call_it in (endpoint.get_session, endpoint.keep_alive):
            with pytest.raises(VastError) as error:  # not SessionGone: nothing answers to say so
                await call_it(session)
            assert error.value.kind == "unavailable", error.value


async def test_the_web_api_is_rate_limited_without_retry_after(kind):
    limit = {"per_second": 0.05, "burst": 2}
    async with running_emulator(workers=kind, **FAST, web_api_rate_limit=limit) as emu:
        url = f"{emu.url}/api/v0/endptjobs/?api_key={emu.api_key}"
        answers = [await call_with_headers(url) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 429]
        assert answers[2][1] == {"success": False, "error": "API requests too frequent"}
        assert "Retry-After" not in answers[2][2]
        other_key = {"Authorization": "Bearer nope"}
        assert (await call("GET", f"{emu.url}/api/v0/endptjobs/", headers=other_key))[0] == 401, "per key"
        async with controller_endpoint(emu) as endpoint:
            with pytest.raises(VastError) as limited:
                await endpoint.parameters()
            assert limited.value.kind == "rate_limited"


async def test_waiting_has_vasts_shape_and_readiness_comes_with_a_report(kind):
    async with running_emulator(workers=kind, **{**FAST, "cold_start_seconds": 1.5}, report_interval=3.0) as emu:
        route = {"endpoint": "demo", "api_key": emu.endpoint_key(), "cost": 100, "request_idx": 0}
        status, waiting = await call("POST", f"{emu.url}/route/", route)
        assert status == 200 and set(waiting) == {"endpoint", "status", "__request_id"}, waiting
        assert waiting["endpoint"] == "demo" and isinstance(waiting["status"], str)
        (worker,) = (await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s).get("idle")),
                                      30, "the worker ready"))["endpoints"][0]["workers"]  # fmt: skip
        loaded_after = worker["loaded_at"] - worker["started_at"]
        if kind == "inprocess":  # loaded at 1.5 s; reports at 1 s, then every 3 s: seen at 4 s
            assert loaded_after == pytest.approx(4.0, abs=0.25)
        else:  # the library's own reports: the first comes a second after it starts
            assert loaded_after >= 1.5
    async with running_emulator(workers="inprocess", **{**FAST, "cold_start_seconds": 1.5}, report_interval=3.0,
                                lenient={"early_readiness": True, "waiting_request_idx": True}) as emu:  # fmt: skip
        status, waiting = await call("POST", f"{emu.url}/route/", route | {"api_key": emu.endpoint_key()})
        assert isinstance(waiting["request_idx"], int), "lenient: polls keep their place"
        (worker,) = (await eventually(lambda: _state_if(emu, lambda s: workers_by_state(s).get("idle")),
                                      30, "the worker ready"))["endpoints"][0]["workers"]  # fmt: skip
        assert worker["loaded_at"] - worker["started_at"] == pytest.approx(1.5, abs=0.25)


async def test_after_seven_days_routes_make_no_web_api_call(kind, monkeypatch):
    """The SDK's Endpoint never updates last_refresh; the controller renews it, at an offset clock."""
    async with running_emulator(workers=kind, **FAST) as emu:
        clock = emu.pool.clock  # the emulator's OffsetClock: the SDK and the controller share it
        monkeypatch.setattr(sdk_endpoint_module, "time", clock_module(clock))
        async with controller_endpoint(emu, clock=clock) as endpoint, sdk(emu) as raw:
            session = await endpoint.open_session(cost=100, lifetime=300, timeout=30)
            await endpoint.close_session(session)
            stale = await raw.get_endpoint("demo")  # an SDK Endpoint kept as it is, for comparison
            clock.offset += 7 * 24 * 3600
            before = (await emu.state())["requests"]
            for _ in range(3):
                session = await endpoint.open_session(cost=100, lifetime=300, timeout=30)
                await endpoint.close_session(session)
            after = (await emu.state())["requests"]
            web_api = sum(after.get(r, 0) - before.get(r, 0) for r in ("endptjobs", "endptjob"))
            assert web_api == 1, "one renewal of the endpoint, and no call per route"
            assert after["route"] - before["route"] >= 3
            for _ in range(3):  # what the SDK alone does at 7 days: a blocking fetch before each route
                await (await stale.session(cost=100, lifetime=300, timeout=30)).close()
            final = (await emu.state())["requests"]
            assert final["endptjob"] - after.get("endptjob", 0) == final["route"] - after["route"] >= 3


def clock_module(clock):
    """A stand-in for the `time` module whose time() is `clock`."""
    return types.SimpleNamespace(time=clock)


async def call_with_headers(url: str) -> tuple[int, object, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            return response.status, await response.json(), dict(response.headers)
