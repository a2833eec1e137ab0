"""`vast-queue-scaler run` end to end: a real controller process, the emulator, real Redis."""

from __future__ import annotations

import asyncio
import signal

import pytest
from harness import (
    assert_no_secrets,
    count,
    creates,
    metric_is,
    no_sessions,
    none_left,
    release,
    scaler_config,
    sessions,
    wait_for,
)
from support import free_port

from controller.ledger import FileLedger


async def test_one_message_wakes_the_scaler_and_a_release_ends_its_session(emulator, queue, controllers):
    controller = await controllers(scaler_config(emulator, queue.source_url)).start()
    assert await count(emulator) == 0

    await queue.add(1)
    (session,) = await wait_for(lambda: sessions(emulator), 20, what="one session")
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 1), 10, what="controller to count it")

    (entry,) = await queue.take("worker-1")
    await queue.ack(entry)
    await release(session["worker"])
    await wait_for(lambda: no_sessions(emulator), 10, what="the session to end")
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 0), 10, what="controller to see it")
    assert await controller.metric("vqs_sessions_closed_total", scaler="jobs", reason="released") == 1
    assert await controller.metric("vqs_sessions_opened_total", scaler="jobs") == 1
    for path in ("/metrics", "/status", "/decisions"):
        assert_no_secrets((await controller.get(path))[1], where=path)












async def test_callback_reports_a_release_within_one_poll(emulator, queue, controllers):
    port = free_port()
    config = scaler_config(emulator, queue.source_url, callback_url=f"http://127.0.0.1:{port}")
    controller = await controllers({**config, "metrics_port": port}).start()
    await queue.add(1)
    (session,) = await wait_for(lambda: sessions(emulator), 20, what="one session")
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 1), 10, what="controller to count it")
    await queue.ack(*await queue.take("worker-1"))
    await release(session["worker"])
    # Polling would take lease / 2 = 5 s; the callback makes it one poll interval (0.5 s) or so.
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 0), 2, what="the callback")
    assert await controller.metric("vqs_sessions_closed_total", scaler="jobs", reason="released") == 1


async def test_kill9_leaves_nothing_reserved_and_a_restart_readopts(emulator, queue, controllers):
    config = scaler_config(emulator, queue.source_url)
    first = await controllers(config, "first").start()
    await queue.add(5)
    await wait_for(lambda: metric_is(first, "vqs_sessions_open", 5), 20, what="5 open sessions")
    first.kill9()
    await first.proc.wait()
    assert await count(emulator) == 5

    second = await controllers(dict(first.config), "second").start()
    await wait_for(lambda: metric_is(second, "vqs_sessions_adopted_total", 5), 10, what="re-adoption")
    await asyncio.sleep(3)  # several polls: the adopted sessions already cover the queue
    assert await creates(emulator) == 5
    assert await second.metric("vqs_sessions_opened_total", scaler="jobs") == 0
    assert await count(emulator) == 5

    second.kill9()
    await second.proc.wait()
    lease = config["scalers"][0]["session"]["lease_seconds"]
    # A lease is renewed only once less than half remains, so at most 1.5 leases are left, plus
    # the worker's 5 s expiry sweep.
    await wait_for(lambda: none_left(emulator), 1.5 * lease + 5 + 1, what="every lease to run out")




@pytest.mark.parametrize("on_shutdown", ["release", "keep"])
async def test_sigterm(emulator, queue, controllers, on_shutdown):
    controller = await controllers(scaler_config(emulator, queue.source_url, on_shutdown=on_shutdown)).start()
    await queue.add(2)
    await wait_for(lambda: metric_is(controller, "vqs_sessions_open", 2), 20, what="2 open sessions")
    code, seconds = await controller.stop(signal.SIGTERM)
    assert code == 0 and seconds < 15
    expected = 0 if on_shutdown == "release" else 2
    assert await count(emulator) == expected
    assert len(FileLedger(controller.config["state_dir"], "jobs").load()) == expected
