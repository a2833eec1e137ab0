"""The controller's HTTP server: /metrics, /healthz, /readyz, plus routes the caller adds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from controller.metrics import Metrics

#: Open keep-alive connections (a scraper's) must not hold up the controller's exit.
SHUTDOWN_TIMEOUT = 2.0

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
        # Callbacks and admin bodies are tiny; a cap keeps a bad client from buffering megabytes.
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
