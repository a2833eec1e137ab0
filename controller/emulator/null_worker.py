"""A null PyWorker: the real `vastai` worker library, holding capacity and doing no work.

Written from the description of Vast's null worker (seeds/null-pyworker-*.txt); one process is
one Vast worker. Two flavors:

- `sessions` (default, today's worker): `max_sessions=1`; the SDK's `endpoint.session()` reserves
  the worker, `session.close()` releases it, and a trivial `/ping` handler carries the benchmark
  (and extends a session's lifetime when called inside it).
- `reserve` (the older worker): `POST /reserve {"duration": D}` holds the worker busy until D
  seconds pass, the client disconnects, or `MAX_RESERVATION_SECONDS`; a second one gets 429.

Both pin `max_perf` to 100 with a `.has_benchmark` file in the working directory (no benchmark
run; cost 100 = one whole worker) and serve a control server on `127.0.0.1:$NULL_CONTROL_PORT`:
`POST /release` ends this worker's sessions (or held reservations) from inside the process, no
`session_auth` needed, for the queue consumer beside it; `GET /health` is the library's health
check target: 200, or whatever `BACKEND_HEALTH_URL` answers when set.

Environment (as the library reads it on an instance): WORKER_PORT, CONTAINER_ID, REPORT_ADDR,
MASTER_TOKEN; these default for loopback: VAST_TCP_PORT_<WORKER_PORT>=WORKER_PORT,
PUBLIC_IPADDR=127.0.0.1, USE_SSL=false, UNSECURED=true; NULL_CONTROL_PORT (18999),
BACKEND_HEALTH_URL, MAX_RESERVATION_SECONDS (3600), NULL_WORKER_FLAVOR (sessions).
EMULATOR_EVENTS_URL and EMULATOR_EARLY_READINESS are set only by the local emulator: see `SessionWatcher`.

Run: `python -m controller.emulator.null_worker [--flavor sessions|reserve]` from the worker's
own working directory.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from vastai import Worker
from vastai.serverless.server.lib.data_types import JsonDataException
from vastai.serverless.server.worker import BenchmarkConfig, HandlerConfig, WorkerConfig

FLAVORS = ("sessions", "reserve")
PINNED_PERF = "100"
BENCHMARK_FILE = ".has_benchmark"  # the library reads it from the working directory
REQUIRED_ENV = ("WORKER_PORT", "CONTAINER_ID", "REPORT_ADDR")
HTTP_TIMEOUT = ClientTimeout(total=15)
WATCH_INTERVAL = 0.1
MAX_PENDING_EVENTS = 1000


class Reservations:
    """Held `/reserve` calls, so `/release` can end them early."""

    def __init__(self, cap_seconds: float):
        self.cap_seconds = cap_seconds
        self._releases: set[asyncio.Event] = set()

    @staticmethod
    def parse(payload: dict[str, Any]) -> dict[str, Any]:
        """The library's request parser: a bad `duration` is a 422, not a 500."""
        duration = payload.get("duration")
        if duration is not None and (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or not math.isfinite(duration)
            or duration < 0
        ):
            raise JsonDataException({"duration": "expected a number of seconds >= 0"})
        return payload

    async def hold(self, duration: float | None = None, **_: Any) -> dict[str, Any]:
        """Hold until the duration (capped) passes or `/release`; a disconnect cancels it."""
        seconds = self.cap_seconds if duration is None else min(float(duration), self.cap_seconds)
        released = asyncio.Event()
        self._releases.add(released)
        try:
            await asyncio.wait_for(released.wait(), seconds)
            return {"released": "release", "duration": seconds}
        except TimeoutError:
            return {"released": "duration_elapsed", "duration": seconds}
        finally:
            self._releases.discard(released)

    def release_all(self) -> int:
        for released in self._releases:
            released.set()
        return len(self._releases)


class SessionWatcher:
    """Tells the local emulator about this worker's sessions as they open, extend and close.

    The library has no session hooks and reports only request_idxs, while the emulator's session
    log needs session ids, expirations and why each session ended. So this diffs the library's
    `backend.sessions` every WATCH_INTERVAL and POSTs the changes to EMULATOR_EVENTS_URL (retried
    until delivered). A close is `release` when /release ended it, `expire` when its expiration had
    passed, else `end`. With `early_readiness` (the emulator's lenient flag) it also flags the
    first ready status as pending, so the library reports readiness within a second instead of at
    its next 10 s report, as it does on Vast.
    """

    def __init__(self, url: str, worker_id: int, mtoken: str, *, early_readiness: bool = False):
        self.url = url
        self.worker_id = worker_id
        self.mtoken = mtoken
        self.early_readiness = early_readiness
        self.released: set[str] = set()  # session ids /release is ending

    async def run(self, backend: Any) -> None:
        known: dict[str, dict[str, Any]] = {}
        pending: list[dict[str, Any]] = []
        announced_ready = not self.early_readiness
        async with ClientSession(timeout=ClientTimeout(total=5)) as http:
            while True:
                await asyncio.sleep(WATCH_INTERVAL)
                metrics = backend.metrics
                if not announced_ready and metrics.system_metrics.model_is_loaded:
                    metrics.update_pending = announced_ready = True
                current = {sid: self._describe(s) for sid, s in list(backend.sessions.items())}
                pending += self._changes(known, current, time.time())
                known = current
                if pending:
                    pending = await self._send(http, pending)

    def _changes(self, known: dict, current: dict, now: float) -> list[dict[str, Any]]:
        events = []
        for sid, info in current.items():
            if sid not in known:
                events.append({"event": "create", **info})
            elif known[sid]["expiration"] != info["expiration"]:
                events.append({"event": "extend", **info})
        for sid, info in known.items():
            if sid not in current:
                expired = info["expiration"] <= now
                event = "release" if sid in self.released else "expire" if expired else "end"
                self.released.discard(sid)
                events.append({"event": event, **info, "t": now})
        return events

    @staticmethod
    def _describe(session: Any) -> dict[str, Any]:
        auth = session.auth_data if isinstance(session.auth_data, dict) else {}
        return {
            "session_id": session.session_id, "request_idx": session.request_idx, "cost": auth.get("cost"),
            "lifetime": session.lifetime, "expiration": session.expiration, "t": session.created_at,
        }  # fmt: skip

    async def _send(self, http: ClientSession, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST the events; what is returned is still to send."""
        body = {"worker_id": self.worker_id, "mtoken": self.mtoken, "events": events}
        try:
            async with http.post(self.url, json=body) as response:
                if response.status < 300:
                    return []
        except (TimeoutError, ClientError):
            pass
        return events[-MAX_PENDING_EVENTS:]


class ControlServer:
    """`/release` and `/health` on 127.0.0.1; also the worker's lifecycle (up before ready)."""

    def __init__(
        self,
        port: int,
        backend_health_url: str | None,
        reservations: Reservations,
        watcher: SessionWatcher | None = None,
    ):
        self.port = port
        self.backend_health_url = backend_health_url
        self.reservations = reservations
        self.watcher = watcher
        self.backend: Any = None  # the library's Backend, set once the Worker exists
        self._runner: web.AppRunner | None = None
        self._watch_task: asyncio.Task | None = None

    async def __aenter__(self) -> ControlServer:
        app = web.Application()
        app.router.add_post("/release", self._release)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        if self.watcher is not None and self.backend is not None:
            self._watch_task = asyncio.create_task(self.watcher.run(self.backend))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _release(self, request: web.Request) -> web.Response:
        sessions = await self._end_sessions()
        reservations = self.reservations.release_all()
        return web.json_response({"released": sessions + reservations})

    async def _end_sessions(self) -> int:
        """End each session through the library's own internal `/session/end` route.

        That route is the library's hook for in-instance callers: it drops the session's
        requests, fires `on_close_route` and queues the `request_idx` for `/delete_requests/`,
        exactly as `session.close()` does. The auth it checks is the session's own, read here.
        """
        sessions = list(self.backend.sessions.values()) if self.backend is not None else []
        ended = 0
        async with ClientSession(timeout=HTTP_TIMEOUT) as http:
            for session in sessions:
                if self.watcher is not None:
                    self.watcher.released.add(session.session_id)
                body = {"session_id": session.session_id, "session_auth": session.auth_data}
                async with http.post(f"{internal_url()}/session/end", json=body) as response:
                    ended += response.status == 200  # 400 = it ended meanwhile
        return ended

    async def _health(self, request: web.Request) -> web.Response:
        if not self.backend_health_url:
            return web.json_response({"ok": True})
        try:
            async with ClientSession(timeout=HTTP_TIMEOUT) as http:
                async with http.get(self.backend_health_url) as response:
                    body = await response.read()
                    return web.Response(status=response.status, body=body, content_type=response.content_type)
        except (TimeoutError, ClientError) as exc:
            return web.json_response(
                {"ok": False, "error": f"BACKEND_HEALTH_URL unreachable: {type(exc).__name__}"}, status=503
            )


def internal_url() -> str:
    """The library's plain-http port for in-instance calls (WORKER_HTTP_PORT, else WORKER_PORT+1)."""
    port = os.environ.get("WORKER_HTTP_PORT") or int(os.environ["WORKER_PORT"]) + 1
    return f"http://127.0.0.1:{port}"


async def ping(**_: Any) -> str:
    return "pong"


def worker_config(flavor: str, control: ControlServer) -> WorkerConfig:
    """The null worker's configuration: one benchmarked handler, control server as lifecycle."""
    benchmark = BenchmarkConfig(dataset=[{}], runs=1, concurrency=1, do_warmup=False)
    if flavor == "reserve":
        handler = HandlerConfig(
            route="/reserve",
            benchmark_config=benchmark,
            remote_function=control.reservations.hold,
            request_parser=Reservations.parse,
            # One held reservation is the whole worker: refuse the next one at once (429)
            # rather than queue it behind a hold that may last an hour.
            max_queue_time=0.0,
        )
    else:
        handler = HandlerConfig(route="/ping", benchmark_config=benchmark, remote_function=ping)
    return WorkerConfig(
        handlers=[handler],
        max_sessions=1,
        lifecycle=control,
        # The library health-checks "{model_server_url}:{port}{healthcheck}": our /health.
        model_server_url="http://127.0.0.1",
        model_server_port=control.port,
        model_healthcheck_url="/health",
    )


def prepare_environment(env: dict[str, str]) -> None:
    """Fill the loopback defaults the library expects; name what is missing."""
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        raise SystemExit(f"null_worker: missing environment variable(s) {', '.join(missing)}")
    port = env["WORKER_PORT"]
    for name, value in {
        f"VAST_TCP_PORT_{port}": port,
        "PUBLIC_IPADDR": "127.0.0.1",
        "USE_SSL": "false",
        "UNSECURED": "true",  # must not be empty: the library parses it with strtobool
        "MASTER_TOKEN": "null-worker",
    }.items():
        env.setdefault(name, value)


async def serve(flavor: str) -> None:
    reservations = Reservations(float(os.environ.get("MAX_RESERVATION_SECONDS", "3600")))
    events_url = os.environ.get("EMULATOR_EVENTS_URL")
    watcher = None
    if events_url:
        watcher = SessionWatcher(events_url, int(os.environ["CONTAINER_ID"]), os.environ["MASTER_TOKEN"],
                                 early_readiness=os.environ.get("EMULATOR_EARLY_READINESS") == "1")  # fmt: skip
    control = ControlServer(
        int(os.environ.get("NULL_CONTROL_PORT", "18999")),
        os.environ.get("BACKEND_HEALTH_URL") or None,
        reservations,
        watcher,
    )
    worker = Worker(worker_config(flavor, control))
    control.backend = worker.backend
    await worker.run_async(host="127.0.0.1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="null_worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--flavor", choices=FLAVORS, default=os.environ.get("NULL_WORKER_FLAVOR", "sessions")
    )
    args = parser.parse_args(argv)
    prepare_environment(os.environ)  # type: ignore[arg-type]
    if not os.path.exists(BENCHMARK_FILE):
        with open(BENCHMARK_FILE, "w") as f:
            f.write(PINNED_PERF)
    asyncio.run(serve(args.flavor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
