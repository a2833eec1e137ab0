"""In-process workers: virtual null workers served by the emulator app at `/workers/{id}`.

They keep the worker library's session semantics and HTTP statuses, so the SDK cannot tell them
from a real null worker, while a thousand of them cost a few dictionaries:

- `/session/create` 201 {session_id, expiration}; 429 at max_sessions; 422 bad JSON or fields.
- `/session/end`, `/session/get`, `/session/health`: 422 without session_id; 400 unknown session
  (health: 200 {"ok": false}); 401 when `session_auth` differs from the session's auth_data.
- the handler (`/ping`, or `/reserve` in the reserve flavor): 422 bad fields, 410 on a gone
  session, 401 bad signature; a call inside a session adds one lifetime to its expiration.
- `/control/release` ends every session (and held reservation) of the worker; `/control/health`.
- a GC pass every gc_interval ends expired sessions; every close POSTs on_close_route (best effort,
  10 s) with on_close_payload plus session_id, and frees the request_idx as /delete_requests/ would.

A worker that is not running (unknown, stopped or crashed) drops the connection without an answer,
as a real one refuses it; with `lenient.gone_worker_answers` it answers 404 (unknown) or 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import string
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from controller.emulator.config import WORKER_PERF, EmulatorConfig
from controller.emulator.engine import READY, Engine, SessionInfo, Worker

log = logging.getLogger(__name__)
ON_CLOSE_TIMEOUT = ClientTimeout(total=10)
AUTH_FIELDS = ("cost", "endpoint", "reqnum", "request_idx", "signature", "url")
_ID_CHARS = string.ascii_letters + string.digits


def _error(status: int, message: Any) -> web.Response:
    return web.json_response(message if isinstance(message, dict) else {"error": message}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        data = await request.json()
    except ValueError:
        return _error(422, "invalid JSON")
    return data if isinstance(data, dict) else _error(422, "expected a JSON object")


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


class Pool(Protocol):
    """What the in-process workers need of the worker pool (controller/emulator/workers.py)."""

    config: EmulatorConfig
    signer: Any
    http: ClientSession | None
    engines: dict[str, Engine]
    clock: Callable[[], float]

    @property
    def kind_name(self) -> str: ...

    def engine_of(self, worker_id: int) -> Engine | None: ...


class InprocessWorkers:
    """The HTTP side of every in-process worker; state lives in the endpoints' engines."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.reserve = pool.config.worker_flavor == "reserve"
        self._holds: dict[int, set[asyncio.Event]] = {}

    def routes(self) -> list[web.RouteDef]:
        base = "/workers/{worker_id:\\d+}"
        handler = "/reserve" if self.reserve else "/ping"
        return [
            web.post(base + "/session/create", self.session_create, name="session_create"),
            web.post(base + "/session/end", self.session_end, name="session_end"),
            web.post(base + "/session/get", self.session_get, name="session_get"),
            web.post(base + "/session/health", self.session_health, name="session_health"),
            web.post(base + handler, self.handler, name="handler"),
            web.post(base + "/control/release", self.control_release, name="control_release"),
            web.get(base + "/control/health", self.control_health, name="control_health"),
        ]

    def _worker(self, request: web.Request) -> tuple[Engine, Worker] | web.Response:
        worker_id = int(request.match_info["worker_id"])
        engine = self.pool.engine_of(worker_id)
        if engine is None or self.pool.kind_name != "inprocess":
            return self._gone(request, 404, f"worker {worker_id} not found")
        worker = engine.workers[worker_id]
        if worker.state != READY:
            return self._gone(request, 503, f"worker {worker_id} is not running ({worker.state})")
        return engine, worker

    def _gone(self, request: web.Request, status: int, message: str) -> web.Response:
        """No running worker at this address: the connection drops (the answer is never sent)."""
        if not self.pool.config.lenient.gone_worker_answers and request.transport is not None:
            request.transport.abort()
        return _error(status, message)

    async def _worker_and_body(self, request: web.Request) -> tuple[Engine, Worker, dict] | web.Response:
        """The running worker a request is for, and its JSON body (or the error answer)."""
        found = self._worker(request)
        if isinstance(found, web.Response):
            return found
        data = await _body(request)
        if isinstance(data, web.Response):
            return data
        return (*found, data)

    async def _session_request(
        self, request: web.Request
    ) -> tuple[Engine, Worker, dict, SessionInfo | None] | web.Response:
        """The worker, the body and the session it names (None: unknown), its auth checked."""
        found = await self._worker_and_body(request)
        if isinstance(found, web.Response):
            return found
        engine, worker, data = found
        session_id = data.get("session_id")
        if not session_id:
            return _error(422, "missing session_id")
        info = worker.sessions.get(session_id) if isinstance(session_id, str) else None
        if info is not None and data.get("session_auth") != info.auth_data:
            return _error(401, "session_auth is not valid")
        return engine, worker, data, info

    async def session_create(self, request: web.Request) -> web.Response:
        found = await self._worker_and_body(request)
        if isinstance(found, web.Response):
            return found
        engine, worker, data = found
        auth_data, payload = data.get("auth_data"), data.get("payload")
        if not isinstance(auth_data, dict):
            return _error(422, "auth_data: expected an object")
        if not isinstance(payload, dict):
            return _error(422, "payload: expected an object")
        lifetime = payload.get("lifetime", 60.0)
        if not _seconds(lifetime):
            return _error(422, "payload.lifetime: expected a number of seconds >= 0")
        request_idx = auth_data.get("request_idx")
        request_idx = request_idx if isinstance(request_idx, int) and not isinstance(request_idx, bool) else None
        if len(worker.sessions) >= engine.max_sessions:
            if request_idx is not None:
                engine.rejected(worker.id, [request_idx], self.pool.clock())
            return web.Response(status=429)  # as the library: no body
        cost = auth_data.get("cost")
        on_close_route = payload.get("on_close_route")
        now = self.pool.clock()
        info = SessionInfo(
            session_id="".join(random.choices(_ID_CHARS, k=13)),
            request_idx=request_idx,
            cost=float(cost) if _seconds(cost) else WORKER_PERF,
            lifetime=float(lifetime),
            expiration=now + lifetime,
            created_at=now,
            auth_data=auth_data,
            on_close_route=on_close_route,
            on_close_payload=payload.get("on_close_payload") if on_close_route is not None else None,
        )
        engine.open_session(worker.id, info, now)
        return web.json_response({"session_id": info.session_id, "expiration": info.expiration}, status=201)

    async def session_end(self, request: web.Request) -> web.Response:
        found = await self._session_request(request)
        if isinstance(found, web.Response):
            return found
        engine, worker, data, info = found
        if info is None:
            return _error(400, f"session with id {data['session_id']} not found")
        if not await self.close(engine, worker.id, info.session_id, "end"):
            return _error(410, "session already closed")
        return web.json_response({"ended": True, "removed_session": info.session_id})

    async def session_get(self, request: web.Request) -> web.Response:
        found = await self._session_request(request)
        if isinstance(found, web.Response):
            return found
        _, _, data, info = found
        if info is None:
            return _error(400, "session does not exist")
        return web.json_response({
            "session_id": info.session_id, "auth_data": info.auth_data, "lifetime": info.lifetime,
            "expiration": info.expiration, "created_at": info.created_at, "on_close_route": info.on_close_route,
            "on_close_payload": info.on_close_payload,
        })  # fmt: skip

    async def session_health(self, request: web.Request) -> web.Response:
        found = await self._session_request(request)
        if isinstance(found, web.Response):
            return found
        _, _, data, info = found
        if info is None:
            return web.json_response({"ok": False})
        return web.json_response({"ok": True})

    async def handler(self, request: web.Request) -> web.Response:
        found = await self._worker_and_body(request)
        if isinstance(found, web.Response):
            return found
        engine, worker, data = found
        errors = self._parse_errors(data)
        if errors:
            return _error(422, errors)
        auth, payload, session_id = data["auth_data"], data["payload"], data.get("session_id")
        if session_id is not None:
            # As the library: the lifetime is added before the signature is checked.
            info = worker.sessions.get(session_id) if isinstance(session_id, str) else None
            if info is None:
                return _error(410, "invalid session")
            engine.extend(worker.id, info.session_id, info.expiration + info.lifetime)
        if not self.pool.signer.verify(auth["url"], auth["signature"]):
            return _error(401, "signature verification failed")
        if not self.reserve:
            if session_id is None:
                engine.requests_done(worker.id, [auth["request_idx"]], self.pool.clock())
            return web.json_response({"result": "pong"})
        return await self._hold(engine, worker, auth["request_idx"], payload.get("duration"))

    def _parse_errors(self, data: dict[str, Any]) -> dict[str, Any]:
        """The library's request parsing: which fields are missing or bad."""
        errors: dict[str, Any] = {}
        auth = data.get("auth_data")
        if "auth_data" not in data:
            errors["auth_data"] = "field missing"
        elif not isinstance(auth, dict):
            errors["auth_data"] = "expected an object"
        elif missing := {name: "missing parameter" for name in AUTH_FIELDS if name not in auth}:
            errors["auth_data"] = missing
        payload = data.get("payload")
        if "payload" not in data:
            errors["payload"] = "field missing"
        elif not isinstance(payload, dict):
            errors["payload"] = {"data": "payload must be a dictionary"}
        elif self.reserve and payload.get("duration") is not None and not _seconds(payload["duration"]):
            errors["payload"] = {"duration": "expected a number of seconds >= 0"}
        return errors

    async def _hold(self, engine: Engine, worker: Worker, request_idx: Any, duration: Any) -> web.Response:
        """The reserve flavor: hold the worker until the duration, /release or a disconnect."""
        if any(grant.working for grant in worker.grants.values()):
            return _error(429, "worker is busy with a reservation")
        cap = self.pool.config.max_reservation_seconds
        seconds = cap if duration is None else min(float(duration), cap)
        released = asyncio.Event()
        holds = self._holds.setdefault(worker.id, set())
        holds.add(released)
        engine.requests_working(worker.id, [request_idx], self.pool.clock())
        try:
            await asyncio.wait_for(released.wait(), seconds)
            outcome = "release"
        except TimeoutError:
            outcome = "duration_elapsed"
        finally:
            holds.discard(released)
            engine.requests_done(worker.id, [request_idx], self.pool.clock())
        return web.json_response({"result": {"released": outcome, "duration": seconds}})

    async def control_release(self, request: web.Request) -> web.Response:
        found = self._worker(request)
        if isinstance(found, web.Response):
            return found
        engine, worker = found
        sessions = list(worker.sessions)
        ended = await asyncio.gather(*(self.close(engine, worker.id, sid, "release") for sid in sessions))
        holds = self._holds.get(worker.id, set())
        for released in holds:
            released.set()
        return web.json_response({"released": sum(ended) + len(holds)})

    async def control_health(self, request: web.Request) -> web.Response:
        found = self._worker(request)
        return found if isinstance(found, web.Response) else web.json_response({"ok": True})

    async def close(self, engine: Engine, worker_id: int, session_id: str, event: str) -> bool:
        """End a session (end | expire | release): free it, then call its on_close_route."""
        now = self.pool.clock()
        info = engine.close_session(worker_id, session_id, now, event)
        if info is None:
            return False
        if info.request_idx is not None:
            engine.requests_done(worker_id, [info.request_idx], now)
        if info.on_close_route:
            await self._on_close(info)
        return True

    async def _on_close(self, info: SessionInfo) -> None:
        payload = info.on_close_payload
        body = dict(payload) if isinstance(payload, dict) else {} if payload is None else {"payload": payload}
        body.setdefault("session_id", info.session_id)
        try:
            async with self.pool.http.post(info.on_close_route, json=body, timeout=ON_CLOSE_TIMEOUT) as response:
                await response.read()
        except (TimeoutError, ClientError, ValueError) as exc:
            log.debug("on_close_route failed for a session: %s", type(exc).__name__)

    async def collect_expired(self) -> None:
        """One GC pass: end every expired session of every in-process worker."""
        now = self.pool.clock()
        closing = [
            self.close(engine, worker_id, info.session_id, "expire")
            for engine in self.pool.engines.values()
            for worker_id, info in engine.expired(now)
        ]
        await asyncio.gather(*closing)

    def forget(self, worker_id: int) -> None:
        """The worker stopped: end its reservations (their handlers answer `release`)."""
        for released in self._holds.pop(worker_id, set()):
            released.set()
