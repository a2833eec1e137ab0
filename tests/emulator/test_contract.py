"""One contract, both worker kinds: what the unchanged SDK sees of the emulator.

Each test runs against real null worker processes (`process`) and virtual in-process workers
(`inprocess`); they must be indistinguishable through the SDK and /_emulator/state.
"""

from __future__ import annotations

import base64

import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from emulator_support import call, endpoint_state, max_concurrent_per_worker, sdk, workers_by_state
from support import eventually

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator

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
