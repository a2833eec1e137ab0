"""The session pool of one endpoint: open (bounded, retried), keep alive, detect release, close.

Every session is opened with a short lease (`lease_seconds`) and kept alive by one request in the
session when less than half the lease remains, so a crashed controller leaks at most ~1.5 leases.
A session counts as open only once it is in the ledger; a closed one is closed exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from controller.backoff import backoff
from controller.ledger import Ledger, LedgerError, SessionRecord
from controller.policy import Decision, Supply
from controller.vast import GrantedSession, SessionGone, VastEndpoint, VastError

log = logging.getLogger(__name__)

#: Workers garbage-collect expired sessions every 5 s, so expiry lands up to that late.
WORKER_GC_SLACK = 5.0
_CLOSE_ATTEMPTS = 3
_RATE_LIMITED_BACKOFF = {"base": 2.0, "cap": 60.0}
_CHECK_CONCURRENCY = 32


class PoolMetrics(Protocol):
    def session_opened(self, scaler: str, seconds: float) -> None: ...
    def session_closed(self, scaler: str, reason: str) -> None: ...
    def session_open_failed(self, scaler: str, reason: str) -> None: ...
    def session_rerouted(self, scaler: str) -> None: ...
    def keepalive(self, scaler: str, result: str) -> None: ...
    def ledger_written(self, scaler: str) -> None: ...
    def sessions_adopted(self, scaler: str, count: int) -> None: ...
    def session_seconds(self, scaler: str, seconds: float) -> None: ...


class SessionPool:
    """Owns every session one scaler holds on its endpoint."""

    def __init__(
        self,
        scaler: str,
        endpoint: VastEndpoint,
        ledger: Ledger,
        metrics: PoolMetrics,
        *,
        lease_seconds: float,
        session_cost: float,
        open_timeout: float,
        max_concurrent_opens: int,
        on_close_route: str | None = None,
        on_close_payload: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.scaler = scaler
        self._endpoint = endpoint
        self._ledger = ledger
        self._metrics = metrics
        self._lease = lease_seconds
        self._cost = session_cost
        self._open_timeout = open_timeout
        self._on_close_route = on_close_route
        self._on_close_payload = on_close_payload
        self._clock = clock
        self._open_slots = asyncio.Semaphore(max_concurrent_opens)
        # Insertion order is age order: the last entries are the youngest.
        self._open: dict[str, SessionRecord] = {}
        self._closing: dict[str, SessionRecord] = {}
        self._recording: dict[str, SessionRecord] = {}  # granted, being written to the ledger
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._checked_at: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._ledger_dirty = False
        # Ledger writes run in a thread (the Redis ledger is a network call), one at a time, so
        # an older snapshot never lands after a newer one.
        self._ledger_lock = asyncio.Lock()
        self._accounted_at = clock()

    # -- what the loop reads -------------------------------------------------------------------

    @property
    def supply(self) -> Supply:
        now = self._clock()
        ages = tuple(now - record.opened_at for record in self._open.values())
        return Supply(open=len(self._open), opening=len(self._opening), ages=ages)

    # -- start: re-adopt what the ledger holds -------------------------------------------------

    async def adopt(self) -> int:
        """Re-adopt the ledger's sessions that are still alive; forget the rest."""
        records = await asyncio.to_thread(self._ledger.load)
        if not records:
            return 0
        results = await asyncio.gather(*(self._still_alive(r) for r in records))
        for record in (r for r in results if r is not None):
            self._open[record.session.session_id] = record
            self._checked_at[record.session.session_id] = self._clock()
        await self._save_ledger()
        adopted = len(self._open)
        self._metrics.sessions_adopted(self.scaler, adopted)
        log.info(
            "re-adopted sessions from the ledger",
            extra={"scaler": self.scaler, "adopted": adopted, "forgotten": len(records) - adopted},
        )
        return adopted

    async def _still_alive(self, record: SessionRecord) -> SessionRecord | None:
        try:
            expires_at = await self._endpoint.get_session(record.session)
        except SessionGone:
            return None
        except VastError:
            # Unknown: keep it while its lease can still be running; the next check decides.
            if record.session.expires_at + WORKER_GC_SLACK > self._clock():
                return record
            return None
        return replace(record, session=replace(record.session, expires_at=expires_at))

    # -- acting on a decision ------------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Start opens, cancel opening requests (youngest first), close the youngest sessions."""
        for _ in range(decision.open):
            token = next(self._ids)
            self._opening[token] = asyncio.create_task(
                self._open_one(token), name=f"open-{self.scaler}-{token}"
            )
        for token in list(reversed(self._opening))[: decision.cancel]:
            self._opening.pop(token).cancel()
            self._metrics.session_closed(self.scaler, "cancelled")
        # Youngest first (least likely to have started work), skipping those within boot_grace.
        now = self._clock()
        eligible = [sid for sid, r in reversed(self._open.items()) if now - r.opened_at >= decision.close_min_age]
        for session_id in eligible[: decision.close]:
            self._start_close(session_id, "closed")

    async def _open_one(self, token: int) -> None:
        requested_at = self._clock()
        try:
            granted = await self._request_session()
            # Shielded: a cancel that lands now must not leave a granted session unrecorded.
            await asyncio.shield(self._record_granted(granted, requested_at))
        finally:
            self._opening.pop(token, None)

    async def _request_session(self) -> GrantedSession:
        """Open one session, retrying every failure with capped, jittered backoff.

        One attempt lasts at most open_timeout (plus the SDK's last calls): inside it the SDK
        waits for a worker and routes again when one refuses (429 when full); at most
        max_concurrent_opens attempts are under way at once.
        """
        attempt = 0
        while True:
            async with self._open_slots:
                try:
                    return await self._endpoint.open_session(
                        cost=self._cost,
                        lifetime=self._lease,
                        timeout=self._open_timeout,
                        on_close_route=self._on_close_route,
                        on_close_payload=self._on_close_payload,
                        rerouted=self._rerouted,
                    )
                except VastError as exc:
                    self._metrics.session_open_failed(self.scaler, exc.kind)
                    log.warning(
                        "session open failed, retrying",
                        extra={"scaler": self.scaler, "reason": exc.kind, "error": str(exc)},
                    )
                    # Vast's rate limits name no Retry-After: back off further than for a blip.
                    limited = exc.kind == "rate_limited"
            await asyncio.sleep(backoff(attempt, **_RATE_LIMITED_BACKOFF) if limited else backoff(attempt))
            attempt += 1

    def _rerouted(self) -> None:
        self._metrics.session_rerouted(self.scaler)

    async def _record_granted(self, granted: GrantedSession, requested_at: float) -> None:
        """Write the new session to the ledger; only then does it count as open."""
        now = self._clock()
        record = SessionRecord(session=granted, opened_at=now)
        self._recording[granted.session_id] = record
        try:
            await self._save_ledger()
        except LedgerError as exc:
            # Untracked sessions are how money leaks: give it back rather than hold it blind.
            log.error("cannot record a new session; closing it", extra={"scaler": self.scaler, "error": str(exc)})
            self._closing[granted.session_id] = record
            self._spawn(self._close(record, "closed"))
            return
        finally:
            self._recording.pop(granted.session_id, None)
        self._open[granted.session_id] = record
        self._checked_at[granted.session_id] = now
        self._metrics.session_opened(self.scaler, now - requested_at)

    def _start_close(self, session_id: str, reason: str) -> None:
        record = self._open.pop(session_id, None)
        if record is None:
            return
        self._closing[session_id] = record
        self._spawn(self._close(record, reason))

    async def _close(self, record: SessionRecord, reason: str) -> None:
        session_id = record.session.session_id
        try:
            for attempt in range(_CLOSE_ATTEMPTS):
                try:
                    if not await self._endpoint.close_session(record.session):
                        # The consumer (or the lease) got there first.
                        reason = "expired" if self._clock() > record.session.expires_at else "released"
                    break
                except VastError as exc:
                    if attempt + 1 == _CLOSE_ATTEMPTS:
                        # Without keep-alives it ends by itself within its remaining lease.
                        log.warning(
                            "could not close session; it will expire with its lease",
                            extra={"scaler": self.scaler, "session_id": session_id, "error": str(exc)},
                        )
                    else:
                        await asyncio.sleep(backoff(attempt))
            self._metrics.session_closed(self.scaler, reason)
        finally:
            self._closing.pop(session_id, None)
            self._checked_at.pop(session_id, None)
            await self._save_ledger_quietly()

    # -- release detection ---------------------------------------------------------------------

    def released(self, session_id: str) -> bool:
        """The worker's on_close callback: the consumer (or expiry) ended this session."""
        return self._forget(session_id, "released")

    def _forget(self, session_id: str, reason: str) -> bool:
        if self._open.pop(session_id, None) is None:
            return False
        self._checked_at.pop(session_id, None)
        self._metrics.session_closed(self.scaler, reason)
        self._spawn(self._save_ledger_quietly())
        return True

    # -- keep-alive ----------------------------------------------------------------------------

    def check_interval(self, callbacks: bool) -> float:
        """How often each session is checked: only for keep-alives when callbacks report releases."""
        return self._lease / 4 if callbacks else self._lease * 0.4

    async def maintain(self, *, callbacks: bool) -> None:
        """Forever: keep leases in [0.5, 1.5] x lease, detect released and expired sessions."""
        checks = asyncio.Semaphore(_CHECK_CONCURRENCY)
        interval = self.check_interval(callbacks)
        tick = min(1.0, interval / 4)
        while True:
            await asyncio.sleep(tick)
            now = self._clock()
            self._account(now)
            due = [
                record
                for session_id, record in self._open.items()
                if record.session.expires_at - now < self._lease / 2
                or (not callbacks and now - self._checked_at.get(session_id, 0) >= interval)
            ]
            if due:
                await asyncio.gather(*(self._check(record, checks) for record in due))
            if self._ledger_dirty:
                await self._save_ledger_quietly()

    async def _check(self, record: SessionRecord, checks: asyncio.Semaphore) -> None:
        session = record.session
        async with checks:
            if session.session_id not in self._open:
                return
            now = self._clock()
            try:
                if session.expires_at - now < self._lease / 2:
                    await self._endpoint.keep_alive(session)
                    expires_at = session.expires_at + session.lifetime
                    self._metrics.keepalive(self.scaler, "ok")
                else:
                    expires_at = await self._endpoint.get_session(session)
            except SessionGone:
                self._metrics.keepalive(self.scaler, "gone")
                expired = self._clock() > session.expires_at
                self._forget(session.session_id, "expired" if expired else "released")
                return
            except VastError as exc:
                self._metrics.keepalive(self.scaler, "error")
                if self._clock() > session.expires_at + WORKER_GC_SLACK:
                    self._forget(session.session_id, "expired")
                else:
                    log.warning(
                        "session check failed",
                        extra={"scaler": self.scaler, "session_id": session.session_id, "error": str(exc)},
                    )
                return
        current = self._open.get(session.session_id)
        if current is not None:
            self._checked_at[session.session_id] = self._clock()
            if expires_at != current.session.expires_at:
                self._open[session.session_id] = replace(
                    current, session=replace(current.session, expires_at=expires_at)
                )
                self._ledger_dirty = True

    def _account(self, now: float) -> None:
        self._metrics.session_seconds(self.scaler, len(self._open) * (now - self._accounted_at))
        self._accounted_at = now

    # -- shutdown ------------------------------------------------------------------------------

    async def shutdown(self, *, release: bool, timeout: float = 10.0) -> None:
        """Cancel every open; with `release`, close every session, else leave them to their lease."""
        for task in self._opening.values():
            task.cancel()
        self._opening.clear()
        if release:
            for session_id in list(self._open):
                self._start_close(session_id, "shutdown")
        self._account(self._clock())
        pending = list(self._background)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
        await self._save_ledger_quietly()

    # -- helpers -------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _save_ledger(self) -> None:
        async with self._ledger_lock:
            records = [*self._open.values(), *self._recording.values(), *self._closing.values()]
            await asyncio.to_thread(self._ledger.save, records)
        self._ledger_dirty = False
        self._metrics.ledger_written(self.scaler)

    async def _save_ledger_quietly(self) -> None:
        try:
            await self._save_ledger()
        except LedgerError as exc:
            self._ledger_dirty = True
            log.error("cannot write the session ledger", extra={"scaler": self.scaler, "error": str(exc)})
