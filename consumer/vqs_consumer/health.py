"""`GET /health` (for the null worker's BACKEND_HEALTH_URL) and `GET /metrics`, served from a thread.

A thread, not the event loop: when a handler blocks the loop, /health must still answer, with 503.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vqs_consumer.metrics import Metrics
from vqs_consumer.settings import Settings


class Health:
    """Beats from the runner; stale beats mean the loop is stuck. Also tells when the worker first checked."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        #: Called (from the server's thread) at the first GET /health: the worker library is ready.
        self.on_first_check: Callable[[], None] = lambda: None
        self.checked = False
        now = time.monotonic()
        #: The event loop ran (a ticker task beats every second).
        self.loop_beat = now
        #: The consume loop made progress: a take returned, or a held unit's lease was renewed.
        self.step_beat = now
        self.state = "starting"

    def beat_loop(self) -> None:
        self.loop_beat = time.monotonic()

    def step(self, state: str | None = None) -> None:
        self.step_beat = time.monotonic()
        if state is not None:
            self.state = state

    def checked_by_worker(self) -> None:
        if not self.checked:
            self.checked = True
            self.on_first_check()

    def report(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        loop_age, step_age = now - self.loop_beat, now - self.step_beat
        # While starting (the handler importing, a model loading) there is no loop to be stuck yet.
        ok = self.state == "starting" or (loop_age < self.stuck_after and step_age < self.stuck_after)
        return ok, {"ok": ok, "state": self.state, "loop_age": round(loop_age, 3), "step_age": round(step_age, 3)}


class Monitor:
    """A runner's metrics and health, and the server of both (when `health_port` is set)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = Health(settings.stuck_after)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        """Serve now (again a no-op): before a slow handler import, so the worker's first check finds it."""
        if self._server is None and self.settings.health_port:
            self._server = serve(self.settings.health_host, self.settings.health_port, self.health, self.metrics.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve(host: str, port: int, health: Health, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; `shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # seconds a client may take to send its request

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health":
                health.checked_by_worker()
                ok, body = health.report()
                self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            else:
                self._send(404, "application/json", b'{"error": "not found; try /health or /metrics"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass  # health checks every few seconds would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="vqs-consumer-health", daemon=True).start()
    return server
