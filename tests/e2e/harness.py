"""Run the real controller (`vast-queue-scaler run`) as a subprocess and watch it from outside."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import yaml
from support import eventually, free_port

from controller.child import start_controller
from controller.demo.observe import Samples, metric_samples
from controller.emulator.testing import RECOMMENDED_ENDPOINT, RunningEmulator

#: The endpoint as a user sets it up, and fast worker timings: the tests are about the controller,
#: not about waiting for GPUs. Everything else is the emulator's default: Vast as documented.
EMULATOR_TIMINGS = {**RECOMMENDED_ENDPOINT, "cold_start_seconds": 0.5, "resume_seconds": 0.2}

#: The sessions' lease in these tests (the controller's default is longer).
LEASE_SECONDS = 10

#: A recognisable account key: no log line or metric may ever contain it.
API_KEY = "vqs-e2e-" + secrets.token_hex(16)



#: The e2e name for the shared poller.
wait_for = eventually


class ControllerProcess:
    """One `vast-queue-scaler run` with a config written to `workdir`; logs go to a file."""

    def __init__(self, workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.port = config.setdefault("metrics_port", free_port())
        if "state_url" not in config:
            config.setdefault("state_dir", str(workdir / "state"))
        config.setdefault("log_format", "json")
        self.config = config
        self.config_path = workdir / "config.yaml"
        self.log_path = workdir / "controller.log"
        self.env = env or {}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ControllerProcess:
        await self.launch()
        await wait_for(self._healthy, 30, what="controller /healthz")
        return self

    async def launch(self) -> asyncio.subprocess.Process:
        """Start the process without waiting for it to serve (it may be meant to exit)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            self.proc = await start_controller(self.config_path, log, env=self.env)
        return self.proc

    async def _healthy(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"controller exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
        try:
            return (await self.get("/healthz"))[0] == 200
        except aiohttp.ClientError:
            return False

    async def get(self, path: str) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(self.url + path) as response:
                return response.status, await response.text()

    async def metrics(self) -> Samples:
        """Every sample of /metrics: (name, sorted labels) -> value."""
        _, text = await self.get("/metrics")
        return metric_samples(text)

    async def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when absent)."""
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, float]:
        """Send `sig` and wait; returns (exit code, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        return code, time.monotonic() - started

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class PausableProxy:
    """A TCP proxy in front of a server; `down()` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._pipes.discard(task)
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


class StreamQueue:
    """A Redis stream with a consumer group, named uniquely for one test."""

    def __init__(self, client: aioredis.Redis, url: str):
        tag = uuid.uuid4().hex[:10]
        self.client, self.stream, self.group = client, f"e2e:{tag}:jobs", "workers"
        self.source_url = f"{url}?stream={self.stream}&group={self.group}" if "?" not in url else url

    async def setup(self) -> None:
        await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)

    async def add(self, n: int = 1, **fields: Any) -> list[str]:
        return [await self.client.xadd(self.stream, {"job": str(i), **fields}) for i in range(n)]

    async def take(self, consumer: str, n: int = 1) -> list[str]:
        reply = await self.client.xreadgroup(self.group, consumer, {self.stream: ">"}, count=n)
        return [entry_id for _, entries in reply for entry_id, _ in entries]

    async def ack(self, *entry_ids: str) -> None:
        await self.client.xack(self.stream, self.group, *entry_ids)

    async def cleanup(self) -> None:
        await self.client.delete(self.stream)


def scaler_config(emulator: RunningEmulator, source: str, **session: Any) -> dict[str, Any]:
    """A one-scaler controller config against the emulator's `demo` endpoint."""
    return {
        "vast": {"api_key": emulator.api_key, "url": emulator.url},
        "scalers": [
            {
                "name": "jobs",
                "source": source,
                "endpoint": "demo",
                "poll_interval": 0.5,
                "policy": {"scale_down_delay": 2},
                "session": {"lease_seconds": LEASE_SECONDS, **session},
            }
        ],
    }


def assert_no_secrets(text: str, where: str) -> None:
    """Neither the account key nor any session's auth_data (its signature) may leak."""
    assert API_KEY not in text, f"the account API key leaked into {where}"
    assert "signature" not in text, f"auth_data leaked into {where}"


def sessions_on(state: dict[str, Any], endpoint: str = "demo") -> list[dict[str, Any]]:
    (ep,) = [e for e in state["endpoints"] if e["name"] == endpoint]
    return [s | {"worker": w} for w in ep["workers"] for s in w["sessions"]]


async def release(worker: dict[str, Any]) -> None:
    """What the consumer on that worker does when its unit is done."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.post(worker["control_url"].rstrip("/") + "/release") as response:
            assert response.status == 200, await response.text()


async def sessions(emulator) -> list[dict[str, Any]]:
    return sessions_on(await emulator.state())


async def no_sessions(emulator) -> bool:
    return not sessions_on(await emulator.state())


async def metric_is(controller, name: str, value: float) -> bool:
    return await controller.metric(name, scaler="jobs") == value


async def count(emulator) -> int:
    return len(sessions_on(await emulator.state()))


async def creates(emulator) -> int:
    return sum(1 for event in (await emulator.state())["session_log"] if event["event"] == "create")


async def none_left(emulator) -> bool:
    return await count(emulator) == 0


async def post(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.post(url, json=body, headers=headers) as response:
            return response.status, await response.json()


def log_events(state: dict[str, Any], event: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The emulator's session log entries of one event (and kind: session or reservation)."""
    return [e for e in state["session_log"] if e["event"] == event and (kind is None or e.get("kind") == kind)]
