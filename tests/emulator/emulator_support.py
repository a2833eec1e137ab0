"""Shared helpers for the emulator tests: the real SDK client, polling, raw HTTP, log checks."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp

try:
    from vastai import Serverless
except ImportError:  # pragma: no cover - older wheels export it only here
    from vastai.serverless import Serverless

from controller.emulator.testing import RunningEmulator
from controller.vast import sdk_client

HTTP = aiohttp.ClientTimeout(total=15)
# The SDK logs every failed call at ERROR and whole route responses at DEBUG.
for _name in ("vastai", "Serverless", "CoroutineServerless"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def sdk(emu: RunningEmulator, **kwargs: Any) -> Serverless:
    """The unchanged SDK pointed at the emulator (a ready SSL context: no certificate download)."""
    return sdk_client(emu.api_key, autoscaler_url=emu.url, webserver_url=emu.url, **kwargs)




async def call(method: str, url: str, body: Any = None, *, raw: str | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP call; the body parsed as JSON when it is JSON."""
    async with aiohttp.ClientSession(timeout=HTTP) as http:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with http.request(method, url, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else None
            except ValueError:
                return response.status, text


def endpoint_state(state: dict, name: str = "demo") -> dict:
    return next(e for e in state["endpoints"] if e["name"] == name)


def workers_by_state(state: dict, name: str = "demo") -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker in endpoint_state(state, name)["workers"]:
        counts[worker["state"]] = counts.get(worker["state"], 0) + 1
    return counts


def max_concurrent_per_worker(session_log: list[dict]) -> dict[int, int]:
    """From the session log: the most sessions each worker ever held at once."""
    open_now: dict[int, int] = {}
    peak: dict[int, int] = {}
    for event in sorted(session_log, key=lambda e: (e["t"], e["event"] == "create")):
        if event.get("kind") == "reservation":
            continue
        worker = event["worker_id"]
        open_now[worker] = open_now.get(worker, 0) + (1 if event["event"] == "create" else -1)
        peak[worker] = max(peak.get(worker, 0), open_now[worker])
    return peak
