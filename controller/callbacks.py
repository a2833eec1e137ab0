"""The session-closed callback: a worker's `on_close_route` tells the controller a session ended.

Each session is opened with `on_close_payload = {"scaler", "token"}`; the worker POSTs it back with
the `session_id` when the session closes (a consumer's release, expiry, an end). The token is
random per process, so only sessions this controller opened can report.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controller.server import BadRequest, read_json_object

CALLBACK_PATH = "/callbacks/session-closed"
_FIELDS = ("scaler", "token", "session_id")
_EXAMPLE = 'with string fields "scaler", "token" and "session_id"'


class CloseCallbacks:
    """Hands out the on_close route and payload; calls `released(scaler, session_id)` on each report."""

    def __init__(self, released: Callable[[str, str], None]):
        self._released = released
        self._token = secrets.token_urlsafe(24)

    def route(self, callback_url: str) -> str:
        return callback_url.rstrip("/") + CALLBACK_PATH

    def payload(self, scaler: str) -> dict[str, Any]:
        return {"scaler": scaler, "token": self._token}

    def routes(self) -> list[web.RouteDef]:
        # Every method, so that a wrong one gets a JSON 405 like the admin API's.
        return [web.route("*", CALLBACK_PATH, self._closed)]

    async def _closed(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return web.json_response({"error": f"method {request.method} not allowed; use POST"},
                                     status=405, headers={"Allow": "POST"})  # fmt: skip
        try:
            body = await read_json_object(request, _EXAMPLE)
            if not all(isinstance(body.get(name), str) for name in _FIELDS):
                raise BadRequest(400, f"body: expected a JSON object {_EXAMPLE}")
            # Bytes, so compare_digest also takes a token with non-ASCII characters.
            if not hmac.compare_digest(body["token"].encode("utf-8", "surrogatepass"), self._token.encode()):
                raise BadRequest(401, "bad token")
        except BadRequest as exc:
            return web.json_response({"error": str(exc)}, status=exc.status, headers=exc.headers)
        self._released(body["scaler"], body["session_id"])
        return web.json_response({"ok": True})
