"""The null worker process on its own, against a stub autoscaler: what only the process kind has.

The session behaviour shared with in-process workers is in test_contract.py; here: the reserve
flavor, the control server's health proxy, the consumer beside the worker, and start-up errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from Crypto.PublicKey import RSA
from support import eventually

from controller.emulator.process_workers import NullWorkerProcess
from controller.ports import free_port

HTTP = aiohttp.ClientTimeout(total=15)


class StubAutoscaler:
    """Serves what the worker library calls on REPORT_ADDR and remembers what it was told."""

    def __init__(self) -> None:
        self.pubkey = RSA.generate(1024).publickey().export_key().decode()
        self.statuses: list[dict] = []
        self.deleted: list[dict] = []
        self.backend_health = 200
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/pubkey/", self._pubkey)
        app.router.add_post("/worker_status/", self._record(self.statuses))
        app.router.add_post("/delete_requests/", self._record(self.deleted))
        app.router.add_get("/backend-health", self._backend_health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _pubkey(self, request: web.Request) -> web.Response:
        return web.Response(text=self.pubkey)

    async def _backend_health(self, request: web.Request) -> web.Response:
        return web.json_response({"from": "backend"}, status=self.backend_health)

    def _record(self, into: list[dict]):
        async def handler(request: web.Request) -> web.Response:
            into.append(await request.json())
            return web.json_response({})

        return handler

    async def stop(self) -> None:
        await self._runner.cleanup()

    def ready(self, worker_id: int) -> dict | None:
        """The worker's last status if it says it is ready (loaded, no error)."""
        mine = [s for s in self.statuses if s["id"] == worker_id]
        if mine and mine[-1]["loadtime"] > 0 and not mine[-1]["error_msg"]:
            return mine[-1]
        return None

    def deleted_idxs(self) -> list[int]:
        return [r["request_idx"] for body in self.deleted for r in body.get("requests", [])]


@pytest.fixture
async def stub():
    server = StubAutoscaler()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def start_worker(stub):
    """Start null worker processes reporting to the stub; all are stopped at the end."""
    workers: list[NullWorkerProcess] = []

    async def start(**kwargs: Any) -> NullWorkerProcess:
        worker = NullWorkerProcess(1000 + len(workers), stub.url, **kwargs)
        workers.append(worker)
        await worker.start()
        await eventually(lambda: _ready(stub, worker), 30, f"worker {worker.worker_id} ready")
        return worker

    yield start
    await asyncio.gather(*(w.stop() for w in workers))


async def _ready(stub: StubAutoscaler, worker: NullWorkerProcess) -> bool:
    assert worker.running, f"worker exited with {worker.exit_code}:\n{worker.log_tail()}"
    return stub.ready(worker.worker_id) is not None


def auth_data(worker: NullWorkerProcess, request_idx: int) -> dict:
    """What /route/ would hand out (signatures are not checked: UNSECURED=true)."""
    return {"endpoint": "e", "url": worker.url, "cost": 100, "reqnum": request_idx,
            "request_idx": request_idx, "signature": "unchecked"}  # fmt: skip


async def post(url: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=HTTP) as http:
        async with http.post(url, json=body) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None


async def reserve(worker: NullWorkerProcess, request_idx: int, payload: dict) -> tuple[int, Any]:
    return await post(f"{worker.url}/reserve", {"auth_data": auth_data(worker, request_idx), "payload": payload})


async def test_worker_reports_ready_with_pinned_perf_and_its_own_url(stub, start_worker):
    worker = await start_worker()
    status = stub.ready(worker.worker_id)
    assert status["max_perf"] == 100
    assert status["url"] == worker.url
    assert status["mtoken"] == f"emulator-{worker.worker_id}"
    assert (worker.workdir / ".has_benchmark").read_text() == "100"


async def test_reserve_holds_until_duration_and_refuses_a_second_with_429(stub, start_worker):
    worker = await start_worker(flavor="reserve")
    held = asyncio.create_task(reserve(worker, 11, {"duration": 2}))
    await eventually(lambda: _working(stub, worker, 11), 15, "the reservation to be held")
    assert await reserve(worker, 12, {"duration": 1}) == (429, None)
    assert await held == (200, {"result": {"released": "duration_elapsed", "duration": 2}})
    await eventually(lambda: 11 in stub.deleted_idxs(), 15, "request 11 in /delete_requests/")
    status, _ = await reserve(worker, 13, {"duration": 0})
    assert status == 200, "the worker is free again once the hold ends"


async def test_reserve_is_capped_by_max_reservation_seconds(start_worker):
    worker = await start_worker(flavor="reserve", env={"MAX_RESERVATION_SECONDS": "0.5"})
    assert await reserve(worker, 21, {}) == (200, {"result": {"released": "duration_elapsed", "duration": 0.5}})
    assert await reserve(worker, 22, {"duration": 999}) == (
        200, {"result": {"released": "duration_elapsed", "duration": 0.5}})  # fmt: skip


async def test_reserve_ends_on_client_disconnect_and_on_release(stub, start_worker):
    worker = await start_worker(flavor="reserve")
    dropped = asyncio.create_task(reserve(worker, 31, {"duration": 600}))
    await eventually(lambda: _working(stub, worker, 31), 15, "the reservation to be held")
    dropped.cancel()  # closes the connection, as a controller closing a reservation does
    await eventually(lambda: _accepts_hold(worker, 32), 15, "the worker to be free after the disconnect")

    held = asyncio.create_task(reserve(worker, 33, {"duration": 600}))
    await eventually(lambda: _working(stub, worker, 33), 15, "the second reservation to be held")
    assert await post(f"{worker.control_url}/release") == (200, {"released": 1})
    assert await held == (200, {"result": {"released": "release", "duration": 600}})


async def test_reserve_rejects_a_bad_duration_with_422(start_worker):
    worker = await start_worker(flavor="reserve")
    for bad in ("soon", -1, True):
        status, body = await reserve(worker, 41, {"duration": bad})
        assert status == 422 and "duration" in body["payload"], bad


async def test_health_is_a_stub_or_proxies_backend_health_url(stub, start_worker):
    plain = await start_worker()
    proxied = await start_worker(env={"BACKEND_HEALTH_URL": f"{stub.url}/backend-health"})
    async with aiohttp.ClientSession(timeout=HTTP) as http:
        async with http.get(f"{plain.control_url}/health") as r:
            assert (r.status, await r.json()) == (200, {"ok": True})
        stub.backend_health = 503
        async with http.get(f"{proxied.control_url}/health") as r:
            assert (r.status, await r.json()) == (503, {"from": "backend"})


async def test_consumer_gets_its_environment_and_dies_with_the_worker(stub, start_worker, tmp_path):
    report = tmp_path / f"consumer-{uuid.uuid4().hex}.json"
    script = (
        "import json, os, sys, time; "
        "keys = ('NULL_CONTROL_PORT', 'NULL_CONTROL_URL', 'VAST_WORKER_ID', 'QUEUE_URL'); "
        f"open({str(report)!r}, 'w').write(json.dumps({{'pid': os.getpid(), **{{k: os.environ[k] for k in keys}}}})); "
        "time.sleep(600)"
    )
    worker = await start_worker(consumer=[sys.executable, "-c", script], queue_url="redis://127.0.0.1:6379/0?list=q")
    seen = await eventually(lambda: report.exists() and report.read_text(), 15, "the consumer to start")
    consumer = json.loads(seen)
    assert consumer["NULL_CONTROL_PORT"] == str(worker.ports.control)
    assert consumer["NULL_CONTROL_URL"] == worker.control_url
    assert consumer["VAST_WORKER_ID"] == str(worker.worker_id)
    assert consumer["QUEUE_URL"] == "redis://127.0.0.1:6379/0?list=q"
    await worker.stop()
    assert not worker.running
    with pytest.raises(ProcessLookupError):
        os.kill(consumer["pid"], 0)


async def test_missing_environment_is_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CONTAINER_ID", "REPORT_ADDR")}
    env["WORKER_PORT"] = str(free_port())
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.emulator.null_worker", cwd=tmp_path, env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0
    assert "CONTAINER_ID, REPORT_ADDR" in stderr.decode()


async def _working(stub: StubAutoscaler, worker: NullWorkerProcess, request_idx: int) -> bool:
    mine = [s for s in stub.statuses if s["id"] == worker.worker_id]
    return bool(mine) and request_idx in mine[-1]["working_request_idxs"]


async def _accepts_hold(worker: NullWorkerProcess, request_idx: int) -> bool:
    status, _ = await reserve(worker, request_idx, {"duration": 0})
    return status == 200
