"""The reservation pool: the legacy null worker's held `POST /reserve`, under the same policy.

A reservation occupies one worker for as long as its HTTP request stays open. Closing one is
cancelling its request (the worker sees the disconnect); a crashed controller drops every
connection with it, so this mode needs no lease and no ledger to bound leaks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from controller.backoff import backoff
from controller.policy import Decision, Supply, close_order
from controller.sessions import PoolMetrics
from controller.vast import ReservationTracker, VastEndpoint, VastError

log = logging.getLogger(__name__)

class _Reservation:
    def __init__(self, requested_at: float):
        self.tracker = ReservationTracker()
        self.requested_at = requested_at
        self.held_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self.tracker.holding


class ReservationPool:
    """Owns every reservation one scaler holds on its endpoint (`reservation: reserve`)."""

    def __init__(
        self,
        scaler: str,
        endpoint: VastEndpoint,
        metrics: PoolMetrics,
        *,
        duration: float,
        session_cost: float,
        max_concurrent_opens: int,
        clock: Callable[[], float] = time.time,
    ):
        self.scaler = scaler
        self._endpoint = endpoint
        self._metrics = metrics
        self._duration = duration
        self._cost = session_cost
        self._clock = clock
        self._open_slots = asyncio.Semaphore(max_concurrent_opens)
        # Insertion order is age order: the last entries are the youngest.
        self._reservations: dict[int, _Reservation] = {}
        self._ids = itertools.count()
        self._accounted_at = clock()

    @property
    def supply(self) -> Supply:
        now = self._clock()
        ages = tuple(now - (r.held_at or r.requested_at) for r in self._reservations.values() if r.held)
        return Supply(open=len(ages), opening=len(self._reservations) - len(ages), ages=ages)

    def apply(self, decision: Decision) -> None:
        """Start reservations; cancel waiting ones (youngest first), then release held ones."""
        for _ in range(decision.open):
            token = next(self._ids)
            reservation = self._reservations[token] = _Reservation(self._clock())
            reservation.task = asyncio.create_task(
                self._hold(token, reservation), name=f"reserve-{self.scaler}-{token}"
            )
        waiting = [t for t, r in reversed(self._reservations.items()) if not r.held][: decision.cancel]
        held_at = {t: r.held_at or r.requested_at for t, r in self._reservations.items() if r.held}
        held = close_order(held_at, held_at.__getitem__, decision, self._clock())
        for token, reason in [*((t, "cancelled") for t in waiting), *((t, "closed") for t in held)]:
            self._end(token, reason)

    def _end(self, token: int, reason: str) -> None:
        reservation = self._reservations.pop(token, None)
        if reservation is None or reservation.task is None:
            return
        reservation.task.cancel()
        self._metrics.session_closed(self.scaler, reason)

    async def _hold(self, token: int, reservation: _Reservation) -> None:
        attempt = 0
        while True:
            try:
                async with self._open_slots:
                    # The slot bounds concurrent routing only: it is freed once a worker holds us.
                    holding = asyncio.create_task(
                        self._endpoint.hold_reservation(
                            cost=self._cost, duration=self._duration, tracker=reservation.tracker
                        )
                    )
                    await self._until_held(holding, reservation)
                if reservation.held_at is not None:
                    self._metrics.session_opened(self.scaler, reservation.held_at - reservation.requested_at)
                await holding
                break
            except VastError as exc:
                if reservation.held_at is not None:
                    break  # a held reservation that fails has ended: the policy decides anew
                self._metrics.session_open_failed(self.scaler, exc.kind)
                log.warning(
                    "reservation failed, retrying",
                    extra={"scaler": self.scaler, "reason": exc.kind, "error": str(exc)},
                )
                reservation.tracker = ReservationTracker()
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        if self._reservations.pop(token, None) is not None:
            self._metrics.session_closed(self.scaler, "expired")

    async def _until_held(self, holding: asyncio.Task[None], reservation: _Reservation) -> None:
        """Return once a worker holds the request, or the request has finished."""
        held = asyncio.create_task(reservation.tracker.held.wait())
        try:
            await asyncio.wait([holding, held], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Not awaited: a client that swallows the cancel may take its time to end. What it ends
            # with (its own error, if it turned the cancel into one) is read, not left to the logs.
            holding.add_done_callback(_read_outcome)
            holding.cancel()
            raise
        finally:
            held.cancel()
        if reservation.tracker.held.is_set():
            reservation.held_at = self._clock()

    def released(self, session_id: str) -> bool:
        """Reservations end by disconnect, never by a worker callback."""
        return False

    async def adopt(self) -> int:
        """Nothing survives a restart: every reservation died with the old process's connections."""
        return 0

    async def maintain(self) -> None:
        """Account held reservation-seconds; reservations need no keep-alive."""
        while True:
            await asyncio.sleep(1.0)
            self._account()

    def _account(self) -> None:
        now = self._clock()
        self._metrics.session_seconds(self.scaler, self.supply.open * (now - self._accounted_at))
        self._accounted_at = now

    async def shutdown(self, *, release: bool, timeout: float = 10.0) -> None:
        """Cancel every reservation: a held request cannot outlive this process anyway."""
        self._account()
        tasks = [r.task for r in self._reservations.values() if r.task is not None]
        for token in list(self._reservations):
            self._end(token, "shutdown")
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def _read_outcome(task: asyncio.Task[None]) -> None:
    """Mark what a task ended with as seen (asyncio logs an error nobody read)."""
    if not task.cancelled():
        task.exception()
