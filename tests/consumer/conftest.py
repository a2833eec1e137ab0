"""Real queues of every kind, real `vqs-consumer` processes, and a stub null-worker control server.

Each queue fixture yields a `QueueUnderTest`: the source URL (read by the controller's own source
for depth, so "in flight" is what the controller counts), how to add a job, and where results and
dead letters land.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from consumer_support import LEASE
from support import eventually, free_port

from controller.sources import Source
from controller.sources import from_url as source_from_url

HANDLERS = Path(__file__).with_name("consumer_handlers.py")
#: How long the tests' own depth reads may take.
READ_TIMEOUT = 30.0


@dataclass
class QueueUnderTest:
    kind: str
    source: str
    #: Flags the consumer needs for this queue (dead-letter and results destinations).
    flags: list[str]
    put: Callable[[dict[str, Any]], Awaitable[None]]
    read_results: Callable[[], Awaitable[list[dict[str, Any]]]]
    read_dead: Callable[[], Awaitable[list[dict[str, Any]]]]
    _seen_results: list[dict[str, Any]] = field(default_factory=list)
    # One source for the test, as the controller keeps one: a new SQS client per read took longer
    # than the read's timeout on a loaded machine.
    _reader: Source | None = None

    async def depth(self) -> tuple[int, int]:
        """(waiting, in flight) as the controller reads them."""
        if self._reader is None:
            # With 6 test workers on 2 cores a first read (which also makes the SQS client) took
            # longer than the controller's 5 s: the controller reads again next tick, a test cannot.
            self._reader = source_from_url(self.source, timeout=READ_TIMEOUT)
        reading = await self._reader.depth()
        return reading.waiting, reading.in_flight

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()

    async def results(self) -> list[dict[str, Any]]:
        self._seen_results += await self.read_results()
        return list(self._seen_results)

    async def result_for(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        async def find() -> dict[str, Any] | None:
            return next((r for r in await self.results() if r["id"] == job_id), None)

        return await eventually(find, timeout, what=f"a result for {job_id}")

    async def drained(self, timeout: float = 30) -> None:
        await eventually(lambda: self._is_empty(), timeout, what=f"{self.kind}: nothing waiting or in flight")

    async def _is_empty(self) -> bool:
        return await self.depth() == (0, 0)


# Queues


@pytest.fixture
async def redis_stream(redis_client: Any, redis_url: str) -> AsyncIterator[QueueUnderTest]:
    stream = f"vqs-test:{uuid.uuid4().hex[:8]}:jobs"
    results, dead = f"{stream}:results", f"{stream}:dead"
    await redis_client.xgroup_create(stream, "workers", id="0", mkstream=True)

    async def put(fields: dict[str, Any]) -> None:
        await redis_client.xadd(stream, {k: str(v) for k, v in fields.items()})

    async def read_results() -> list[dict[str, Any]]:
        return [json.loads(line) for line in await redis_client.lpop(results, 1000) or []]

    async def read_dead() -> list[dict[str, Any]]:
        return [fields for _, fields in await redis_client.xrange(dead)]

    under_test = QueueUnderTest(
        "redis-stream", f"{redis_url}?stream={stream}&group=workers", ["--results", results], put, read_results, read_dead
    )
    yield under_test
    await under_test.close()
    await redis_client.delete(stream, results, dead, f"{stream}:cancel:x")


@pytest.fixture
async def redis_list(redis_client: Any, redis_url: str) -> AsyncIterator[QueueUnderTest]:
    key = f"vqs-test:{uuid.uuid4().hex[:8]}:jobs"
    results, dead = f"{key}:results", f"{key}:dead"

    async def put(fields: dict[str, Any]) -> None:
        await redis_client.lpush(key, json.dumps(fields))

    async def read_results() -> list[dict[str, Any]]:
        return [json.loads(line) for line in await redis_client.lpop(results, 1000) or []]

    async def read_dead() -> list[dict[str, Any]]:
        return [json.loads(item) for item in await redis_client.lrange(dead, 0, -1)]

    under_test = QueueUnderTest(
        "redis-list", f"{redis_url}?list={key}&processing={key}:processing:*", ["--results", results], put, read_results,
        read_dead,
    )  # fmt: skip
    yield under_test
    await under_test.close()
    leftovers = [k async for k in redis_client.scan_iter(match=f"{key}*")]
    if leftovers:
        await redis_client.delete(*leftovers)


@pytest.fixture
async def sqs_queue(sqs_endpoint: str) -> AsyncIterator[QueueUnderTest]:
    import boto3

    client = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint)
    name = f"vqs-test-{uuid.uuid4().hex[:8]}"
    url = client.create_queue(QueueName=name)["QueueUrl"]
    results_url = client.create_queue(QueueName=f"{name}-results")["QueueUrl"]
    dead_url = client.create_queue(QueueName=f"{name}-dead")["QueueUrl"]

    def drain(queue_url: str) -> list[dict[str, Any]]:
        found = []
        while messages := client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
            for message in messages:
                found.append(json.loads(message["Body"]))
                client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return found

    dead_seen: list[dict[str, Any]] = []

    async def put(fields: dict[str, Any]) -> None:
        await asyncio.to_thread(client.send_message, QueueUrl=url, MessageBody=json.dumps(fields))

    async def read_results() -> list[dict[str, Any]]:
        return await asyncio.to_thread(drain, results_url)

    async def read_dead() -> list[dict[str, Any]]:
        dead_seen.extend(await asyncio.to_thread(drain, dead_url))
        return list(dead_seen)

    under_test = QueueUnderTest(
        "sqs", f"sqs://{name}?region=us-east-1&endpoint_url={sqs_endpoint}",
        ["--results", f"{name}-results", "--dead-letter", f"{name}-dead"], put, read_results, read_dead,
    )  # fmt: skip
    yield under_test
    await under_test.close()
    for queue_url in (url, results_url, dead_url):
        client.delete_queue(QueueUrl=queue_url)


@pytest.fixture
async def nats_queue(nats_url: str) -> AsyncIterator[QueueUnderTest]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"VQS_TEST_{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[f"{stream}.jobs"])
    await js.add_stream(name=f"{stream}_OUT", subjects=[f"{stream}.results", f"{stream}.dead"])
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT, ack_wait=LEASE, max_deliver=-1)
    )
    read_upto = {f"{stream}.results": 0, f"{stream}.dead": 0}
    dead_seen: list[dict[str, Any]] = []

    async def read(subject: str) -> list[dict[str, Any]]:
        found = []
        last = (await js.stream_info(f"{stream}_OUT")).state.last_seq
        for seq in range(read_upto[subject] + 1, last + 1):
            message = await js.get_msg(f"{stream}_OUT", seq)
            if message.subject == subject:
                found.append(json.loads(message.data))
        read_upto[subject] = last
        return found

    async def put(fields: dict[str, Any]) -> None:
        await js.publish(f"{stream}.jobs", json.dumps(fields).encode())

    async def read_dead() -> list[dict[str, Any]]:
        dead_seen.extend(await read(f"{stream}.dead"))
        return list(dead_seen)

    under_test = QueueUnderTest(
        "nats", f"{nats_url}?stream={stream}&consumer=workers",
        ["--results", f"{stream}.results", "--dead-letter", f"{stream}.dead"],
        put, lambda: read(f"{stream}.results"), read_dead,
    )  # fmt: skip
    yield under_test
    await under_test.close()
    for name in (stream, f"{stream}_OUT"):
        await js.delete_stream(name)
    await nc.close()


@pytest.fixture(params=["redis_stream", "redis_list", "sqs_queue", "nats_queue"])
def queue(request: pytest.FixtureRequest) -> QueueUnderTest:
    """Each queue kind in turn."""
    return request.getfixturevalue(request.param)


# The null worker's control server


@dataclass
class ControlServer:
    port: int
    releases: list[float] = field(default_factory=list)
    #: The next this many releases answer 500 (a null worker restarting).
    failures: int = 0


@pytest.fixture
async def control() -> AsyncIterator[ControlServer]:
    server = ControlServer(port=free_port())

    async def release(request: web.Request) -> web.Response:
        if server.failures > 0:
            server.failures -= 1
            return web.json_response({"error": "not now"}, status=500)
        server.releases.append(time.time())
        return web.json_response({"released": 1})

    app = web.Application()
    app.router.add_post("/release", release)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    yield server
    await runner.cleanup()


# Consumer processes


class Worker:
    """One `vqs-consumer run` process."""

    def __init__(self, process: asyncio.subprocess.Process, name: str, log: Path) -> None:
        self.process, self.name, self.log = process, name, log

    def kill9(self) -> None:
        self.process.kill()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exit_code(self, timeout: float = 30) -> int:
        try:
            async with asyncio.timeout(timeout):
                return await self.process.wait()
        except TimeoutError:
            raise AssertionError(f"worker {self.name} still running after {timeout}s:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
async def workers(tmp_path: Path, control: ControlServer) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start consumers: `await workers(queue, name, *flags, target=, env=)`; all are killed at the end."""
    started: list[Worker] = []

    async def start(
        queue: QueueUnderTest, name: str, *flags: str, target: str = "work", env: dict[str, str] | None = None
    ) -> Worker:
        log = tmp_path / f"{name}.log"
        argv = [
            sys.executable, "-m", "vqs_consumer", "run", f"{HANDLERS}:{target}", "--source", queue.source,
            "--name", name, "--control-port", str(control.port), "--health-port", "0", "--lease", str(LEASE),
            "--retry-base", "0.1", "--retry-cap", "0.2", "--wait", "0.5", "--ready-settle", "0", "--release-settle", "0",
            *queue.flags, *flags,
        ]  # fmt: skip
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
            )
        worker = Worker(process, name, log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.returncode is None:
            worker.kill9()
            await worker.process.wait()
