"""One task per scaler: read the depth, decide, apply, record; on a schedule or when woken.

Polling is the source of truth; sources that can push (`watch()`) only wake the loop early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Awaitable, Callable, Protocol

from controller.admin import DecisionLog, decision_record
from controller.config import PolicyConfig
from controller.policy import Decision, PolicyState, Supply, decide
from controller.sources import QueueDepth, Source, SourceError, WatchableSource

log = logging.getLogger(__name__)

#: Wake-ups closer together than this are merged: a busy queue must not turn into a busy loop.
MIN_TICK_GAP = 0.05
_JITTER = 0.1


async def _always() -> bool:
    return True


class Actuator(Protocol):
    """What the loop needs of a pool: how many sessions exist, and a way to change that."""

    @property
    def supply(self) -> Supply: ...

    def apply(self, decision: Decision) -> None: ...


class ScalerLoop:
    """Keeps one scaler's sessions equal to its queue's work."""

    def __init__(
        self,
        name: str,
        source: Source,
        pool: Actuator,
        policy: PolicyConfig,
        poll_interval: float,
        metrics: Any,
        *,
        acting: Callable[[], Awaitable[bool]] | None = None,
        mode: str = "act",
        decisions: DecisionLog | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.name = name
        self.source = source
        self.pool = pool
        self.policy = policy
        self.poll_interval = poll_interval
        self._metrics = metrics
        metrics.set_paused(name, policy.paused)
        self._acting = acting or _always
        #: "act" opens and closes sessions; "advise" only computes, logs and exports decisions.
        self.mode = mode
        self._decisions = decisions
        self._clock = clock
        self._wake = asyncio.Event()
        self.state = PolicyState()
        self.last_depth: QueueDepth | None = None
        self.last_decision: Decision | None = None
        self.last_read_ok_at: float | None = None

    def wake(self) -> None:
        """Run the next tick now (a push from the queue, a released session)."""
        self._wake.set()

    async def run(self) -> None:
        watcher = None
        if isinstance(self.source, WatchableSource):
            watcher = asyncio.create_task(self._watch(), name=f"watch-{self.name}")
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.tick()
                except Exception:
                    # A bug in one tick must not stop the scaler; the next tick starts afresh.
                    log.exception("scaler tick failed", extra={"scaler": self.name})
                elapsed = time.monotonic() - started
                self._metrics.record_loop(self.name, elapsed)
                delay = self.poll_interval * random.uniform(1 - _JITTER, 1 + _JITTER) - elapsed
                await self._sleep(max(MIN_TICK_GAP, delay))
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _watch(self) -> None:
        assert isinstance(self.source, WatchableSource)
        try:
            async for _ in self.source.watch():
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("queue wake-ups stopped; polling only", extra={"scaler": self.name, "error": str(exc)})

    async def tick(self) -> Decision:
        started = time.monotonic()
        depth: QueueDepth | None
        try:
            depth = await self.source.depth()
        except SourceError as exc:
            depth = None
            log.warning("queue depth read failed", extra={"scaler": self.name, "error": str(exc)})
        now = self._clock()
        self._metrics.record_read(self.name, depth, time.monotonic() - started, now)
        if depth is not None:
            self.last_read_ok_at = now
        self.last_depth = depth
        supply = self.pool.supply
        previous = self.last_decision
        decision = decide(depth, supply, self.policy, now, self.state)
        self.state = decision.state
        self.last_decision = decision
        self._metrics.record_decision(self.name, decision, supply)
        acts = bool(decision.open or decision.cancel or decision.close)
        # The fencing check: a deposed leader must not act on a decision made just before.
        acted = acts and self.mode == "act" and await self._acting()
        if acted:
            self.pool.apply(decision)
        if acts or previous is None or previous.target != decision.target:
            record = decision_record(
                self.name, decision, depth, supply, mode=self.mode, acted=acted, at=now
            )
            log.info("decision", extra={k: v for k, v in record.items() if k != "t"})
            if self._decisions is not None:
                self._decisions.append(record)
        return decision
