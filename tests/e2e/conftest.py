"""Fixtures for end-to-end tests: the emulator, a Redis stream queue, controllers as processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from harness import API_KEY, EMULATOR_TIMINGS, ControllerProcess, StreamQueue, assert_no_secrets

from controller.emulator.testing import RunningEmulator, running_emulator


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(api_key=API_KEY, **EMULATOR_TIMINGS) as emu:
        yield emu


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[StreamQueue]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    q = StreamQueue(client, redis_url)
    await q.setup()
    yield q
    await q.cleanup()
    await client.aclose()


@pytest.fixture
async def controllers(tmp_path: Path) -> AsyncIterator[Callable[..., ControllerProcess]]:
    """Make controller processes; every one still running at the end is killed."""
    made: list[ControllerProcess] = []

    def make(config: dict[str, Any], name: str = "controller") -> ControllerProcess:
        proc = ControllerProcess(tmp_path / name, config)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        if proc.proc is not None and proc.proc.returncode is None:
            proc.kill9()
            await proc.proc.wait()
    for proc in made:
        assert_no_secrets(proc.logs(), where=f"{proc.log_path}")
