"""Admin HTTP API on the metrics server: scaler status, recent decisions, pause/resume, act/advise.

Reads are open like /metrics; changes need `Authorization: Bearer <admin_token>` and are off
when no token is configured. Every answer, errors included, is JSON. Described in docs/openapi.yaml.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, get_args

from aiohttp import web
from pydantic import SecretStr

from controller.config import Mode
from controller.server import BadRequest, json_object, read_body

log = logging.getLogger(__name__)

_Method = Callable[["_AdminAPI", web.Request], Awaitable[web.Response]]

MODES: tuple[Mode, ...] = get_args(Mode)


class ScalerControl(Protocol):
    """What the admin API needs of the controller. Unknown names never reach these methods."""

    def names(self) -> list[str]:
        """Every configured scaler, leading or not."""

    def status(self) -> list[dict[str, Any]]:
        """One entry per scaler: name, depth, target, sessions, leader, paused, mode, last_read_ok_at."""

    def pause(self, name: str) -> None:
        """Freeze the scaler's session count (idempotent)."""

    def resume(self, name: str) -> None:
        """Undo pause (idempotent)."""

    def set_mode(self, name: str, mode: Mode) -> None:
        """`act`: apply decisions; `advise`: decide and record only (a dry run)."""

    def decisions(self, scaler: str | None) -> list[dict[str, Any]]:
        """Recent decisions, oldest first, of one scaler or all."""


def admin_routes(control: ScalerControl, token: SecretStr | None) -> list[web.RouteDef]:
    """Routes to pass as MetricsServer(routes=...)."""
    api = _AdminAPI(control, token)
    # Each path takes every method so that a wrong one gets a JSON 405, not aiohttp's text one.
    return [
        web.route("*", "/status", api.status),
        web.route("*", "/decisions", api.decisions),
        web.route("*", "/scalers/{name}/pause", api.pause),
        web.route("*", "/scalers/{name}/resume", api.resume),
        web.route("*", "/scalers/{name}/mode", api.mode),
    ]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _only(*methods: str) -> Callable[[_Method], _Method]:
    """Allow `methods` only, and turn BadRequest and any bug into a JSON error."""

    def wrap(handler: _Method) -> _Method:
        @functools.wraps(handler)
        async def checked(self: _AdminAPI, request: web.Request) -> web.Response:
            if request.method not in methods:
                allowed = ", ".join(methods)
                return _error(405, f"method {request.method} not allowed; use {allowed}", {"Allow": allowed})
            try:
                return await handler(self, request)
            except BadRequest as exc:
                return _error(exc.status, str(exc), exc.headers)
            except Exception:
                log.exception("admin request failed", extra={"method": request.method, "path": request.path})
                return _error(500, "internal error; see the controller's log")

        return checked

    return wrap


class _AdminAPI:
    def __init__(self, control: ScalerControl, token: SecretStr | None):
        self._control = control
        # Bytes, so compare_digest also takes a header with non-ASCII characters.
        self._token = token.get_secret_value().encode() if token is not None else None

    @_only("GET", "HEAD")
    async def status(self, request: web.Request) -> web.Response:
        _check_query(request, ())
        return web.json_response({"scalers": self._control.status()})

    @_only("GET", "HEAD")
    async def decisions(self, request: web.Request) -> web.Response:
        _check_query(request, ("scaler",))
        scaler = request.query.get("scaler")
        if scaler is not None:
            self._known(scaler)
        return web.json_response({"decisions": self._control.decisions(scaler)})

    @_only("POST")
    async def pause(self, request: web.Request) -> web.Response:
        name, _ = await self._mutation(request)
        self._control.pause(name)
        log.info("admin: scaler paused", extra={"scaler": name, "remote": request.remote})
        return self._entry(name)

    @_only("POST")
    async def resume(self, request: web.Request) -> web.Response:
        name, _ = await self._mutation(request)
        self._control.resume(name)
        log.info("admin: scaler resumed", extra={"scaler": name, "remote": request.remote})
        return self._entry(name)

    @_only("POST")
    async def mode(self, request: web.Request) -> web.Response:
        name, raw = await self._mutation(request)
        body = json_object(raw, 'such as {"mode": "advise"}')
        unknown = sorted(set(body) - {"mode"})
        if unknown:
            raise BadRequest(400, f"body: unknown key {unknown[0]!r}; expected only 'mode'")
        mode = body.get("mode")
        if mode not in MODES:
            raise BadRequest(400, f"mode: expected one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self._control.set_mode(name, mode)
        log.info("admin: scaler mode set", extra={"scaler": name, "mode": mode, "remote": request.remote})
        return self._entry(name)

    async def _mutation(self, request: web.Request) -> tuple[str, bytes]:
        """Authorize a change; return the scaler it names and the body (capped even if unused)."""
        self._authorize(request)
        body = await read_body(request)
        name = request.match_info["name"]
        self._known(name)
        return name, body

    def _authorize(self, request: web.Request) -> None:
        if self._token is None:
            raise BadRequest(
                403,
                "admin changes are off: set admin_token or admin_token_file in the config "
                "(or VQS_ADMIN_TOKEN), then send Authorization: Bearer <token>",
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Constant time, so the token cannot be guessed byte by byte from response times.
        ok = hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"), self._token)
        if scheme.lower() != "bearer" or not ok:
            log.warning("admin: rejected request without a valid token",
                        extra={"path": request.path, "remote": request.remote})
            raise BadRequest(
                401,
                "missing or wrong token: send Authorization: Bearer <admin_token>",
                {"WWW-Authenticate": 'Bearer realm="vast-queue-scaler"'},
            )

    def _known(self, name: str) -> None:
        names = self._control.names()
        if name not in names:
            raise BadRequest(404, f"unknown scaler {name!r}; known: {', '.join(names) or 'none'}")

    def _entry(self, name: str) -> web.Response:
        entry = next((s for s in self._control.status() if s.get("name") == name), None)
        return web.json_response(entry)


def _check_query(request: web.Request, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) or "none"
        raise BadRequest(400, f"unknown query parameter {unknown[0]!r}; expected: {expected}")
