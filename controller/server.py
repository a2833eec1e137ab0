"""The controller's HTTP server: /metrics, /healthz, /readyz, plus routes the caller adds.

Routes that take a body read it with `read_json_object`: capped, timed, and any malformed, deep
or huge body answered 4xx, never 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from controller.metrics import Metrics

#: Open keep-alive connections (a scraper's) must not hold up the controller's exit.
SHUTDOWN_TIMEOUT = 2.0
#: Largest request body any route accepts; the biggest real one (a close callback) is ~200 bytes.
MAX_BODY = 4096
#: A client that sends its small body slower than this is cut off (408).
BODY_TIMEOUT = 5.0


class BadRequest(Exception):
    """Ends a request with a 4xx JSON error; the message says what was expected."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


async def read_body(request: web.Request) -> bytes:
    """The body, at most MAX_BODY bytes (413 beyond), read within BODY_TIMEOUT (408 beyond)."""
    too_large = BadRequest(413, f"body: larger than {MAX_BODY} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large
    # Read from the stream, not request.read(): that would accept up to the app's whole cap.
    chunks = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while len(chunks) <= MAX_BODY:
                chunk = await request.content.read(MAX_BODY + 1 - len(chunks))
                if not chunk:
                    break
                chunks += chunk
    except TimeoutError:
        raise BadRequest(408, f"body: not received within {BODY_TIMEOUT:g} s") from None
    if len(chunks) > MAX_BODY:
        raise too_large
    return bytes(chunks)


def json_object(raw: bytes, example: str) -> dict[str, Any]:
    """`raw` as a JSON object, else a 400 naming what was expected (`example`)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested document
        raise BadRequest(400, f"body: expected a JSON object {example}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"body: expected a JSON object {example}")
    return body


async def read_json_object(request: web.Request, example: str) -> dict[str, Any]:
    return json_object(await read_body(request), example)

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class MetricsServer:
    """Serves one Metrics registry and the health endpoints on host:port (port 0: any free one)."""

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        *,
        readiness: Readiness,
        routes: Iterable[web.RouteDef] = (),
    ):
        self.metrics = metrics
        self.host = host
        self._requested_port = port
        self._readiness = readiness
        # Bodies are tiny (read_body caps each at MAX_BODY); this is aiohttp's own backstop.
        self._app = web.Application(client_max_size=64 * 1024)
        self._app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                *routes,
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address is taken."""
        # No access log: a scrape every few seconds would drown the controller's own lines.
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        # prometheus_client's own content negotiation: text format, or OpenMetrics when asked.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.metrics.registry), headers={"Content-Type": content_type})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, details = self._readiness()
        return web.json_response({"ready": ready, **details}, status=200 if ready else 503)
