"""The session pool of one endpoint: open (bounded, retried), keep alive, detect release, close.

Every session is opened with a short lease (`lease_seconds`) and kept alive by one request in the
session when less than half the lease remains, so a crashed controller leaks at most ~1.5 leases.
A session counts as open only once it is in the ledger; a closed one is closed exactly once.

The work per tick follows the changes, not the sessions held: each session's next visit (its
renewal, or without close callbacks also a check for a release) waits in a heap keyed by its
time, and a tick takes only the visits that are due. Visits run a bounded number at a time,
earliest first. Every failed call (open, visit, close) is retried after a per-session backoff,
and names its cause. When visits fall so far behind that leases are at risk, the pool stops
opening until they catch up: a session it holds is worth more than one it could open.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from controller.backoff import backoff
from controller.cancellation import raise_if_cancelled
from controller.ledger import GroupCommit, Ledger, LedgerError, SessionRecord
from controller.policy import Decision, Supply, close_order
from controller.vast import GrantedSession, SessionGone, VastEndpoint, VastError

log = logging.getLogger(__name__)

#: Workers garbage-collect expired sessions every 5 s, so expiry lands up to that late.
WORKER_GC_SLACK = 5.0
_RATE_LIMITED_BACKOFF = {"base": 2.0, "cap": 60.0}
#: Visits (renewals and checks) under way at once, per pool.
VISIT_CONCURRENCY = 32
#: A failed visit is retried after a backoff of at most this, and always before the lease ends.
VISIT_RETRY_CAP = 15.0
#: Visits this late (as a share of the lease) stop the opens; they resume once visits are no
#: later than CAUGHT_UP_SHARE. A renewal is due with half a lease left, so at BEHIND_SHARE the
#: oldest waiting one still has 3/8 of its lease.
BEHIND_SHARE = 1 / 8
CAUGHT_UP_SHARE = 1 / 32


class PoolMetrics(Protocol):
    def session_opened(self, scaler: str, seconds: float) -> None: ...
    def session_closed(self, scaler: str, reason: str) -> None: ...
    def session_open_failed(self, scaler: str, reason: str) -> None: ...
    def session_rerouted(self, scaler: str) -> None: ...
    def keepalive(self, scaler: str, result: str) -> None: ...
    def vast_error(self, scaler: str, op: str, reason: str) -> None: ...
    def set_renewals_behind(self, scaler: str, behind: bool) -> None: ...
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
        self._ledger = GroupCommit(ledger, lambda: metrics.ledger_written(scaler), scaler=scaler)
        self._metrics = metrics
        self._lease = lease_seconds
        self._cost = session_cost
        self._open_timeout = open_timeout
        self._on_close_route = on_close_route
        self._on_close_payload = on_close_payload
        self._clock = clock
        # Without close callbacks a release is only found by asking: each session is also checked
        # this often. With them, a session is visited only to renew it.
        self._check_every = None if on_close_route else lease_seconds * 0.4
        self.tick_seconds = min(1.0, lease_seconds / 16)
        self._open_slots = asyncio.Semaphore(max_concurrent_opens)
        self._visit_slots = asyncio.Semaphore(VISIT_CONCURRENCY)
        # A session is in exactly one of: _opening (requested; by open token), _recording (granted,
        # its record being stored), _open (counted as open), _closing. Insertion order of _open is
        # age order: the last entries are the youngest.
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._recording: dict[str, SessionRecord] = {}
        self._open: dict[str, SessionRecord] = {}
        self._closing: dict[str, SessionRecord] = {}
        # Visits: a heap of (when, session id), with the time each open session's visit is really
        # due (an entry that disagrees is stale and skipped), the due times of the visits taken
        # and not finished (oldest first), and consecutive failures per session.
        self._visits: list[tuple[float, str]] = []
        self._visit_at: dict[str, float] = {}
        self._visiting: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self.behind = False
        self._background: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._accounted_at = clock()

    # -- what the loop reads -------------------------------------------------------------------

    @property
    def supply(self) -> Supply:
        now = self._clock()
        ages = tuple(now - record.opened_at for record in self._open.values())
        return Supply(open=len(self._open), opening=len(self._opening) + len(self._recording), ages=ages)

    # -- start: re-adopt what the ledger holds -------------------------------------------------

    async def adopt(self) -> int:
        """Re-adopt the ledger's sessions that are still alive; forget the rest."""
        records = await self._ledger.load()
        if not records:
            return 0
        results = await asyncio.gather(*(self._still_alive(r) for r in records))
        now = self._clock()
        # What changed is written with the next tick's changes: a record left behind meanwhile
        # is only checked (and forgotten) again at the next start.
        for record, alive in zip(records, results, strict=True):
            if alive is None:
                self._ledger.change(record.session_id, None)
                continue
            if alive != record:
                self._ledger.change(record.session_id, alive)
            self._open[alive.session_id] = alive
            self._schedule(alive, now)
        adopted = len(self._open)
        self._metrics.sessions_adopted(self.scaler, adopted)
        log.info(
            "re-adopted sessions from the ledger",
            extra={"scaler": self.scaler, "adopted": adopted, "forgotten": len(records) - adopted},
        )
        return adopted

    async def _still_alive(self, record: SessionRecord) -> SessionRecord | None:
        async with self._visit_slots:
            try:
                expires_at = await self._endpoint.get_session(record.session)
            except SessionGone:
                return None
            except VastError as exc:
                self._failed("adopt", exc, record.session_id)
                # Unknown: keep it while its lease can still be running; the next visit decides.
                if record.session.expires_at + WORKER_GC_SLACK > self._clock():
                    return record
                return None
        return _expiring(record, expires_at)

    # -- acting on a decision ------------------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Start opens (unless renewals are behind), cancel requests, close the youngest sessions."""
        for _ in range(0 if self.behind else decision.open):
            token = next(self._ids)
            self._opening[token] = asyncio.create_task(self._open_one(token), name=f"open-{self.scaler}-{token}")
        # Requests still waiting for a grant, youngest first (a granted one is being recorded).
        for token in list(reversed(self._opening))[: decision.cancel]:
            self._opening.pop(token).cancel()
            self._metrics.session_closed(self.scaler, "cancelled")
        for session_id in close_order(self._open, lambda sid: self._open[sid].opened_at, decision, self._clock()):
            self._start_close(session_id, "closed")

    async def _open_one(self, token: int) -> None:
        requested_at = self._clock()
        try:
            granted = await self._request_session()
        except BaseException:
            self._opening.pop(token, None)
            raise
        # From here it is a session to keep track of, whatever happens to this task: recorded in
        # a task of its own, which a cancel (a shutdown) does not stop and a shutdown waits for.
        recording = self._spawn(self._record_granted(token, granted, requested_at))
        await asyncio.shield(recording)

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
                    # A refused key or a missing endpoint is said by the endpoint, once per change.
                    self._failed("open", exc, first=attempt == 0 and not exc.fatal)
                    # Vast's rate limits name no Retry-After, and a refused key needs a person:
                    # back off further than for a blip.
                    limited = exc.kind == "rate_limited" or exc.fatal
            raise_if_cancelled()  # a cancelled open must not try again
            await asyncio.sleep(backoff(attempt, **_RATE_LIMITED_BACKOFF) if limited else backoff(attempt))
            attempt += 1

    def _rerouted(self) -> None:
        self._metrics.session_rerouted(self.scaler)

    async def _record_granted(self, token: int, granted: GrantedSession, requested_at: float) -> None:
        """Store the new session in the ledger; only then does it count as open.

        Each move (requested -> granted -> open) is one step, so it is never counted twice.
        """
        now = self._clock()
        session_id = granted.session_id
        record = SessionRecord(session=granted, opened_at=now)
        self._opening.pop(token, None)
        self._recording[session_id] = record
        try:
            await self._ledger.store(session_id, record)
        except LedgerError as exc:
            # Untracked sessions are how money leaks: give it back rather than hold it blind.
            log.error("cannot record a new session; closing it", extra={"scaler": self.scaler, "error": str(exc)})
            del self._recording[session_id]
            self._closing[session_id] = record
            self._spawn(self._close(record, "closed"))
            return
        del self._recording[session_id]
        self._open[session_id] = record
        self._schedule(record, now)
        self._metrics.session_opened(self.scaler, now - requested_at)

    def _start_close(self, session_id: str, reason: str) -> None:
        record = self._open.pop(session_id, None)
        if record is None:
            return
        self._unschedule(session_id)
        self._closing[session_id] = record
        self._spawn(self._close(record, reason))

    async def _close(self, record: SessionRecord, reason: str) -> None:
        """Close on the worker, retrying with backoff until it answers or the lease has run out."""
        session = record.session
        try:
            for attempt in itertools.count():
                try:
                    if not await self._endpoint.close_session(session):
                        # The consumer (or the lease) got there first.
                        reason = "expired" if self._clock() > session.expires_at else "released"
                    break
                except VastError as exc:
                    self._failed("close", exc, session.session_id, first=attempt == 0)
                    ends = session.expires_at + WORKER_GC_SLACK - self._clock()
                    if ends <= 0:
                        # Nothing renews it any more: it has ended with its lease, as a close would.
                        log.info(
                            "session ended with its lease; its close never got through",
                            extra={"scaler": self.scaler, "session_id": session.session_id, "error": str(exc)},
                        )
                        break
                    await asyncio.sleep(min(backoff(attempt), ends))
            self._metrics.session_closed(self.scaler, reason)
        finally:
            del self._closing[session.session_id]
            self._ledger.change(session.session_id, None)

    # -- release detection ---------------------------------------------------------------------

    def released(self, session_id: str) -> bool:
        """The worker's on_close callback: the consumer (or expiry) ended this session."""
        return self._forget(session_id, "released")

    def _forget(self, session_id: str, reason: str) -> bool:
        if self._open.pop(session_id, None) is None:
            return False
        self._unschedule(session_id)
        self._metrics.session_closed(self.scaler, reason)
        self._ledger.change(session_id, None)
        return True

    # -- keep-alive ----------------------------------------------------------------------------

    def _schedule(self, record: SessionRecord, now: float, retry_in: float | None = None) -> None:
        """Put the session's next visit in the heap: a retry, else its renewal or sooner a check."""
        if retry_in is not None:
            at = now + retry_in
        else:
            at = record.session.expires_at - self._lease / 2
            if self._check_every is not None:
                at = min(at, now + self._check_every)
        self._visit_at[record.session_id] = at
        heapq.heappush(self._visits, (at, record.session_id))

    def _unschedule(self, session_id: str) -> None:
        # Its heap entry stays until popped, then is skipped; a visit under way finds it gone.
        self._visit_at.pop(session_id, None)
        self._failures.pop(session_id, None)

    async def maintain(self) -> None:
        """Forever: keep leases in [0.5, 1.5] x lease, detect released and expired sessions."""
        loop = asyncio.get_running_loop()
        while True:
            # On a grid of the loop's clock, not a tick after the last one: every pool with the
            # same tick wakes in one turn of the loop and their renewals go out together. Waking
            # an idle process costs about 0.1 ms of CPU on a small VM: once per tick, not per pool.
            await asyncio.sleep(self.tick_seconds - loop.time() % self.tick_seconds)
            self.tick()

    def tick(self) -> None:
        """Start every visit that is due (earliest first), account for the time held, flush."""
        now = self._clock()
        self._account(now)
        while self._visits and self._visits[0][0] <= now:
            at, session_id = heapq.heappop(self._visits)
            if self._visit_at.get(session_id) != at:
                continue
            del self._visit_at[session_id]
            self._visiting[session_id] = at
            self._spawn(self._visit(session_id, at))
        self._note_backlog(now)
        self._ledger.kick()

    def _note_backlog(self, now: float) -> None:
        """Stop opening while the oldest visit waiting is late enough to put its lease at risk."""
        oldest = next(iter(self._visiting.values()), None)
        late = 0.0 if oldest is None else now - oldest
        behind = late > self._lease * (CAUGHT_UP_SHARE if self.behind else BEHIND_SHARE)
        if behind == self.behind:
            return
        self.behind = behind
        self._metrics.set_renewals_behind(self.scaler, behind)
        fields = {"scaler": self.scaler, "late_seconds": round(late, 1), "visits_waiting": len(self._visiting)}
        if behind:
            log.warning("renewals are behind; opening no session until they catch up", extra=fields)
        else:
            log.info("renewals caught up; opening sessions again", extra=fields)

    async def _visit(self, session_id: str, due: float) -> None:
        try:
            async with self._visit_slots:
                record = self._open.get(session_id)  # None: released or closed meanwhile
                if record is not None:
                    await self._renew_or_check(record)
        finally:
            if self._visiting.get(session_id) == due:
                del self._visiting[session_id]

    async def _renew_or_check(self, record: SessionRecord) -> None:
        session = record.session
        renew = session.expires_at - self._clock() <= self._lease / 2
        try:
            if renew:
                await self._endpoint.keep_alive(session)
                expires_at = session.expires_at + session.lifetime  # what the worker adds
            else:
                expires_at = await self._endpoint.get_session(session)
        except SessionGone:
            self._metrics.keepalive(self.scaler, "gone")
            self._forget(session.session_id, "expired" if self._clock() > session.expires_at else "released")
            return
        except VastError as exc:
            self._metrics.keepalive(self.scaler, "error")
            self._retry_visit(record, exc)
            return
        self._metrics.keepalive(self.scaler, "ok")
        if session.session_id not in self._open:  # released or closed meanwhile
            return
        self._failures.pop(session.session_id, None)
        current = self._open[session.session_id]
        if expires_at != current.session.expires_at:
            current = _expiring(current, expires_at)
            self._open[session.session_id] = current  # same key: its place in age order is kept
            self._ledger.change(session.session_id, current)
        self._schedule(current, self._clock())

    def _retry_visit(self, record: SessionRecord, exc: VastError) -> None:
        """Retry after this session's own backoff, before its lease ends, or forget it once ended."""
        session_id = record.session_id
        if session_id not in self._open:
            return
        attempt = self._failures.get(session_id, 0)
        self._failed("renew", exc, session_id, first=attempt == 0)
        now = self._clock()
        left = record.session.expires_at - now
        if left + WORKER_GC_SLACK < 0:
            # Its worker never answered for a whole lease: crashed or unreachable ("lost"), else
            # refusing ("expired"). Either way the session is over.
            self._forget(session_id, "lost" if exc.kind == "unavailable" else "expired")
            return
        self._failures[session_id] = attempt + 1
        # Tried again within what is left of the lease (and soon after it, to learn its fate).
        self._schedule(record, now, retry_in=min(backoff(attempt, base=1.0, cap=VISIT_RETRY_CAP), max(left / 2, 1.0)))

    def _failed(self, op: str, exc: VastError, session_id: str | None = None, *, first: bool = True) -> None:
        """Count a failed Vast call by its cause; say it once per session and streak, not per retry."""
        self._metrics.vast_error(self.scaler, op, exc.reason)
        if first:
            fields = {"scaler": self.scaler, "op": op, "reason": exc.reason, "error": str(exc)}
            if session_id is not None:
                fields["session_id"] = session_id
            log.warning("Vast call failed; retrying with backoff", extra=fields)

    def _account(self, now: float) -> None:
        self._metrics.session_seconds(self.scaler, len(self._open) * (now - self._accounted_at))
        self._accounted_at = now

    # -- shutdown ------------------------------------------------------------------------------

    async def shutdown(self, *, release: bool, timeout: float = 10.0) -> None:
        """Cancel every open; with `release`, close every session, else leave them to their lease."""
        deadline = time.monotonic() + timeout
        for task in self._opening.values():
            task.cancel()
        self._opening.clear()
        if self._recording:
            # Granted sessions are recorded first, so that they are closed (or handed over) too.
            await asyncio.wait(list(self._background), timeout=timeout / 2)
        if release:
            for session_id in list(self._open):
                self._start_close(session_id, "shutdown")
        self._account(self._clock())
        pending = list(self._background)
        if pending:
            _, still = await asyncio.wait(pending, timeout=max(0.1, deadline - time.monotonic()))
            for task in still:
                task.cancel()
        try:
            await asyncio.wait_for(self._ledger.flush(), max(0.1, deadline - time.monotonic()))
        except (LedgerError, TimeoutError) as exc:
            log.error("cannot write the session ledger", extra={"scaler": self.scaler, "error": str(exc) or "timeout"})
        self._ledger.close()

    # -- helpers -------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _expiring(record: SessionRecord, expires_at: float) -> SessionRecord:
    return replace(record, session=replace(record.session, expires_at=expires_at))
