"""The demo's queue: the Redis at REDIS_URL (or localhost) when one answers, else an embedded one.

The embedded server is fakeredis's `TcpFakeServer` in a child process of its own, so the
consumers' and the controller's traffic does not compete with the demo's event loop for the GIL.
Run as `python -m controller.demo.queue PORT`; it prints `ready` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from dataclasses import dataclass

import redis.asyncio as redis

from controller.demo.processes import die_with_parent
from controller.sources import mask_url

DEFAULT_URL = "redis://127.0.0.1:6379/0"
PING_TIMEOUT = 1.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


@dataclass
class Queue:
    """Where the demo's queue lives: `url` (no query), `kind` for the user, and how to stop it."""

    url: str
    kind: str  # "redis" or "embedded"
    process: asyncio.subprocess.Process | None = None
    tried: str | None = None  # the Redis that did not answer, for an embedded queue

    @property
    def description(self) -> str:
        """For the user; a password in a URL shows as ***."""
        if self.kind == "embedded":
            why = f"no Redis answered at {mask_url(self.tried)}" if self.tried else "started on request"
            return f"embedded Redis-protocol server (fakeredis) at {self.url}: {why}"
        return f"Redis at {mask_url(self.url)}"

    async def close(self) -> None:
        """Stop the embedded server (a reachable Redis is left as it was)."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


async def reachable(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """True when a Redis answers PING at `url` within `timeout`."""
    client = redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (redis.RedisError, OSError, asyncio.TimeoutError, ValueError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def open_queue(url: str | None = None) -> Queue:
    """`url`, else $REDIS_URL, else localhost when reachable; otherwise start the embedded server."""
    url = url or os.environ.get("REDIS_URL") or DEFAULT_URL
    if await reachable(url):
        return Queue(url=url.split("?", 1)[0], kind="redis")
    queue = await start_embedded()
    queue.tried = url
    return queue


async def start_embedded() -> Queue:
    """Start `python -m controller.demo.queue 0` and wait for the port it reports."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.demo.queue", "0",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        process_group=0, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        port = int(line.split()[1])
    except (asyncio.TimeoutError, ValueError, IndexError):
        process.kill()
        await process.wait()
        raise RuntimeError(
            "the embedded Redis-protocol server did not start (is fakeredis installed?)"
        ) from None
    return Queue(url=f"redis://127.0.0.1:{port}/0", kind="embedded", process=process)


def _patch_blocking_stream_reads() -> None:
    """Make XREADGROUP COUNT n BLOCK ms wait for entries, and never hand them to a closed client.

    fakeredis (2.40) answers an empty COUNT+BLOCK read at once instead of blocking, so the
    reference consumer would poll the embedded server in a tight loop: an empty first pass is
    returned as None, which makes fakeredis wait on its database's condition. And unlike Redis it
    does not notice a client that disconnects while blocked (a stopped worker's consumer): woken
    by a write, it would deliver the entry to that dead client, where it would stay pending. So a
    woken read answers empty without reading, and the consumer simply reads again.
    """
    from fakeredis.commands_mixins.streams_mixin import StreamsCommandsMixin

    original = StreamsCommandsMixin._xreadgroup

    @functools.wraps(original)
    def _xreadgroup(self, consumer, group_params, count, noack, min_idle_time, first_pass):  # type: ignore[no-untyped-def]
        if getattr(self, "_blocked", False):  # set by fakeredis while a blocking command waits
            return {}
        result = original(self, consumer, group_params, count, noack, min_idle_time, first_pass)
        return None if first_pass and not result else result

    StreamsCommandsMixin._xreadgroup = _xreadgroup  # type: ignore[method-assign]


def serve(port: int) -> None:
    """Serve a fakeredis TCP server on 127.0.0.1:`port` until SIGTERM; print `ready PORT`."""
    import threading

    from fakeredis import TcpFakeServer

    _patch_blocking_stream_reads()
    server = TcpFakeServer(("127.0.0.1", port))
    server.daemon_threads = True  # connections still open at exit must not hold the process
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"ready {server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
