"""Every route refuses bad keys, unknown names and malformed bodies with the right 4xx and a JSON error."""

from __future__ import annotations

import aiohttp
import pytest
from emulator_support import call, endpoint_state
from support import eventually

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator

BAD_JSON = "{not json"
#: One worker kept active with no demand at all.
ALWAYS_ONE = {**RECOMMENDED_ENDPOINT, "min_load": 100, "cold_start_seconds": 0}


@pytest.fixture
async def emu():
    async with running_emulator(**ALWAYS_ONE) as running:
        await eventually(lambda: _ready(running), 5, "the cold worker")
        yield running


async def _ready(emu) -> bool:
    return [w["state"] for w in endpoint_state(await emu.state())["workers"]] == ["idle"]


async def open_session(emu) -> tuple[str, dict, str]:
    """Route and create a session with raw HTTP: (worker url, auth_data, session_id)."""
    key = emu.endpoint_key()
    status, auth = await call("POST", f"{emu.url}/route/", {"endpoint": "demo", "api_key": key, "cost": 100})
    assert status == 200 and "url" in auth, auth
    status, created = await call("POST", f"{auth['url']}/session/create",
                                 {"auth_data": auth, "payload": {"lifetime": 60}})  # fmt: skip
    assert status == 201, created
    return auth["url"], auth, created["session_id"]


def web_api_cases(emu) -> list[tuple]:
    account = {"Authorization": f"Bearer {emu.api_key}"}
    wrong = {"Authorization": "Bearer nope"}
    key = emu.endpoint_key()
    route = {"endpoint": "demo", "api_key": key, "cost": 100, "request_idx": 0}
    return [
        ("GET", "/api/v0/endptjobs/", None, None, {}, 401),
        ("GET", "/api/v0/endptjobs/", None, None, wrong, 401),
        ("GET", "/api/v0/endptjobs/?api_key=nope", None, None, account, 401),
        ("GET", "/api/v0/endptjobs/999/", None, None, account, 404),
        ("GET", "/api/v0/endptjobs/abc/", None, None, account, 404),
        ("GET", "/api/v0/endptjobs/1/", None, None, wrong, 401),
        ("POST", "/route/", None, BAD_JSON, {}, 422),
        ("POST", "/route/", [route], None, {}, 422),
        ("POST", "/route/", {**route, "endpoint": None}, None, {}, 422),
        ("POST", "/route/", {**route, "endpoint": "nope"}, None, {}, 404),
        ("POST", "/route/", {k: v for k, v in route.items() if k != "api_key"}, None, {}, 401),
        ("POST", "/route/", {**route, "api_key": "nope"}, None, {}, 401),
        ("POST", "/route/", route, None, wrong, 401),
        ("POST", "/route/", {**route, "cost": "lots"}, None, {}, 422),
        ("POST", "/route/", {**route, "cost": -1}, None, {}, 422),
        ("POST", "/route/", {**route, "request_idx": -3}, None, {}, 422),
        ("POST", "/route/", {**route, "request_idx": "7"}, None, {}, 422),
        ("POST", "/get_endpoint_workers/", None, BAD_JSON, {}, 422),
        ("POST", "/get_endpoint_workers/", {"api_key": emu.api_key}, None, {}, 422),
        ("POST", "/get_endpoint_workers/", {"id": 999, "api_key": emu.api_key}, None, {}, 404),
        ("POST", "/get_endpoint_workers/", {"id": 1, "api_key": "nope"}, None, {}, 401),
        ("POST", "/get_endpoint_workers/", {"id": 1}, None, {}, 401),
        ("POST", "/worker_status/", None, BAD_JSON, {}, 422),
        ("POST", "/worker_status/", {"id": "x"}, None, {}, 422),
        ("POST", "/worker_status/", {"id": 99999, "mtoken": "m", "loadtime": 1}, None, {}, 404),
        ("POST", "/delete_requests/", None, BAD_JSON, {}, 422),
        ("POST", "/delete_requests/", {"requests": []}, None, {}, 422),
        ("POST", "/delete_requests/", {"worker_id": 1, "requests": [{"idx": 1}]}, None, {}, 422),
        ("POST", "/delete_requests/", {"worker_id": 1, "request_idxs": ["a"]}, None, {}, 422),
        ("POST", "/delete_requests/", {"worker_id": 1}, None, {}, 422),
        ("POST", "/delete_requests/", {"worker_id": 99999, "request_idxs": [1]}, None, {}, 404),
        ("POST", "/delete_requests/", {"worker_id": 99999, "requests": [{"request_idx": 1}]}, None, {}, 404),
        ("POST", "/_emulator/worker_events/", {"worker_id": 1, "events": "x"}, None, {}, 422),
        ("POST", "/_emulator/worker_events/", {"worker_id": 99999, "events": []}, None, {}, 404),
        ("POST", "/_emulator/faults", {}, None, {}, 401),
        ("POST", "/_emulator/faults", {}, None, wrong, 401),
        ("POST", "/_emulator/faults", None, BAD_JSON, account, 422),
        ("POST", "/_emulator/faults", {"routes": {"nope": {}}}, None, account, 422),
        ("POST", "/_emulator/faults", {"routes": {"route": {"errors": {"200": 1}}}}, None, account, 422),
        ("POST", "/_emulator/faults", {"crash_worker": 99999}, None, account, 404),
        ("POST", "/_emulator/faults", {"crash_worker": "random", "endpoint": "nope"}, None, account, 404),
        ("POST", "/_emulator/faults", {"surprise": 1}, None, account, 422),
        ("GET", "/no/such/route", None, None, {}, 404),
        ("DELETE", "/route/", None, None, {}, 405),
    ]


async def test_web_api_autoscaler_and_report_routes_refuse_bad_input(emu):
    for method, path, body, raw, headers, expected in web_api_cases(emu):
        status, answer = await call(method, emu.url + path, body, raw=raw, headers=headers)
        assert status == expected, (method, path, body, raw, answer)
        assert isinstance(answer, dict) and answer.get("error"), (method, path, answer)


async def test_worker_routes_answer_as_the_worker_library_does(emu):
    url, auth, session_id = await open_session(emu)
    good_end = {"session_id": session_id, "session_auth": auth}
    cases = [
        (f"{url}/session/create", None, BAD_JSON, 422),
        (f"{url}/session/create", {"payload": {}}, None, 422),
        (f"{url}/session/create", {"auth_data": auth}, None, 422),
        (f"{url}/session/create", {"auth_data": auth, "payload": {"lifetime": "long"}}, None, 422),
        (f"{url}/session/end", None, BAD_JSON, 422),
        (f"{url}/session/end", {"session_auth": auth}, None, 422),
        (f"{url}/session/end", {"session_id": "nope", "session_auth": auth}, None, 400),
        (f"{url}/session/end", {"session_id": session_id, "session_auth": {**auth, "reqnum": -1}}, None, 401),
        (f"{url}/session/end", {"session_id": session_id}, None, 401),
        (f"{url}/session/get", {}, None, 422),
        (f"{url}/session/get", {"session_id": "nope", "session_auth": auth}, None, 400),
        (f"{url}/session/get", {"session_id": session_id, "session_auth": {}}, None, 401),
        (f"{url}/session/health", [1], None, 422),
        (f"{url}/session/health", {"session_id": session_id, "session_auth": None}, None, 401),
        (f"{url}/ping", None, BAD_JSON, 422),
        (f"{url}/ping", {"payload": {}}, None, 422),
        (f"{url}/ping", {"auth_data": {"url": url}, "payload": {}}, None, 422),
        (f"{url}/ping", {"auth_data": auth, "payload": [1]}, None, 422),
        (f"{url}/ping", {"auth_data": auth, "payload": {}, "session_id": "gone"}, None, 410),
        (f"{url}/ping", {"auth_data": {**auth, "signature": "Zm9v"}, "payload": {}}, None, 401),
    ]
    for target, body, raw, expected in cases:
        status, answer = await call("POST", target, body, raw=raw)
        assert status == expected, (target, body, raw, answer)
        assert isinstance(answer, dict) and answer, (target, answer)
    assert await call("POST", f"{url}/session/create", {"auth_data": auth, "payload": {"lifetime": 60}}) == (
        429, None), "full: 429 with no body, as the library answers"  # fmt: skip
    assert await call("POST", f"{url}/session/health", {"session_id": "nope", "session_auth": auth}) == (
        200, {"ok": False})  # fmt: skip
    assert await call("POST", f"{url}/session/health", good_end) == (200, {"ok": True})
    assert (await call("POST", f"{url}/ping", {"auth_data": auth, "payload": {}}))[0] == 200
    assert await call("POST", f"{url}/session/end", good_end) == (200, {"ended": True, "removed_session": session_id})
    assert (await call("POST", f"{url}/session/end", good_end))[0] == 400, "ended: it does not exist any more"


async def test_a_worker_that_is_not_running_refuses_and_endpoints_list_with_their_keys(emu):
    # A cold worker boots and stops: at its address, nothing answers any more.
    cold = {**RECOMMENDED_ENDPOINT, "cold_workers": 1, "cold_start_seconds": 0}
    for lenient, expected in (({}, None), ({"gone_worker_answers": True}, 503)):
        async with running_emulator(**cold, lenient=lenient) as idle:
            stopped = await eventually(lambda: _stopped(idle), 5, "the cold worker to stop")
            for route in ("/session/create", "/session/get", "/control/release"):
                if expected is None:
                    with pytest.raises(aiohttp.ServerDisconnectedError):
                        await call("POST", f"{stopped['url']}{route}", {"auth_data": {}, "payload": {}})
                else:
                    status, answer = await call("POST", f"{stopped['url']}{route}", {"auth_data": {}, "payload": {}})
                    assert status == 503 and "not running" in answer["error"]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call("POST", f"{emu.url}/workers/99999/session/create", {"auth_data": {}, "payload": {}})
    status, listing = await call("GET", f"{emu.url}/api/v0/endptjobs/?client_id=me&api_key={emu.api_key}")
    assert status == 200 and listing["success"] is True
    (endpoint,) = listing["results"]
    assert endpoint["endpoint_name"] == "demo" and endpoint["api_key"] == emu.endpoint_key()
    assert {k: endpoint[k] for k in ("target_util", "min_load", "max_queue_time", "target_queue_time")} == {
        "target_util": 1.0, "min_load": 100.0, "max_queue_time": 1.0, "target_queue_time": 0.5}  # fmt: skip
    status, one = await call("GET", f"{emu.url}/api/v0/endptjobs/{endpoint['id']}/",
                             headers={"Authorization": f"Bearer {emu.api_key}"})  # fmt: skip
    assert status == 200 and one["result"] == endpoint


async def _stopped(emu) -> dict | None:
    workers = endpoint_state(await emu.state())["workers"]
    return workers[0] if workers and workers[0]["state"] == "stopped" else None
