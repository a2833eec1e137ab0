"""`GET /health` (for the null worker's BACKEND_HEALTH_URL) and `GET /metrics`, served from a thread.

A thread, not the event loop: when a handler blocks the loop, /health must still answer, with 503.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Health:
    """Beats from the runner; stale beats mean the loop is stuck."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
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

    def report(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        loop_age, step_age = now - self.loop_beat, now - self.step_beat
        ok = loop_age < self.stuck_after and step_age < self.stuck_after
        return ok, {"ok": ok, "state": self.state, "loop_age": round(loop_age, 3), "step_age": round(step_age, 3)}


def serve(host: str, port: int, health: Health, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """Start the server in a daemon thread; `shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 5  # seconds a client may take to send its request

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health":
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
