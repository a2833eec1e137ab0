"""The worker pool: the endpoints' engines and the workers behind them, of one kind.

Two kinds share one interface (`assign`, `start`, `stop`, `crash`, `exited`):

- `process`: each worker is a real null worker process (`process_workers.NullWorkerProcess`,
  the real `vastai` Worker library) with its own ports, working directory and CONTAINER_ID,
  reporting to the emulator's /worker_status/, /delete_requests/ and (for session details)
  /_emulator/worker_events/. Ready once it reports ready and its cold start has passed.
- `inprocess`: virtual workers served by the emulator app itself (`inprocess.py`).

Either may run a consumer command beside each worker, killed with it. The pool ticks every
engine, carries out their actions (per worker, in order) and runs the in-process session GC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import ClientSession

from controller.emulator.config import EmulatorConfig, EndpointConfig
from controller.emulator.engine import ERROR, Action, Engine, Ids, SessionInfo, Worker
from controller.emulator.faults import FaultState
from controller.emulator.inprocess import InprocessWorkers
from controller.emulator.process_workers import NullWorkerProcess, signal_group, spawn, stop_group

log = logging.getLogger(__name__)
TICK_SECONDS = 0.1
SESSION_LOG_KEPT = 100_000


@dataclass
class OffsetClock:
    """Wall-clock time shifted by `offset` seconds; tests move it forward to simulate days."""

    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class WorkerKind(Protocol):
    name: str
    needs_report: bool  # ready only once the worker itself reports ready
    max_sessions: int | None

    def assign(self, worker: Worker, endpoint: EndpointConfig) -> None:
        """Give a starting worker its addresses (synchronously, before it can be routed to)."""

    # start and stop do their bookkeeping when called, in the engine's action order, and return
    # the slow part (spawning, killing), which the pool runs in order per worker.
    def start(self, worker_id: int) -> Awaitable[None]: ...

    def stop(self, worker_id: int) -> Awaitable[None]: ...

    def crash(self, worker_id: int) -> None:
        """Kill the worker (and its consumer) at once, as a machine failure would."""

    def exited(self) -> list[tuple[int, str]]:
        """Workers whose process died on its own: (id, why)."""


class ProcessKind:
    name = "process"
    needs_report = True
    max_sessions = 1  # the null worker's

    def __init__(self, pool: WorkerPool):
        self.pool = pool
        self.processes: dict[int, NullWorkerProcess] = {}

    def assign(self, worker: Worker, endpoint: EndpointConfig) -> None:
        consumer = self.pool.config.knob(endpoint, "consumer")
        process = NullWorkerProcess(
            worker.id, self.pool.report_addr, flavor=self.pool.config.worker_flavor,
            consumer=consumer.command if consumer else None, queue_url=consumer.queue_url if consumer else None,
            consumer_env=consumer.env if consumer else None, consumer_health=bool(consumer and consumer.health),
            env={"EMULATOR_EVENTS_URL": f"{self.pool.report_addr}/_emulator/worker_events/",
                 "MAX_RESERVATION_SECONDS": str(self.pool.config.max_reservation_seconds),
                 **({"EMULATOR_EARLY_READINESS": "1"} if self.pool.config.lenient.early_readiness else {})},
        )  # fmt: skip
        self.processes[worker.id] = process
        worker.url, worker.control_url = process.url, process.control_url

    def start(self, worker_id: int) -> Awaitable[None]:
        return self.processes[worker_id].start()

    def stop(self, worker_id: int) -> Awaitable[None]:
        process = self.processes.pop(worker_id, None)  # now: a resume may assign a new one next
        return process.stop() if process is not None else asyncio.sleep(0)

    def crash(self, worker_id: int) -> None:
        process = self.processes.get(worker_id)
        if process is not None:
            process.kill()

    def exited(self) -> list[tuple[int, str]]:
        return [(wid, f"worker process exited with {p.exit_code}") for wid, p in self.processes.items()
                if p.exit_code is not None]  # fmt: skip


class InprocessKind:
    name = "inprocess"
    needs_report = False

    def __init__(self, pool: WorkerPool):
        self.pool = pool
        self.max_sessions = pool.config.max_sessions
        self.consumers: dict[int, tuple[asyncio.subprocess.Process, Path]] = {}
        self._commands: dict[int, tuple[list[str], dict[str, str]]] = {}

    def assign(self, worker: Worker, endpoint: EndpointConfig) -> None:
        worker.url = f"{self.pool.base_url}/workers/{worker.id}"
        worker.control_url = f"{worker.url}/control"
        consumer = self.pool.config.knob(endpoint, "consumer")
        if consumer is not None:
            env = {"NULL_CONTROL_URL": worker.control_url, "VAST_WORKER_ID": str(worker.id),
                   **({"QUEUE_URL": consumer.queue_url} if consumer.queue_url else {}), **consumer.env}  # fmt: skip
            self._commands[worker.id] = (shlex.split(consumer.command), env)

    def start(self, worker_id: int) -> Awaitable[None]:
        return self._start_consumer(worker_id, self._commands.pop(worker_id, None))

    async def _start_consumer(self, worker_id: int, command: tuple[list[str], dict[str, str]] | None) -> None:
        if command is not None:
            workdir = Path(tempfile.mkdtemp(prefix=f"vqs-consumer-{worker_id}-"))
            process = await spawn(command[0], workdir / "consumer.log", {**os.environ, **command[1]})
            self.consumers[worker_id] = (process, workdir)

    def stop(self, worker_id: int) -> Awaitable[None]:
        self.pool.inprocess.forget(worker_id)
        return self._stop_consumer(worker_id)

    async def _stop_consumer(self, worker_id: int) -> None:
        # Runs in the worker's step order, so the consumer its start spawned is there by now.
        process, workdir = self.consumers.pop(worker_id, (None, None))
        if process is not None:
            await stop_group(process, [process])
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def crash(self, worker_id: int) -> None:
        self.pool.inprocess.forget(worker_id)
        process, _ = self.consumers.get(worker_id, (None, None))
        if process is not None:
            signal_group(process.pid, signal.SIGKILL)

    def exited(self) -> list[tuple[int, str]]:
        return []


class WorkerPool:
    """Every endpoint's engine plus the workers of one kind; `run()` keeps them moving."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        faults: FaultState,
        signer: Any,
        clock: Callable[[], float] | None = None,
    ):
        self.config = config
        self.faults = faults
        self.signer = signer
        # In-process workers and the engines share this clock; process workers keep their own.
        self.clock = clock or OffsetClock(config.clock_offset_seconds)
        self.base_url = ""  # set once the server listens
        self.report_addr = ""
        self.http: ClientSession | None = None
        self.events: deque[dict[str, Any]] = deque(maxlen=SESSION_LOG_KEPT)
        self.inprocess = InprocessWorkers(self)
        self.kind: WorkerKind = ProcessKind(self) if config.workers == "process" else InprocessKind(self)
        ids = Ids()
        self.engines: dict[str, Engine] = {
            ep.name: Engine(ep, config, ids=ids, events=self.events, needs_report=self.kind.needs_report,
                            max_sessions=self.kind.max_sessions, stuck=faults.take_stuck,
                            resume_failure=lambda: faults.resume_failure)  # fmt: skip
            for ep in config.endpoints
        }
        self._tasks: dict[int, asyncio.Task] = {}
        self._loops: list[asyncio.Task] = []

    @property
    def kind_name(self) -> str:
        return self.kind.name

    def engine_of(self, worker_id: int) -> Engine | None:
        for engine in self.engines.values():
            if worker_id in engine.workers:
                return engine
        return None

    def engine_by_id(self, endpoint_id: int) -> Engine | None:
        return next((e for e in self.engines.values() if e.endpoint.id == endpoint_id), None)

    # -- running ---------------------------------------------------------------------------------

    def start(self, http: ClientSession) -> None:
        self.http = http
        self._loops = [asyncio.create_task(self._tick_loop()), asyncio.create_task(self._gc_loop())]

    async def _tick_loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug in one tick must not stop all scaling
                log.exception("emulator tick failed")
            await asyncio.sleep(TICK_SECONDS)

    def tick(self) -> None:
        now = self.clock()
        for worker_id, why in self.kind.exited():
            engine = self.engine_of(worker_id)
            if engine is not None and engine.workers[worker_id].state != ERROR:
                engine.fail(worker_id, now, why)
        for engine in self.engines.values():
            for action in engine.tick(now):
                self._apply(engine, action)

    async def _gc_loop(self) -> None:
        if self.kind.name != "inprocess":
            return  # process workers run the library's own GC loop
        while True:
            await asyncio.sleep(self.config.gc_interval)
            await self.inprocess.collect_expired()

    def _apply(self, engine: Engine, action: Action) -> None:
        if action.kind in ("start", "resume"):
            self.kind.assign(engine.workers[action.worker_id], engine.endpoint)
            self._schedule(action.worker_id, self.kind.start(action.worker_id))
        else:  # stop and destroy: the engine only stops idle workers
            self._schedule(action.worker_id, self.kind.stop(action.worker_id))

    def _schedule(self, worker_id: int, step: Awaitable[None]) -> None:
        """Run `step` after the worker's previous step, so a stop never overtakes a start."""
        previous = self._tasks.get(worker_id)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await step
            except Exception:
                log.exception("worker %s: starting or stopping failed", worker_id)

        task = asyncio.create_task(run())
        self._tasks[worker_id] = task
        task.add_done_callback(lambda t: self._tasks.get(worker_id) is t and self._tasks.pop(worker_id))

    async def close(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        steps = [self.kind.stop(wid) for engine in self.engines.values() for wid in list(engine.workers)]
        await asyncio.gather(*steps, return_exceptions=True)

    # -- faults ----------------------------------------------------------------------------------

    def crash(self, target: int | str, endpoint: str | None = None) -> list[int]:
        """Kill a worker (an id, or "random" among running ones); its sessions are gone."""
        if target == "random":
            engines = [self.engines[endpoint]] if endpoint in self.engines else list(self.engines.values())
            running = [(e, wid) for e in engines for wid, w in e.workers.items() if w.state != ERROR
                       and w.state != "inactive"]  # fmt: skip
            if not running:
                return []
            engine, worker_id = self.faults.random.choice(running)
        else:
            worker_id = int(target)
            engine = self.engine_of(worker_id)
            if engine is None:
                return []
        engine.fail(worker_id, self.clock(), "crashed (injected fault)")
        self.kind.crash(worker_id)
        return [worker_id]

    # -- what process workers report -------------------------------------------------------------

    def _reporting(self, worker_id: Any, mtoken: Any) -> Engine | str:
        """The engine of a reporting worker, or why the report is refused."""
        engine = self.engine_of(worker_id) if isinstance(worker_id, int) else None
        if engine is None or self.kind.name != "process":
            return "unknown worker"
        if mtoken != f"emulator-{worker_id}":
            return "bad mtoken"
        return engine

    def worker_status(self, body: dict[str, Any]) -> str | None:
        engine = self._reporting(body.get("id"), body.get("mtoken"))
        if isinstance(engine, str):
            return engine
        now, worker_id = self.clock(), body["id"]
        loaded = (body.get("loadtime") or 0) > 0
        url = body.get("url") if isinstance(body.get("url"), str) else ""
        if engine.worker_reported(worker_id, now, loaded=loaded, error=str(body.get("error_msg") or ""), url=url):
            idxs = body.get("working_request_idxs") or []
            engine.requests_working(worker_id, [i for i in idxs if isinstance(i, int)], now)
            if engine.workers[worker_id].state == ERROR:
                self.kind.crash(worker_id)
        return None

    def delete_requests(
        self, worker_id: Any, mtoken: Any, request_idxs: list[int], rejected: list[int]
    ) -> str | None:
        """The library's /delete_requests/: finished requests, and `rejected` ones (a 429 it answered)."""
        engine = self._reporting(worker_id, mtoken)
        if isinstance(engine, str):
            return engine
        now = self.clock()
        engine.rejected(worker_id, rejected, now)
        engine.requests_done(worker_id, [i for i in request_idxs if i not in rejected], now)
        return None

    def worker_events(self, worker_id: Any, mtoken: Any, events: list[dict[str, Any]]) -> str | None:
        """Session changes seen inside a null worker process (its SessionWatcher)."""
        engine = self._reporting(worker_id, mtoken)
        if isinstance(engine, str):
            return engine
        if engine.workers[worker_id].state == ERROR:
            return None
        for event in events:
            kind, sid, t = event.get("event"), event.get("session_id"), event.get("t")
            if not isinstance(sid, str) or not isinstance(t, (int, float)):
                continue
            if kind == "create":
                cost = event.get("cost")
                engine.open_session(worker_id, SessionInfo(
                    session_id=sid, request_idx=event.get("request_idx"),
                    cost=float(cost) if isinstance(cost, (int, float)) else 100.0,
                    lifetime=float(event.get("lifetime") or 0), expiration=float(event.get("expiration") or 0),
                    created_at=float(t),
                ), self.clock())  # fmt: skip
            elif kind == "extend":
                engine.extend(worker_id, sid, float(event.get("expiration") or 0))
            elif kind in ("end", "expire", "release"):
                engine.close_session(worker_id, sid, float(t), kind)
        return None
