"""`running_emulator()`: the emulator on a free port in the current event loop, for tests.

    async with running_emulator(**RECOMMENDED_ENDPOINT, cold_start_seconds=0.5) as emu:
        client = Serverless(emu.api_key, autoscaler_url=emu.url, webserver_url=emu.url)
        ...
        state = await emu.state()

Overrides are top-level config fields, or endpoint fields applied to every endpoint. The
emulator's endpoint defaults are a new Vast endpoint's; RECOMMENDED_ENDPOINT is what this
project's users set in the Vast console, as the tests and the demo do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from controller.emulator.app import EmulatorServer
from controller.emulator.config import EmulatorConfig, build_config
from controller.emulator.workers import WorkerPool
from controller.endpoint_params import RECOMMENDED

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: The recommended parameters, and no cold workers (so an idle endpoint has no worker at all).
RECOMMENDED_ENDPOINT = {**RECOMMENDED, "cold_workers": 0, "cold_mult": 1.0}


@dataclass
class RunningEmulator:
    url: str  # base URL of both the web API and the autoscaler
    api_key: str  # the account key
    config: EmulatorConfig
    server: EmulatorServer

    @property
    def pool(self) -> WorkerPool:
        return self.server.pool

    @property
    def app(self) -> web.Application:
        return self.server.app

    def endpoint_key(self, name: str = "demo") -> str:
        return next(e.api_key for e in self.config.endpoints if e.name == name)

    async def state(self) -> dict[str, Any]:
        """GET /_emulator/state."""
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            async with http.get(f"{self.url}/_emulator/state") as response:
                response.raise_for_status()
                return await response.json()

    async def set_faults(self, faults: dict[str, Any]) -> dict[str, Any]:
        """POST /_emulator/faults with the account key; raises on a refused body."""
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            async with http.post(f"{self.url}/_emulator/faults", json=faults, headers=headers) as response:
                body = await response.json()
                if response.status != 200:
                    raise ValueError(f"faults refused (HTTP {response.status}): {body.get('error')}")
                return body


@contextlib.asynccontextmanager
async def running_emulator(config: EmulatorConfig | None = None, **overrides: Any) -> AsyncIterator[RunningEmulator]:
    """Start the emulator on a free port (unless `port=` is given); stop it and its workers after."""
    overrides.setdefault("port", 0)
    config = (config or build_config()).with_overrides(**overrides)
    server = EmulatorServer(config)
    await server.start()
    try:
        yield RunningEmulator(url=server.url, api_key=config.api_key, config=config, server=server)
    finally:
        await server.stop()
