"""Readiness tells the truth: a refused API key or a missing endpoint stops `run` at start (exit 2,
one line); met later, it turns /readyz not-ready with the reason, is counted, and is said once."""

from __future__ import annotations

import asyncio
import json

import pytest
from harness import metric_is, scaler_config, wait_for


def _log(controller) -> list[dict]:
    return [json.loads(line) for line in controller.logs().splitlines() if line.startswith("{")]


def _lines(controller, words: str) -> list[dict]:
    return [line for line in _log(controller) if words in line["msg"]]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"vast": "wrong-key"}, "Vast refused the API key (HTTP 401): check VAST_API_KEY"),
        ({"endpoint": "does-not-exist"}, "no Vast endpoint named 'does-not-exist' in this account"),
    ],
)
async def test_a_refused_key_or_a_missing_endpoint_stops_run_at_start(emulator, queue, controllers, change, said):
    config = scaler_config(emulator, queue.source_url)
    if "vast" in change:
        config["vast"]["api_key"] = change["vast"]
    else:
        config["scalers"][0]["endpoint"] = change["endpoint"]
    controller = controllers(config)
    process = await controller.launch()
    assert await asyncio.wait_for(process.wait(), 30) == 2
    assert [line["msg"] for line in _log(controller) if line["level"] == "error"] == [f"cannot start: {said}"]


async def test_a_key_refused_later_turns_readyz_not_ready_once_until_it_is_accepted(emulator, queue, controllers):
    controller = await controllers(scaler_config(emulator, queue.source_url)).start()
    await wait_for(lambda: _ready(controller), 20, what="ready")
    await emulator.set_faults({"routes": {"route": {"errors": {"401": 1.0}}}})
    await queue.add(1)
    await wait_for(lambda: _refusals(controller, 3), 30, what="three refused opens")
    status, body = await controller.get("/readyz")
    assert status == 503
    details = json.loads(body)
    assert details["not_ready"] == ["jobs"] and "HTTP 401" in details["vast"]["jobs"]
    assert len(_lines(controller, "Vast refuses this endpoint's calls")) == 1, "said once, not per retry"

    await emulator.set_faults({"routes": {}})
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 1), 90, what="the session once accepted")
    await wait_for(lambda: _ready(controller), 10, what="ready again")
    assert len(_lines(controller, "Vast accepts this endpoint's calls again")) == 1


async def test_an_endpoint_deleted_later_turns_readyz_not_ready_until_it_is_back(emulator, queue, controllers):
    controller = await controllers(scaler_config(emulator, queue.source_url)).start()
    await wait_for(lambda: _ready(controller), 20, what="ready")
    await emulator.set_faults({"deleted_endpoints": ["demo"]})
    await queue.add(1)  # the open's route answers 404, and the endpoint is listed again: gone
    await wait_for(lambda: _missing(controller), 30, what="the missing endpoint counted")
    status, body = await controller.get("/readyz")
    assert status == 503
    details = json.loads(body)
    assert details["not_ready"] == ["jobs"] and details["vast"]["jobs"] == "Vast endpoint 'demo' does not exist"
    assert len(_lines(controller, "Vast refuses this endpoint's calls")) == 1, "said once, not per retry"

    await emulator.set_faults({"deleted_endpoints": []})
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 1), 120, what="the session once it is back")
    await wait_for(lambda: _ready(controller), 10, what="ready again")
    assert len(_lines(controller, "Vast accepts this endpoint's calls again")) == 1


async def _missing(controller) -> bool:
    return await controller.metric("vqs_vast_errors_total", scaler="jobs", op="open", reason="no_endpoint") >= 1


async def _ready(controller) -> bool:
    return (await controller.get("/readyz"))[0] == 200


async def _refusals(controller, n: int) -> bool:
    return await controller.metric("vqs_vast_errors_total", scaler="jobs", op="open", reason="http_401") >= n
