"""The emulator's HTTP face: Vast's web API, the autoscaler, the worker report routes, /_emulator.

- `GET /api/v0/endptjobs/` and `/api/v0/endptjobs/{id}/`: the endpoints (account key, bearer or
  ?api_key), with their parameters and per-endpoint keys, as the SDK reads them.
- `POST /route/`: READY (`url` and a signed `auth_data`) when a worker has room, else WAITING
  (`{endpoint, status, __request_id}`, as Vast answers: no `request_idx`). Key: the endpoint's (or
  the account key).
- `POST /get_endpoint_workers/`: a bare list of workers in the SDK's `Worker` shape.
- `GET /pubkey/`, `POST /worker_status/`, `POST /delete_requests/` (both body shapes): what the
  worker library calls on REPORT_ADDR; `POST /_emulator/worker_events/`: the null worker's session
  changes (process kind).
- `GET /_emulator/state`; `GET|POST /_emulator/faults` (POST needs the account key).
Bad keys answer 401, unknown endpoints or workers 404, malformed bodies 422, always as JSON. The
web API is rate-limited per route and key (`web_api_rate_limit`): 429 "API requests too
frequent", no Retry-After. `/_emulator/state` counts the calls per route (`requests`) and the
most ever under way at once (`peak_in_flight`).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from pydantic import ValidationError

from controller.emulator.config import EmulatorConfig, EmulatorConfigError, EndpointConfig, RateLimit
from controller.emulator.engine import SDK_STATUS, Engine, Ready
from controller.emulator.faults import Faults, FaultState, fault_middleware
from controller.emulator.workers import WorkerPool

log = logging.getLogger(__name__)
USER_ID = 1
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
POOL = web.AppKey("pool", WorkerPool)
WEB_API_ROUTES = ("endptjobs", "endptjob")
RATE_LIMIT_KEYS_KEPT = 10_000


class Signer:
    """The autoscaler's RSA key: signs each READY route's url as the worker library verifies it."""

    def __init__(self) -> None:
        self._key = RSA.generate(2048)
        self.public_pem = self._key.publickey().export_key().decode()
        self.sign = lru_cache(maxsize=4096)(self._sign)  # one signature per worker url

    @staticmethod
    def message(url: str) -> bytes:
        return json.dumps({"url": url}, indent=4, sort_keys=True).encode()

    def _sign(self, url: str) -> str:
        return base64.b64encode(pkcs1_15.new(self._key).sign(SHA256.new(self.message(url)))).decode()

    def verify(self, url: Any, signature: Any) -> bool:
        if not isinstance(url, str) or not isinstance(signature, str):
            return False
        try:
            pkcs1_15.new(self._key.publickey()).verify(SHA256.new(self.message(url)), base64.b64decode(signature))
            return True
        except (ValueError, TypeError):
            return False


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"success": False, "error": message, **extra}, status=status)


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        data = await request.json()
    except ValueError:
        return _error(422, "invalid JSON body")
    return data if isinstance(data, dict) else _error(422, "expected a JSON object")


def _given_keys(request: web.Request, body: dict[str, Any] | None = None) -> list[Any]:
    keys: list[Any] = []
    auth = request.headers.get("Authorization", "")
    if auth:
        keys.append(auth.removeprefix("Bearer ").strip())
    if "api_key" in request.query:
        keys.append(request.query["api_key"])
    if body is not None and "api_key" in body:
        keys.append(body["api_key"])
    return keys


def _authorized(request: web.Request, allowed: set[str], body: dict[str, Any] | None = None) -> web.Response | None:
    """None when a key is given and every key given is allowed; else the 401 to answer."""
    keys = _given_keys(request, body)
    if not keys:
        return _error(401, "missing API key (Authorization: Bearer, ?api_key or body api_key)")
    if any(key not in allowed for key in keys):
        return _error(401, "invalid API key")
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Routes:
    def __init__(self, config: EmulatorConfig, pool: WorkerPool, faults: FaultState, signer: Signer):
        self.config = config
        self.pool = pool
        self.faults = faults
        self.signer = signer
        self.created_at = pool.clock()
        self.requests: Counter[str] = Counter()  # calls per route name, refused ones included
        self.in_flight: Counter[str] = Counter()  # calls under way per route name
        self.peak_in_flight: Counter[str] = Counter()  # the most ever under way at once

    def table(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v0/endptjobs/", self.endpoints, name="endptjobs"),
            web.get("/api/v0/endptjobs/{id}/", self.endpoint, name="endptjob"),
            web.post("/route/", self.route, name="route"),
            web.post("/get_endpoint_workers/", self.workers, name="get_endpoint_workers"),
            web.get("/pubkey/", self.pubkey, name="pubkey"),
            web.post("/worker_status/", self.worker_status, name="worker_status"),
            web.post("/delete_requests/", self.delete_requests, name="delete_requests"),
            web.post("/_emulator/worker_events/", self.worker_events),
            web.get("/_emulator/state", self.state),
            web.get("/_emulator/faults", self.get_faults),
            web.post("/_emulator/faults", self.set_faults),
        ]

    # -- web API ---------------------------------------------------------------------------------

    def _listing(self, endpoint: EndpointConfig) -> dict[str, Any]:
        return {
            "id": endpoint.id, "endpoint_name": endpoint.name, "api_key": endpoint.api_key, "user_id": USER_ID,
            "created_at": self.created_at, "endpoint_state": "active", **endpoint.public_params(),
        }  # fmt: skip

    async def endpoints(self, request: web.Request) -> web.Response:
        if denied := _authorized(request, {self.config.api_key}):
            return denied
        return web.json_response({"success": True, "results": [self._listing(e) for e in self._existing()]})

    def _existing(self) -> list[EndpointConfig]:
        """The account's endpoints, less those a fault deleted."""
        return [e for e in self.config.endpoints if e.name not in self.faults.deleted_endpoints]

    async def endpoint(self, request: web.Request) -> web.Response:
        if denied := _authorized(request, {self.config.api_key}):
            return denied
        endpoint = next((e for e in self._existing() if str(e.id) == request.match_info["id"]), None)
        if endpoint is None:
            return _error(404, f"endpoint {request.match_info['id']} not found")
        return web.json_response({"success": True, "result": self._listing(endpoint)})

    # -- autoscaler ------------------------------------------------------------------------------

    async def route(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        name = body.get("endpoint")
        if not isinstance(name, str) or not name:
            return _error(422, "endpoint: expected the endpoint's name")
        engine = self.pool.engines.get(name)
        if engine is None or name in self.faults.deleted_endpoints:
            return _error(404, f"endpoint {name!r} not found")
        if denied := _authorized(request, {engine.endpoint.api_key, self.config.api_key}, body):
            return denied
        cost = body.get("cost", 100)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
            return _error(422, "cost: expected a number >= 0")
        request_idx = _int(body.get("request_idx", 0))
        if request_idx is None or request_idx < 0:
            return _error(422, "request_idx: expected an integer >= 0 (0 for a new request)")
        decision = engine.route(self.pool.clock(), request_idx, cost)
        if isinstance(decision, Ready):
            url = decision.worker.url
            return web.json_response({
                "endpoint": name, "url": url, "cost": cost, "reqnum": decision.reqnum,
                "request_idx": decision.request_idx, "signature": self.signer.sign(url),
            })  # fmt: skip
        waiting = {"endpoint": name, "status": _breakdown(engine), "__request_id": secrets.token_hex(8)}
        if self.config.lenient.waiting_request_idx:
            waiting["request_idx"] = decision.request_idx
        return web.json_response(waiting)

    async def workers(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        endpoint_id = _int(body.get("id"))
        if endpoint_id is None:
            return _error(422, "id: expected the endpoint's integer id")
        engine = self.pool.engine_by_id(endpoint_id)
        if engine is None:
            return _error(404, f"endpoint {endpoint_id} not found")
        if denied := _authorized(request, {self.config.api_key, engine.endpoint.api_key}, body):
            return denied
        return web.json_response(engine.sdk_workers())

    # -- what workers call -----------------------------------------------------------------------

    async def pubkey(self, request: web.Request) -> web.Response:
        return web.Response(text=self.signer.public_pem)

    @staticmethod
    def _refused(why: str | None) -> web.Response:
        if why is None:
            return web.json_response({"success": True})
        return _error(401 if why == "bad mtoken" else 404, why)

    async def worker_status(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        if _int(body.get("id")) is None:
            return _error(422, "id: expected the worker's integer id")
        return self._refused(self.pool.worker_status(body))

    async def delete_requests(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        worker_id = _int(body.get("worker_id"))
        if worker_id is None:
            return _error(422, "worker_id: expected the worker's integer id")
        requests, idxs = body.get("requests"), body.get("request_idxs")
        rejected: list[int] = []
        if isinstance(requests, list) and all(isinstance(r, dict) and _int(r.get("request_idx")) is not None
                                              for r in requests):  # fmt: skip
            found = [r["request_idx"] for r in requests]
            rejected = [r["request_idx"] for r in requests if r.get("status") == "Rejected"]
        elif isinstance(idxs, list) and all(_int(i) is not None for i in idxs):
            found = idxs
        else:
            return _error(422, "expected requests: [{request_idx, ...}] or request_idxs: [int, ...]")
        return self._refused(self.pool.delete_requests(worker_id, body.get("mtoken"), found, rejected))

    async def worker_events(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        worker_id, events = _int(body.get("worker_id")), body.get("events")
        if worker_id is None or not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return _error(422, "expected {worker_id: int, mtoken, events: [{event, session_id, t, ...}]}")
        return self._refused(self.pool.worker_events(worker_id, body.get("mtoken"), events))

    # -- /_emulator ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self.pool.clock()
        endpoints = []
        for endpoint in self.config.endpoints:
            engine = self.pool.engines[endpoint.name]
            knobs = {k: self.config.knob(endpoint, k) for k in
                     ("cold_start_seconds", "resume_seconds", "price_per_hour", "storage_price_per_hour")}  # fmt: skip
            endpoints.append({
                "name": endpoint.name, "id": endpoint.id,
                "params": {**endpoint.public_params(), **knobs}, "workers": engine.worker_views(),
                "billing": engine.billing(now), "waiting": sorted(engine.waiting),
                "deleted_request_idxs": list(engine.deleted), "resume_failures": engine.resume_failures,
                "worker_log": list(engine.worker_log),
            })  # fmt: skip
        return {"time": now, "workers_kind": self.pool.kind_name, "worker_flavor": self.config.worker_flavor,
                "endpoints": endpoints, "session_log": list(self.pool.events),
                "faults": self.faults.as_dict(), "requests": dict(self.requests),
                "peak_in_flight": dict(self.peak_in_flight)}  # fmt: skip

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response({"faults": self.faults.as_dict()})

    async def set_faults(self, request: web.Request) -> web.Response:
        if denied := _authorized(request, {self.config.api_key}):
            return denied
        body = await _body(request)
        if isinstance(body, web.Response):
            return body
        try:
            faults = Faults.model_validate(body)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                        for e in exc.errors(include_url=False, include_input=False)]  # fmt: skip
            return _error(422, "; ".join(problems))
        if faults.endpoint is not None and faults.endpoint not in self.pool.engines:
            return _error(404, f"endpoint {faults.endpoint!r} not found")
        self.faults.update(faults)
        if "stuck_cold_starts" in faults.model_fields_set and not faults.stuck_cold_starts:
            # The fault is over: cold starts it held back finish now.
            for engine in self.pool.engines.values():
                for worker in engine.workers.values():
                    worker.stuck = False
        crashed: list[int] = []
        if faults.crash_worker is not None:
            crashed = self.pool.crash(faults.crash_worker, faults.endpoint)
            if not crashed and faults.crash_worker != "random":
                return _error(404, f"worker {faults.crash_worker} not found")
        return web.json_response({"success": True, "faults": self.faults.as_dict(), "crashed": crashed})


ROUTES = web.AppKey("routes", Routes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _breakdown(engine: Engine) -> str:
    """WAITING's `status`: the endpoint's workers by status, as Vast's /route/ describes them."""
    counts = Counter(SDK_STATUS[w.state] for w in engine.workers.values())
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "no workers"


def counting(routes: Routes) -> Callable:
    """Middleware: count every call, and the most under way at once, by route name (what tests check)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = getattr(request.match_info.route, "name", None)
        if name is None:
            return await handler(request)
        routes.requests[name] += 1
        routes.in_flight[name] += 1
        routes.peak_in_flight[name] = max(routes.peak_in_flight[name], routes.in_flight[name])
        try:
            return await handler(request)
        finally:
            routes.in_flight[name] -= 1

    return middleware


class RateLimiter:
    """Vast's web API limit: a token bucket per (route, key); over it, 429 without Retry-After."""

    def __init__(self, limit: RateLimit | None, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tokens, at)

    def allow(self, route: str, key: str) -> bool:
        if self.limit is None:
            return True
        now = self.clock()
        tokens, at = self._buckets.get((route, key), (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.per_second)
        if len(self._buckets) >= RATE_LIMIT_KEYS_KEPT:
            # Forget the keys whose bucket has refilled since: they are as good as new.
            refill = self.limit.burst / self.limit.per_second
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill}
        if tokens < 1:
            self._buckets[(route, key)] = (tokens, now)
            return False
        self._buckets[(route, key)] = (tokens - 1, now)
        return True

    def middleware(self) -> Callable:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            name = getattr(request.match_info.route, "name", None)
            identity = "|".join(sorted({str(key) for key in _given_keys(request)}))
            if name in WEB_API_ROUTES and not self.allow(name, identity):
                return _error(429, "API requests too frequent")
            return await handler(request)

        return middleware


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 404/405/413 pages as JSON errors, like every other refusal here."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


def build_app(config: EmulatorConfig) -> web.Application:
    """The application; `app[POOL]` holds the engines and workers, `app[ROUTES]` the handlers."""
    faults = FaultState(config.faults)
    signer = Signer()
    pool = WorkerPool(config, faults=faults, signer=signer)
    routes = Routes(config, pool, faults, signer)
    limiter = RateLimiter(config.web_api_rate_limit)
    app = web.Application(middlewares=[counting(routes), json_errors, limiter.middleware(), fault_middleware(faults)])
    app.add_routes(routes.table() + pool.inprocess.routes())
    app[POOL], app[ROUTES] = pool, routes
    return app


class EmulatorServer:
    """The app on a socket, its worker pool running; `url` is known once started."""

    def __init__(self, config: EmulatorConfig):
        self.config = config
        self.app = build_app(config)
        self.pool = self.app[POOL]
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None

    async def start(self) -> str:
        # handler_cancellation: a held /reserve ends when its client goes away, as on the worker.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise EmulatorConfigError(
                f"host/port: cannot listen on {self.config.host}:{self.config.port} ({exc.strerror})"
            ) from None
        port = self._runner.addresses[0][1]
        host = "127.0.0.1" if self.config.host in WILDCARD_HOSTS else self.config.host
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}"
        self.pool.base_url = (self.config.public_url or self.url).rstrip("/")
        self.pool.report_addr = self.url
        self._http = ClientSession(timeout=ClientTimeout(total=30))
        self.pool.start(self._http)
        return self.url

    async def stop(self) -> None:
        await self.pool.close()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()
