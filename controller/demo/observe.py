"""One look at the whole demo: the queue, the controller's /metrics and the emulator's state."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import redis.asyncio as redis
from prometheus_client.parser import text_string_to_metric_families

from controller.demo.report import Sample
from controller.sources import Source, SourceError

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=3)
#: The emulator hears that a session ended from its worker's next report (the null worker sends
#: them every 0.1 s, retried): a session the controller closed just before it exited may still
#: show for a moment, longer on a busy machine.
SETTLE_SECONDS, SETTLE_POLL = 2.0, 0.1


class ObserveError(Exception):
    """A part of the system did not answer; the message names which."""


#: A /metrics page's samples: (name, sorted labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> Samples:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def parse_metrics(text: str, scaler: str) -> dict[str, float]:
    """The `scaler`'s samples (and unlabelled ones) from a /metrics page: name -> value."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("scaler", scaler) == scaler and len(sample.labels) <= 1:
                values[sample.name] = sample.value
    return values


def workers_by_state(state: dict[str, Any], endpoint: str) -> Counter[str]:
    """How many of `endpoint`'s workers are in each state, from GET /_emulator/state."""
    for entry in state.get("endpoints", []):
        if entry.get("name") == endpoint:
            return Counter(worker["state"] for worker in entry.get("workers", []))
    return Counter()


def billing(state: dict[str, Any], endpoint: str) -> dict[str, float]:
    for entry in state.get("endpoints", []):
        if entry.get("name") == endpoint:
            return {key: float(value) for key, value in entry.get("billing", {}).items()}
    return {}


def sessions_held(state: dict[str, Any], endpoint: str) -> int:
    """Sessions the emulator's workers of `endpoint` still hold."""
    for entry in state.get("endpoints", []):
        if entry.get("name") == endpoint:
            return sum(len(worker.get("sessions", [])) for worker in entry.get("workers", []))
    return 0


async def settled_state(emulator: Any, endpoint: str, within: float = SETTLE_SECONDS) -> dict[str, Any]:
    """The emulator's state once its workers have reported the sessions that ended: read until
    none of `endpoint`'s shows, or for `within` seconds (then what still shows was left open)."""
    deadline = time.monotonic() + within
    while True:
        state = await emulator.state()
        if sessions_held(state, endpoint) == 0 or time.monotonic() >= deadline:
            return state
        await asyncio.sleep(SETTLE_POLL)


class Observer:
    """Reads the three parts in parallel; each read has a timeout."""

    def __init__(
        self,
        *,
        source: Source,
        results: redis.Redis,
        results_key: str,
        metrics_url: str,
        emulator_url: str,
        scaler: str,
        endpoint: str,
    ):
        self.source = source
        self.results = results
        self.results_key = results_key
        self.metrics_url = metrics_url
        self.emulator_url = emulator_url
        self.scaler = scaler
        self.endpoint = endpoint
        self.http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        self.metrics: dict[str, float] = {}
        self.emulator: dict[str, Any] = {}

    async def sample(self, t0: float) -> Sample:
        """A Sample stamped with seconds since `t0` (a time.monotonic() value)."""
        depth, metrics, emulator, done = await asyncio.gather(
            self._depth(), self._metrics(), self._emulator(), self._done()
        )
        self.metrics, self.emulator = metrics, emulator
        return Sample(
            t=round(time.monotonic() - t0, 2),
            waiting=depth.waiting,
            in_flight=depth.in_flight,
            sessions_open=int(metrics.get("vqs_sessions_open", 0)),
            sessions_opening=int(metrics.get("vqs_sessions_opening", 0)),
            workers=dict(workers_by_state(emulator, self.endpoint)),
            jobs_done=done,
        )

    async def _depth(self) -> Any:
        try:
            return await self.source.depth()
        except SourceError as exc:
            raise ObserveError(f"queue: {exc}") from None

    async def _metrics(self) -> dict[str, float]:
        try:
            async with self.http.get(f"{self.metrics_url}/metrics") as response:
                response.raise_for_status()
                return parse_metrics(await response.text(), self.scaler)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ObserveError(f"controller /metrics at {self.metrics_url}: {exc!r}") from None

    async def _emulator(self) -> dict[str, Any]:
        try:
            async with self.http.get(f"{self.emulator_url}/_emulator/state") as response:
                response.raise_for_status()
                return await response.json()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ObserveError(f"emulator state at {self.emulator_url}: {exc!r}") from None

    async def _done(self) -> int:
        try:
            return int(await self.results.llen(self.results_key))
        except (redis.RedisError, OSError) as exc:
            raise ObserveError(f"results list {self.results_key}: {exc}") from None

    async def close(self) -> None:
        await self.http.close()
