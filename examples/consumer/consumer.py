"""Reference queue consumer that runs beside Vast's null PyWorker on an instance.

Loop: take one unit from the queue, work, ack; when no next unit is waiting, release this worker's
session with `POST http://127.0.0.1:$NULL_CONTROL_PORT/release`, so the controller's open sessions
keep matching the work in flight. Taking the next unit before releasing keeps a busy worker's
session on that worker instead of handing it back to the router, which might reserve another
worker and leave this one session-less.

Vast stops a worker it sees without a session whenever it has more active workers than sessions
need, and it routes a new session to a free worker of its choosing; the null worker does not tell
its consumer whether it holds a session. So a consumer takes no unit while its worker is likely
to be stopped: not before Vast has seen the worker ready and has had time to stop it if it booted
only as spare capacity (READY_SETTLE_SECONDS after the worker library's first health check of
`GET /health`, which it makes when it is ready; set the worker's BACKEND_HEALTH_URL to it), and
not within SETTLE_SECONDS after releasing (Vast stops it then if no session came). A unit cut
short anyway (a worker stopped or crashed) is taken over by another consumer after
CLAIM_IDLE_SECONDS (streams) or when this consumer restarts (lists).

Environment:
  QUEUE_URL          redis://host:port/db?stream=KEY&group=GROUP
                     or redis://host:port/db?list=KEY (processing list KEY:processing:NAME)
  NULL_CONTROL_PORT  the null worker's control port (default 18999)
  HEALTH_PORT        where /health is served (default 9090; 0 = off: readiness is then unknown,
                     and the first unit waits READY_SETTLE_SECONDS from the start)
  READY_SETTLE_SECONDS  after the worker is ready, before the first unit (12: the library's 10 s
                     report that tells Vast, and a little more)
  SETTLE_SECONDS     after a release, before the next unit (3)
  CONSUMER_NAME      default: VAST_WORKER_ID, CONTAINER_ID or the host name
  RESULTS_KEY        optional Redis list that receives one JSON line per finished unit
  CLAIM_IDLE_SECONDS stream units pending longer than this on a dead consumer are taken over (300)

Only the `redis` package and the standard library are needed. Replace `work()` with your own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis.asyncio as redis

log = logging.getLogger("consumer")
BLOCK_MS = 1000


async def work(job: dict[str, Any]) -> None:
    """The unit of work. The demo's jobs only say how long to take."""
    await asyncio.sleep(float(job.get("seconds", 1.0)))


def release_session(control_port: int, attempts: int = 5) -> None:
    """End this worker's session; retried because a missed release holds a GPU for a lease."""
    url = f"http://127.0.0.1:{control_port}/release"
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5):
                return
        except OSError as exc:
            log.warning("release failed (attempt %d): %s", attempt + 1, exc)
            time.sleep(min(5.0, 0.2 * 2**attempt))


def serve_health(port: int, checked: threading.Event) -> ThreadingHTTPServer:
    """`GET /health`; `checked` is set at the first one (the worker library is ready)."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            ok = self.path.rstrip("/") == "/health"
            if ok:
                checked.set()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}' if ok else b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class StreamQueue:
    """A Redis stream read through a consumer group: XREADGROUP, XACK, XAUTOCLAIM for the dead."""

    def __init__(self, client: redis.Redis, stream: str, group: str, name: str, claim_idle: float):
        self.client, self.stream, self.group, self.name = client, stream, group, name
        self.claim_idle_ms = int(claim_idle * 1000)

    async def setup(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, wait: bool = True) -> tuple[str, dict[str, Any]] | None:
        _, claimed, _ = await self.client.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, "0-0", count=1
        )
        if claimed:
            entry_id, fields = claimed[0]
            return entry_id, fields
        block = BLOCK_MS if wait else None
        reply = await self.client.xreadgroup(self.group, self.name, {self.stream: ">"}, count=1, block=block)
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        return entry_id, fields

    async def ack(self, entry_id: str) -> None:
        await self.client.xack(self.stream, self.group, entry_id)


class ListQueue:
    """The reliable-list pattern: BLMOVE into this consumer's processing list, LREM when done."""

    def __init__(self, client: redis.Redis, key: str, name: str):
        self.client, self.key = client, key
        self.processing = f"{key}:processing:{name}"

    async def setup(self) -> None:
        # Units a previous run of this consumer took but never finished go back to the queue.
        while await self.client.lmove(self.processing, self.key, "RIGHT", "RIGHT"):
            pass

    async def take(self, wait: bool = True) -> tuple[str, dict[str, Any]] | None:
        if wait:
            raw = await self.client.blmove(self.key, self.processing, BLOCK_MS / 1000, "RIGHT", "LEFT")
        else:
            raw = await self.client.lmove(self.key, self.processing, "RIGHT", "LEFT")
        return None if raw is None else (raw, json.loads(raw))

    async def ack(self, raw: str) -> None:
        await self.client.lrem(self.processing, 1, raw)


def open_queue(url: str, name: str, claim_idle: float) -> tuple[redis.Redis, StreamQueue | ListQueue]:
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    client = redis.from_url(
        urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        decode_responses=True,
        socket_timeout=BLOCK_MS / 1000 + 5,
        socket_connect_timeout=5,
    )
    if "stream" in params:
        return client, StreamQueue(client, params["stream"], params.get("group", "workers"), name, claim_idle)
    if "list" in params:
        return client, ListQueue(client, params["list"], name)
    raise SystemExit("QUEUE_URL needs ?stream=KEY&group=GROUP or ?list=KEY")


async def take(queue: StreamQueue | ListQueue, wait: bool) -> tuple[str, dict[str, Any]] | None:
    try:
        return await queue.take(wait)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("queue unreachable: %s", exc)
        if wait:
            await asyncio.sleep(1)
        return None


async def take_unless_stopped(queue: StreamQueue | ListQueue, stop: asyncio.Event) -> tuple[str, dict[str, Any]] | None:
    """A blocking take that gives up the moment we are told to stop, so no unit arrives after it."""
    read = asyncio.ensure_future(take(queue, wait=True))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if read.done():
        return read.result()
    read.cancel()
    return None


async def settle(seconds: float, stop: asyncio.Event) -> None:
    """Wait `seconds` (or until told to stop): if Vast is to stop this worker, let it be now."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def until_ready(checked: threading.Event | None, stop: asyncio.Event) -> None:
    """Until the worker library's first health check (nothing to wait for without one)."""
    while checked is not None and not checked.is_set() and not stop.is_set():
        await settle(0.2, stop)


async def consume(stop: asyncio.Event, checked: threading.Event | None = None) -> None:
    name = os.environ.get("CONSUMER_NAME") or os.environ.get("VAST_WORKER_ID") or os.environ.get(
        "CONTAINER_ID"
    ) or socket.gethostname()
    control_port = int(os.environ.get("NULL_CONTROL_PORT", "18999"))
    results_key = os.environ.get("RESULTS_KEY")
    ready_settle = float(os.environ.get("READY_SETTLE_SECONDS", "12"))
    release_settle = float(os.environ.get("SETTLE_SECONDS", "3"))
    client, queue = open_queue(
        os.environ["QUEUE_URL"], name, float(os.environ.get("CLAIM_IDLE_SECONDS", "300"))
    )
    await queue.setup()
    log.info("consumer %s started", name)
    await until_ready(checked, stop)
    await settle(ready_settle, stop)
    taken = None
    while not stop.is_set():
        taken = taken or await take_unless_stopped(queue, stop)
        if taken is None:
            continue
        handle, job = taken
        started = time.time()
        await work(job)  # a unit once started is finished, even when asked to stop
        await queue.ack(handle)
        if results_key:
            result = {**job, "worker": name, "started_at": started, "finished_at": time.time()}
            await client.rpush(results_key, json.dumps(result))
        taken = None if stop.is_set() else await take(queue, wait=False)
        if taken is None:
            await asyncio.to_thread(release_session, control_port)
            await settle(release_settle, stop)
    await client.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s consumer %(levelname)s %(message)s")
    health_port = int(os.environ.get("HEALTH_PORT", "9090"))
    checked = threading.Event() if health_port else None
    health = serve_health(health_port, checked) if checked is not None else None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await consume(stop, checked)

    try:
        asyncio.run(run())
    finally:
        if health is not None:
            health.shutdown()


if __name__ == "__main__":
    main()
