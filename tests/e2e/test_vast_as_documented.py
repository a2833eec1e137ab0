"""The controller against Vast as documented (issue 14): refusals, rate limits, endpoint parameters."""

from __future__ import annotations

import asyncio
import signal
import time

from harness import API_KEY, EMULATOR_TIMINGS, count, metric_is, scaler_config, sessions, wait_for

from controller.emulator.testing import running_emulator
from controller.ledger import FileLedger

REFUSAL_SECONDS = 60
MAX_CONCURRENT_OPENS = 4


async def test_half_the_session_creates_refused_for_a_minute_ends_with_sessions_equal_to_work(
    emulator, queue, controllers
):
    config = scaler_config(emulator, queue.source_url, max_concurrent_opens=MAX_CONCURRENT_OPENS)
    controller = await controllers(config).start()
    await emulator.set_faults({"routes": {"session_create": {"errors": {"429": 0.5}}}, "seed": 3})
    started = time.monotonic()
    opening: list[float] = []
    for second in range(REFUSAL_SECONDS):  # the work changes under the fault: units come, some finish
        if second % 10 == 0:
            await queue.add(2)
        if second % 15 == 7:
            await queue.ack(*await queue.take("consumer"))
        opening.append(await controller.metric("vqs_sessions_opening", scaler="jobs"))
        await asyncio.sleep(max(0.0, started + second + 1 - time.monotonic()))
    assert await controller.metric("vqs_session_reroutes_total", scaler="jobs") > 0, "refusals were re-routed"
    await emulator.set_faults({"routes": {}})

    work = await _work(queue)
    assert work == 8  # 12 units came, 4 finished
    await wait_for(lambda: _sessions_are(emulator, controller, work), 30, what=f"{work} sessions")
    state = await emulator.state()
    ledger = FileLedger(controller.workdir / "state", "jobs").load()
    assert {s["session_id"] for s in await sessions(emulator)} == {r.session_id for r in ledger}, (
        "every session on the workers is the controller's, once")
    per_worker: dict[int, int] = {}
    for session in await sessions(emulator):
        per_worker[session["worker"]["id"]] = per_worker.get(session["worker"]["id"], 0) + 1
    assert set(per_worker.values()) == {1}
    # Bounded: never more opens under way than the work asked for, nor more calls at once than allowed.
    assert max(opening) <= 12
    assert state["peak_in_flight"]["session_create"] <= MAX_CONCURRENT_OPENS
    assert state["peak_in_flight"]["route"] <= MAX_CONCURRENT_OPENS
    assert controller.proc.returncode is None


async def _work(queue) -> int:
    (group,) = [g for g in await queue.client.xinfo_groups(queue.stream) if g["name"] == queue.group]
    return int(group["lag"] or 0) + int(group["pending"])


async def _sessions_are(emulator, controller, n: int) -> bool:
    return await count(emulator) == n and await metric_is(controller, "vqs_sessions_open", n)


async def test_endpoint_parameters_are_checked_once_at_start_and_again_on_sighup(queue, controllers):
    # A new Vast endpoint: nothing set in the console.
    async with running_emulator(api_key=API_KEY, cold_start_seconds=0.5) as emulator:
        controller = await controllers(scaler_config(emulator, queue.source_url)).start()
        await wait_for(lambda: metric_is_labelled(controller, "target_util", 1), 20, what="the mismatch metric")
        for parameter in ("min_load", "max_queue_time", "target_queue_time", "inactivity_timeout"):
            assert await metric_is_labelled(controller, parameter, 1), parameter
        controller.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: _reloaded(controller), 10, what="the reload")
        await asyncio.sleep(1)
        warnings = [line for line in controller.logs().splitlines() if "differ from what sessions-equal-work" in line]
        assert len(warnings) == 1, "said once, not again for the same parameters"
        (warning,) = warnings
        for text in ("target_util is 0.9 (recommended 1", "min_load is 1 (recommended 0",
                     "max_queue_time is 30 (recommended 1", "inactivity_timeout is unset (recommended 10"):  # fmt: skip
            assert text in warning, warning

    async with running_emulator(api_key=API_KEY, **EMULATOR_TIMINGS) as emulator:
        controller = await controllers(scaler_config(emulator, queue.source_url), name="recommended").start()
        await wait_for(lambda: metric_is_labelled(controller, "target_util", 0), 20, what="the metric at 0")
        assert "differ from what" not in controller.logs()


async def metric_is_labelled(controller, parameter: str, value: float) -> bool:
    metrics = await controller.metrics()
    key = ("vqs_endpoint_parameter_mismatch", (("parameter", parameter), ("scaler", "jobs")))
    return key in metrics and metrics[key] == value


async def _reloaded(controller) -> bool:
    return "config reloaded" in controller.logs()


async def test_a_rate_limited_web_api_delays_the_first_open_and_never_changes_a_session(queue, controllers):
    # One web API call a minute: the start's fetch passes, a second one within the minute is refused.
    limit = {"per_second": 1 / 60, "burst": 1}
    async with running_emulator(api_key=API_KEY, **EMULATOR_TIMINGS, web_api_rate_limit=limit) as emulator:
        controller = await controllers(scaler_config(emulator, queue.source_url)).start()
        await queue.add(2)
        await wait_for(lambda: _sessions_are(emulator, controller, 2), 30, what="2 sessions")
        # A reload reads the endpoint again: refused, and nothing else changes.
        controller.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: _cannot_read(controller), 30, what="the refused read logged")
        await asyncio.sleep(3)
        assert await _sessions_are(emulator, controller, 2)
        closed = await controller.metrics()
        assert sum(v for (name, _), v in closed.items() if name == "vqs_sessions_closed_total") == 0
        assert (await emulator.state())["requests"]["endptjobs"] >= 2


async def _cannot_read(controller) -> bool:
    return "cannot read the endpoint's parameters" in controller.logs()

