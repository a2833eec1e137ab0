"""A scaler built from its config: its queues, its pool (sessions, or the legacy worker's
reservations) with its ledger, its loop with the memory of what the policy learned, its endpoint.

Each leadership term builds every scaler afresh (`terms.py`); the process wires one builder
(`service.py`) from what the scalers share: the Vast client, the metrics, the close callbacks,
the fencing check and the decision log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from controller.callbacks import CloseCallbacks
from controller.config import Config, Mode, ScalerConfig
from controller.decisions import DecisionLog
from controller.ledger import FileLedger, Ledger, RedisLedger
from controller.loop import NamedSource, ScalerLoop
from controller.memory import FileMemory, Memory, RedisMemory
from controller.metrics import Metrics
from controller.pool import Pool
from controller.reservations import ReservationPool
from controller.sessions import SessionPool
from controller.sources import from_url
from controller.vast import VastClient, VastEndpoint


@dataclass
class Scaler:
    """One scaler of a leadership term: its config and what was built from it."""

    config: ScalerConfig
    pool: Pool
    loop: ScalerLoop
    endpoint: VastEndpoint


class ScalerBuilder:
    """Builds a scaler from its config and what every scaler shares."""

    def __init__(
        self,
        config: Config,
        vast: VastClient,
        metrics: Metrics,
        callbacks: CloseCallbacks,
        *,
        acting: Callable[[], Awaitable[bool]],
        decisions: DecisionLog,
    ):
        self._config = config
        self._vast = vast
        self._metrics = metrics
        self._callbacks = callbacks
        self._acting = acting
        self._decisions = decisions

    def build(self, sc: ScalerConfig, *, paused: bool, mode: Mode) -> Scaler:
        """A scaler whose loop starts with the operator's `paused` and `mode`."""
        if sc.sources is None:
            sources = [NamedSource(sc.name, from_url(sc.source or ""))]
        else:
            sources = [NamedSource(spec.label, from_url(spec.url), spec.weight, spec.reserve) for spec in sc.sources]
        endpoint = self._vast.endpoint(sc.endpoint)
        pool = self._pool(sc, endpoint)
        self._metrics.watch_supply(sc.name, lambda: pool.supply)
        loop = ScalerLoop(
            sc.name,
            sources,
            pool,
            sc.policy,
            sc.poll_interval,
            self._metrics,
            acting=self._acting,
            decisions=self._decisions,
            memory=self._memory(sc.name) if sc.policy.wait_target is not None else None,
            paused=paused,
            mode=mode,
        )
        return Scaler(sc, pool, loop, endpoint)

    def _ledger(self, scaler: str) -> Ledger:
        if self._config.state_url is not None:
            return RedisLedger(str(self._config.state_url), scaler)
        return FileLedger(self._config.state_dir, scaler)

    def _memory(self, scaler: str) -> Memory:
        """Where a scaler's policy keeps what it learned: beside its session ledger."""
        if self._config.state_url is not None:
            return RedisMemory(str(self._config.state_url), scaler)
        return FileMemory(self._config.state_dir, scaler)

    def _pool(self, sc: ScalerConfig, endpoint: VastEndpoint) -> Pool:
        session = sc.session
        if session.reservation == "reserve":
            return ReservationPool(
                sc.name,
                endpoint,
                self._metrics,
                duration=session.reserve_duration,
                session_cost=session.session_cost,
                max_concurrent_opens=session.max_concurrent_opens,
            )
        on_close_route = on_close_payload = None
        if session.callback_url:
            on_close_route = self._callbacks.route(str(session.callback_url))
            on_close_payload = self._callbacks.payload(sc.name)
        return SessionPool(
            sc.name,
            endpoint,
            self._ledger(sc.name),
            self._metrics,
            lease_seconds=session.lease_seconds,
            session_cost=session.session_cost,
            open_timeout=session.open_timeout,
            max_concurrent_opens=session.max_concurrent_opens,
            on_close_route=on_close_route,
            on_close_payload=on_close_payload,
        )
