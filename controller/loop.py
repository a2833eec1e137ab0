"""One task per scaler: read the depth, decide, apply, record; on a schedule or when woken.

Polling is the source of truth; sources that can push (`watch()`) only wake the loop early.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from controller.cancellation import raise_if_cancelled
from controller.config import Mode, PolicyConfig
from controller.decisions import DecisionLog, decision_record
from controller.memory import LearnedStateError, Memory
from controller.policy import Decision, Observation, PolicyState, SourceDepth, decide
from controller.pool import Actuator
from controller.sources import QueueDepth, Source, SourceError, WatchableSource

log = logging.getLogger(__name__)

#: Wake-ups closer together than this are merged: a busy queue must not turn into a busy loop.
MIN_TICK_GAP = 0.05
#: What the policy learned is written to the state store this often (and when the scaler stops).
REMEMBER_EVERY = 60.0
_JITTER = 0.1
#: Polls end on this grid of the loop's clock (seconds): at most this much later than asked.
WAKE_GRID = 0.1
#: A queue that reads as missing (a stream or group not created yet, or a typo) is said again
#: this often while it lasts: visible, without a warning per tick.
MISSING_REPEAT_SECONDS = 300.0
#: What saving the learned state or closing one source may take when the scaler stops.
CLOSE_SECONDS = 2.0


async def _always() -> bool:
    return True


@dataclass(frozen=True)
class NamedSource:
    """One queue of a scaler, and how much its work counts (a scaler with one queue has one)."""

    name: str
    source: Source
    weight: float = 1.0
    reserve: int = 0


class ScalerLoop:
    """Keeps one scaler's sessions equal to its queue's work (one queue, or several)."""

    def __init__(
        self,
        name: str,
        sources: Sequence[NamedSource],
        pool: Actuator,
        policy: PolicyConfig,
        poll_interval: float,
        metrics: Any,
        *,
        acting: Callable[[], Awaitable[bool]] | None = None,
        decisions: DecisionLog | None = None,
        clock: Callable[[], float] = time.time,
        memory: Memory | None = None,
        paused: bool = False,
        mode: Mode = "act",
    ):
        self.name = name
        self.sources = list(sources)
        self.pool = pool
        self.policy = policy
        self.poll_interval = poll_interval
        self._metrics = metrics
        # The operator's runtime control: the admin API and SIGHUP change it here, never in `policy`
        # (`control.py` keeps it across leadership terms and says it in `vqs_paused`).
        self.paused = paused
        self.mode: Mode = mode
        self._acting = acting or _always
        self._decisions = decisions
        self._clock = clock
        self._wake = asyncio.Event()
        self.state = PolicyState()
        self._memory = memory
        self._remembered_at: float | None = None
        self.last_depth: QueueDepth | None = None
        self.last_decision: Decision | None = None
        self.last_read_ok_at: float | None = None
        self._missing_said: dict[str, tuple[str, float]] = {}  # source -> (what, when said)

    def wake(self) -> None:
        """Run the next tick now (a push from the queue, a released session)."""
        self._wake.set()

    def pause(self, paused: bool = True) -> None:
        """Hold the session count as it is (False: resume); the next tick says so."""
        self.paused = paused
        self.wake()

    def set_mode(self, mode: Mode) -> None:
        """act: apply decisions; advise: decide and record only."""
        self.mode = mode
        self.wake()

    def reconfigure(self, policy: PolicyConfig, poll_interval: float) -> None:
        """An edited policy (SIGHUP): its paused and mode become the runtime control too."""
        self.policy, self.poll_interval = policy, poll_interval
        self.mode = policy.mode
        self.pause(policy.paused)

    async def recall(self) -> None:
        """Start from what the policy learned before a restart (or under another leader)."""
        if self._memory is None:
            return
        try:
            learned = await asyncio.to_thread(self._memory.load)
        except LearnedStateError as exc:
            log.warning("learned state not restored", extra={"scaler": self.name, "error": str(exc)})
            return
        if learned is not None:
            self.state = replace(self.state, learned=learned)
            log.info("learned state restored", extra={"scaler": self.name})

    async def remember(self) -> None:
        """Write what the policy learned to the state store; a failure is logged and retried later."""
        if self._memory is None:
            return
        self._remembered_at = self._clock()
        try:
            await asyncio.to_thread(self._memory.save, self.state.learned)
        except LearnedStateError as exc:
            log.warning("learned state not saved", extra={"scaler": self.name, "error": str(exc)})

    async def run(self) -> None:
        await self.recall()
        watchers = [
            asyncio.create_task(self._watch(named.source), name=f"watch-{self.name}-{named.name}")
            for named in self.sources
            if isinstance(named.source, WatchableSource)
        ]
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.tick()
                except Exception:
                    # A bug in one tick must not stop the scaler; the next tick starts afresh.
                    log.exception("scaler tick failed", extra={"scaler": self.name})
                raise_if_cancelled()  # a source's client may have swallowed a shutdown's cancel
                elapsed = time.monotonic() - started
                self._metrics.record_loop(self.name, elapsed)
                delay = self.poll_interval * random.uniform(1 - _JITTER, 1 + _JITTER) - elapsed
                await self._sleep(max(MIN_TICK_GAP, delay))
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def close(self) -> None:
        """Save what was learned and close every source, all at once, within CLOSE_SECONDS."""
        # Together, not one after another: a scaler with many unreachable sources must not eat the
        # process's shutdown budget at CLOSE_SECONDS each.
        steps = [self.remember(), *(named.source.close() for named in self.sources)]
        await asyncio.gather(*(asyncio.wait_for(step, CLOSE_SECONDS) for step in steps), return_exceptions=True)

    async def _sleep(self, delay: float) -> None:
        """Until the next poll (or a wake), ending on the WAKE_GRID of the loop's clock."""
        self._wake.clear()
        # Waking an idle process costs about 0.1 ms of CPU on a small VM: scalers whose polls fall
        # in one slot of the grid wake in one turn of the loop (the jitter still spreads them).
        deadline = math.ceil((asyncio.get_running_loop().time() + delay) / WAKE_GRID) * WAKE_GRID
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can drop a cancel (see leader.py).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()

    async def _watch(self, source: WatchableSource) -> None:
        try:
            async for _ in source.watch():
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("queue wake-ups stopped; polling only", extra={"scaler": self.name, "error": str(exc)})

    async def _read(self, named: NamedSource) -> QueueDepth | None:
        try:
            depth = await named.source.depth()
        except SourceError as exc:
            log.warning("queue depth read failed", extra={"scaler": self.name, "source": named.name, "error": str(exc)})
            return None
        self._note_missing(named.name, depth.missing)
        return depth

    def _note_missing(self, source: str, missing: str | None) -> None:
        """Say when a queue reads as missing: on change, then every MISSING_REPEAT_SECONDS."""
        said = self._missing_said.get(source)
        now = self._clock()
        fields = {"scaler": self.name, "source": source}
        if missing is None:
            if said is not None:
                del self._missing_said[source]
                log.info("queue found; reading it again", extra=fields)
                self._metrics.set_source_missing(self.name, source, False)
            return
        if said is None or said[0] != missing or now - said[1] >= MISSING_REPEAT_SECONDS:
            log.warning("queue reads as empty: %s", missing, extra={**fields, "missing": missing})
            self._missing_said[source] = (missing, now)
            self._metrics.set_source_missing(self.name, source, True)

    async def tick(self) -> Decision:
        started = time.monotonic()
        if len(self.sources) == 1:  # most scalers: no gather (a task per read) every tick
            depths: list[QueueDepth | None] = [await self._read(self.sources[0])]
        else:
            depths = await asyncio.gather(*(self._read(named) for named in self.sources))
        now = self._clock()
        observation: Observation = [
            SourceDepth(named.name, d, named.weight, named.reserve) for named, d in zip(self.sources, depths, strict=True)
        ]
        # Metrics and /status show the plain sum; a failed read of any queue counts as failed.
        depth = None if None in depths else _sum([d for d in depths if d is not None])
        self._metrics.record_read(self.name, depth, time.monotonic() - started, now)
        if depth is not None:
            self.last_read_ok_at = now
        self.last_depth = depth
        # The pools record each grant's request-to-grant time in the metrics; the policy learns
        # the endpoint's start-up times from them.
        supply = replace(self.pool.supply, startups=self._metrics.take_startups(self.name))
        previous = self.last_decision
        decision = decide(
            observation, supply, self.policy, now, self.state, self.poll_interval, paused=self.paused, act=self.mode == "act"
        )
        self.state = decision.state
        self.last_decision = decision
        if self._memory is not None and (self._remembered_at is None or now - self._remembered_at >= REMEMBER_EVERY):
            await self.remember()
        self._metrics.record_decision(self.name, decision)
        acts = bool(decision.open or decision.cancel or decision.close)
        # advise mode (a dry run) decides and records, never acts. The fencing check comes last:
        # a deposed leader must not act on a decision made just before.
        acted = acts and decision.act and await self._acting()
        if acted:
            self.pool.apply(decision)
        # Every action is recorded; a decision that only repeats the last (advise mode, a hold)
        # is not, so a dry run does not log the same advice every tick.
        if acted or previous is None or _steps(previous) != _steps(decision):
            record = decision_record(self.name, decision, acted=acted)
            log.info("decision", extra={k: v for k, v in record.items() if k != "t"})
            if self._decisions is not None:
                self._decisions.append(record)
        return decision


def _sum(depths: Sequence[QueueDepth]) -> QueueDepth:
    if len(depths) == 1:
        return depths[0]  # as read: its oldest age and a missing stream are kept
    waiting = in_flight = 0
    for depth in depths:
        waiting, in_flight = waiting + depth.waiting, in_flight + depth.in_flight
    return QueueDepth(waiting, in_flight)


def _steps(decision: Decision) -> tuple[int, int, int, int]:
    return decision.target, decision.open, decision.cancel, decision.close
