"""Injected faults: per-route latency, error statuses and hangs; stuck cold starts; worker crashes.

Set in the config (`faults:`) or at run time with `POST /_emulator/faults` (same shape):

    routes:                       # by route name (ROUTE_NAMES) or "*" for every emulated route
      route: {latency: 0.2, errors: {"429": 0.3, "503": 0.1}, hang: 0.05, hang_seconds: 30}
    stuck_cold_starts: 2          # the next 2 workers to boot never finish loading (true = all)
    resume_failure: 0.5           # the chance a stopped worker's resume fails (null: the config's)
    crash_worker: random          # one-shot: kill a worker (an id, or "random"); `endpoint` narrows it
    deleted_endpoints: [demo]     # as if deleted in the console: not listed, not routed (404); [] restores

Route faults apply to the emulator's own routes (web API, autoscaler, report routes and the
in-process workers' routes); a process worker's own HTTP server is a separate process and is not
faulted (crash it instead). A hang holds the request for hang_seconds (or until the client goes
away), then answers 504.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

ROUTE_NAMES = (
    "endptjobs", "endptjob", "route", "get_endpoint_workers", "pubkey", "worker_status", "delete_requests",
    "session_create", "session_end", "session_get", "session_health", "handler", "control_release",
    "control_health",
)  # fmt: skip


class RouteFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency: float = Field(default=0.0, ge=0)  # seconds added before answering
    errors: dict[int, float] = Field(default_factory=dict)  # HTTP status -> probability
    hang: float = Field(default=0.0, ge=0, le=1)  # probability of never answering (until hang_seconds)
    hang_seconds: float = Field(default=3600.0, ge=0)

    @field_validator("errors")
    @classmethod
    def _statuses(cls, errors: dict[int, float]) -> dict[int, float]:
        for status, probability in errors.items():
            if not 400 <= status <= 599:
                raise ValueError(f"status {status}: expected an HTTP error status 400-599")
            if not 0 <= probability <= 1:
                raise ValueError(f"status {status}: probability must be within 0..1")
        if sum(errors.values()) > 1:
            raise ValueError("the error probabilities add up to more than 1")
        return errors


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: dict[str, RouteFault] = Field(default_factory=dict)
    stuck_cold_starts: int | bool = Field(default=0, ge=0)
    resume_failure: float | None = Field(default=None, ge=0, le=1)
    crash_worker: int | Literal["random"] | None = None
    endpoint: str | None = None  # narrows crash_worker: "random" to one endpoint
    deleted_endpoints: list[str] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, routes: dict[str, RouteFault]) -> dict[str, RouteFault]:
        unknown = sorted(set(routes) - {*ROUTE_NAMES, "*"})
        if unknown:
            raise ValueError(f"unknown route(s) {', '.join(unknown)}; known: *, {', '.join(ROUTE_NAMES)}")
        return routes


class FaultState:
    """The faults in force; a fresh `Faults` value updates only the fields it sets."""

    def __init__(self, faults: Faults):
        self.routes: dict[str, RouteFault] = {}
        self.stuck_cold_starts: int | bool = 0
        self.resume_failure: float | None = None
        self.deleted_endpoints: set[str] = set()
        self.random = random.Random()
        self.update(faults)

    def update(self, faults: Faults) -> None:
        given = faults.model_fields_set
        if "routes" in given:
            self.routes = dict(faults.routes)
        if "stuck_cold_starts" in given:
            self.stuck_cold_starts = faults.stuck_cold_starts
        if "resume_failure" in given:
            self.resume_failure = faults.resume_failure
        if "deleted_endpoints" in given:
            self.deleted_endpoints = set(faults.deleted_endpoints)
        if faults.seed is not None:
            self.random.seed(faults.seed)

    def take_stuck(self) -> bool:
        """Whether the worker booting now never finishes (consumes one of a counted fault)."""
        if self.stuck_cold_starts is True:
            return True
        if self.stuck_cold_starts:
            self.stuck_cold_starts -= 1
            return True
        return False

    def as_dict(self) -> dict:
        return {
            "routes": {name: fault.model_dump() for name, fault in self.routes.items()},
            "stuck_cold_starts": self.stuck_cold_starts,
            "resume_failure": self.resume_failure,
            "deleted_endpoints": sorted(self.deleted_endpoints),
        }

    def for_route(self, name: str | None) -> RouteFault | None:
        if name not in ROUTE_NAMES:
            return None  # the /_emulator routes are never faulted
        return self.routes.get(name) or self.routes.get("*")


def fault_middleware(state: FaultState) -> Callable:
    """aiohttp middleware applying the route faults before the real handler runs."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route
        fault = state.for_route(getattr(route, "name", None))
        if fault is None:
            return await handler(request)
        if fault.latency:
            await asyncio.sleep(fault.latency)
        roll = state.random.random()
        if roll < fault.hang:
            await asyncio.sleep(fault.hang_seconds)
            return web.json_response({"error": "injected fault: hang"}, status=504)
        roll = state.random.random()
        for status, probability in sorted(fault.errors.items()):
            if roll < probability:
                return web.json_response({"error": f"injected fault: HTTP {status}"}, status=status)
            roll -= probability
        return await handler(request)

    return middleware
