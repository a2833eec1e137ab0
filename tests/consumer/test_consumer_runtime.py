"""Leases, progress, cancellation, /health and /metrics, with real `vqs-consumer` processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
import pytest
from consumer_support import LEASE, job
from support import eventually, free_port


async def test_heartbeats_keep_a_long_unit_on_its_worker(queue, workers, control):
    """A unit three leases long is never taken over by the idle worker beside it."""
    unit = job(slow_on="first", slow_seconds=3 * LEASE)
    await queue.put(unit)
    first = await workers(queue, "first")
    await eventually(lambda: _in_flight(queue), 20, what="the unit in flight")
    await workers(queue, "second")
    result = await queue.result_for(unit["id"], timeout=10 * LEASE)
    assert (result["worker"], result["attempt"]) == ("first", 1), first.output()
    await queue.drained()
    assert [r["id"] for r in await queue.results()] == [unit["id"]]
    assert "lease lost" not in first.output()


async def test_progress_events_are_published(redis_stream, redis_client, workers):
    channel = f"{redis_stream.source}:progress"
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(channel)
    unit = job(seconds=0.2)
    await redis_stream.put(unit)
    await workers(redis_stream, "only", "--progress", channel)

    async def event() -> dict | None:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        return json.loads(message["data"]) if message else None

    received = await eventually(event, 20, what="a progress event")
    assert (received["id"], received["worker"], received["progress"], received["message"]) == (unit["id"], "only", 0.0, "started")
    await pubsub.aclose()


async def test_a_redis_cancel_key_reaches_the_handler(redis_stream, redis_client, workers, control):
    unit = job(slow_on="only", slow_seconds=60)
    await redis_stream.put(unit)
    worker = await workers(redis_stream, "only")
    await eventually(lambda: _in_flight(redis_stream), 20, what="the unit in flight")
    stream = redis_stream.source.split("stream=")[1].split("&")[0]
    await redis_client.set(f"{stream}:cancel:{unit['id']}", "1", ex=60)
    result = await redis_stream.result_for(unit["id"], timeout=10)
    assert result["status"] == "cancelled", worker.output()
    await redis_stream.drained()
    await eventually(lambda: len(control.releases) == 1, 10, what="the release after the cancelled unit")


async def test_a_nats_cancel_message_reaches_the_handler(nats_queue, nats_url, workers):
    import nats

    unit = job(slow_on="only", slow_seconds=60)
    await nats_queue.put(unit)
    subject = f"cancel.{unit['id']}"
    worker = await workers(nats_queue, "only", "--cancel", subject)
    await eventually(lambda: _in_flight(nats_queue), 20, what="the unit in flight")
    nc = await nats.connect(nats_url)
    await nc.publish(subject, unit["id"].encode())
    await nc.flush()
    result = await nats_queue.result_for(unit["id"], timeout=10)
    await nc.close()
    assert result["status"] == "cancelled", worker.output()
    await nats_queue.drained()


async def test_health_fails_while_the_loop_is_stuck_and_metrics_count_units(redis_stream, workers):
    port = free_port()
    done = job(seconds=0)
    await redis_stream.put(done)
    await workers(redis_stream, "only", "--health-port", str(port), "--stuck-after", "1", target="block_loop")
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

        async def get(path: str) -> tuple[int, str] | None:
            try:
                async with http.get(url + path) as response:
                    return response.status, await response.text()
            except aiohttp.ClientConnectionError:
                return None  # not listening yet

        # The first health check is the worker saying it is ready: units are taken only after it.
        assert (await eventually(lambda: get("/health"), 20, what="/health"))[0] == 200
        await redis_stream.result_for(done["id"])
        metrics = (await get("/metrics"))[1]
        assert 'vqs_consumer_units_total{outcome="done"} 1.0' in metrics
        assert "vqs_consumer_unit_seconds_count 1.0" in metrics

        await redis_stream.put(job(seconds=4))  # blocks the event loop itself for 4 s
        status, body = await eventually(lambda: _status_is(get, 503), 20, what="/health failing")
        assert json.loads(body)["state"] == "working"
        await eventually(lambda: _status_is(get, 200), 20, what="/health passing again")


async def _status_is(get, status: int) -> tuple[int, str] | None:
    reply = await get("/health")
    return reply if reply and reply[0] == status else None


async def _in_flight(queue) -> bool:
    return (await queue.depth())[1] == 1


async def test_a_result_that_is_not_json_data_is_dead_lettered(redis_stream, workers):
    unit = job()
    await redis_stream.put(unit)
    worker = await workers(redis_stream, "only", target="bad_result")
    result = await redis_stream.result_for(unit["id"])
    assert result["status"] == "failed", worker.output()
    assert result["error"].startswith("the handler's result is not JSON data: PydanticSerializationError")
    assert [d["id"] for d in await redis_stream.read_dead()] == [unit["id"]]
    await redis_stream.drained()


async def test_the_release_never_goes_through_a_proxy_from_the_environment(redis_list, workers, control):
    """Instances may set an HTTP proxy; the null worker's control server is on 127.0.0.1 all the same."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    unit = job()
    await redis_list.put(unit)
    proxied = {"http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "no_proxy": "", "NO_PROXY": ""}
    worker = await workers(redis_list, "only", env=proxied)
    await redis_list.result_for(unit["id"])
    await eventually(lambda: len(control.releases) == 1, 10, what=f"the release\n{worker.output()}")


async def test_a_unit_delivered_more_than_max_attempts_is_dead_lettered_unrun(redis_stream, redis_client, workers):
    """A unit whose workers keep dying on it (here: delivered 5 times to a consumer that is gone)."""
    unit = job(slow_on="only", slow_seconds=60)
    await redis_stream.put(unit)
    stream = redis_stream.source.split("stream=")[1].split("&")[0]
    ((_, [(entry_id, _)]),) = await redis_client.xreadgroup("workers", "gone", {stream: ">"}, count=1)
    await redis_client.xclaim(stream, "workers", "gone", 0, [entry_id], idle=60_000, retrycount=5, justid=True)
    worker = await workers(redis_stream, "only", "--max-attempts", "5")
    result = await redis_stream.result_for(unit["id"])
    assert (result["status"], result["attempt"]) == ("failed", 6), worker.output()
    assert result["error"] == "delivered 6 times, more than max_attempts 5"
    assert result["finished_at"] - result["started_at"] < 5  # never ran its 60 s
    await redis_stream.drained()


async def test_a_restarted_worker_first_takes_back_what_its_previous_run_held(redis_list, redis_client, workers):
    unit = job()
    await redis_list.put(unit)
    key = redis_list.source.split("list=")[1].split("&")[0]
    await redis_client.lmove(key, f"{key}:processing:only", "RIGHT", "LEFT")  # taken by a run that died
    worker = await workers(redis_list, "only")
    result = await redis_list.result_for(unit["id"])
    assert (result["status"], result["attempt"]) == ("done", 2), worker.output()
    await redis_list.drained()


@pytest.mark.parametrize("backlog", [False, True])
async def test_a_unit_that_arrives_with_the_stop_goes_back_first_in_line(redis_stream, backlog):
    """Taken by a worker already stopping, never started: the next worker takes it before newer units.

    Nothing else waiting: it is waiting work again (a blocked reader gets it at once). A backlog
    behind it: it stays claimable ahead of the backlog.
    """
    from vqs_consumer import Runner, Settings
    from vqs_consumer.queues import QueueOptions, from_url

    first, later = job(), job()
    await redis_stream.put(first)
    settings = Settings(
        source=redis_stream.source, name="stopping", control_port=0, health_port=0, lease=LEASE, ready_settle=0
    )
    runner = Runner(settings, lambda job: pytest.fail("a unit that arrived with the stop must not run"))
    take = runner.queue.take

    async def take_then_stop(wait: float):
        delivery = await take(wait)
        if delivery is not None:
            if backlog:
                await redis_stream.put(later)  # queued while the stopping worker held the first
            runner.stop()
        return delivery

    runner.queue.take = take_then_stop
    await asyncio.wait_for(runner.run(), 30)
    assert await redis_stream.depth() == ((1, 1) if backlog else (1, 0))

    queue = from_url(redis_stream.source, QueueOptions(name="next", lease=LEASE))
    try:
        delivery = await queue.take(0)
        assert (delivery.body["id"], delivery.attempt) == (first["id"], 1)
    finally:
        await queue.close()


async def test_the_first_unit_waits_for_the_workers_first_health_check_then_ready_settle(redis_stream, workers):
    """Vast stops a worker that booted only as spare capacity soon after it is ready: no unit before then."""
    port = free_port()
    unit = job()
    await redis_stream.put(unit)
    worker = await workers(redis_stream, "only", "--health-port", str(port), "--ready-settle", "1.5")
    await eventually(lambda: "waiting for the worker's first health check" in worker.output(), 20, what="the wait")
    assert await redis_stream.depth() == (1, 0)  # the queue is open, the unit untouched
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        checked_at = time.time()
        async with http.get(f"http://127.0.0.1:{port}/health") as response:
            assert response.status == 200  # waiting is healthy
            assert (await response.json())["state"] in ("waiting for the worker", "settling")
    result = await redis_stream.result_for(unit["id"])
    assert result["started_at"] - checked_at >= 1.5, worker.output()


async def test_after_a_release_no_unit_is_taken_for_release_settle(redis_stream, workers, control):
    """Vast stops a worker it sees without a session when it has more than sessions need: let it happen idle."""
    first, second = job(), job()
    await redis_stream.put(first)
    worker = await workers(redis_stream, "only", "--release-settle", "1.5")
    await redis_stream.result_for(first["id"])
    await eventually(lambda: control.releases, 10, what="the release")
    await redis_stream.put(second)
    result = await redis_stream.result_for(second["id"])
    assert result["started_at"] - control.releases[0] >= 1.5 - 0.05, worker.output()


async def test_health_is_served_while_the_handler_still_imports(tmp_path):
    """The worker library checks /health once ready; a handler loading a model must not make it miss."""
    slow = tmp_path / "slow_handler.py"
    slow.write_text("import time\ntime.sleep(60)\n\ndef work(job):\n    pass\n")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vqs_consumer", "run", f"{slow}:work", "--health-port", str(port), "--control-port", "0",
        "--source", "redis://127.0.0.1:6379/0?stream=never-read&group=g",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def health() -> dict | None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/health") as response:
                        return await response.json() if response.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            assert (await eventually(health, 20, what="/health during the import"))["state"] == "starting"
    finally:
        process.kill()
        await process.wait()
