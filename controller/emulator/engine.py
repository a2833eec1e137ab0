"""One endpoint's autoscaler: routing, scaling and billing as plain state driven by timestamps.

Nothing here does I/O or reads the clock: callers pass `now`, and `tick(now)` returns the
actions (start, resume, stop, destroy) for the worker pool to carry out.

Loads are in Vast's units: one worker has `perf` = 100 (the null worker's pinned max_perf), and a
session or request costs what its route asked for (the SDK's default cost 100 = one worker).

    demand  D = cost of open sessions + cost of granted routes (READY, no session yet)
              + cost of WAITING routes older than target_queue_time
    count   N = how many sessions, granted routes and such waiting routes there are
    active  A = max(ceil(max(D, min_load) / (target_util * perf)), ceil(N / max_sessions)), <= max_workers
    total   T = max(cold_workers, ceil(A * cold_mult), ceil(min_cold_load / perf)), A <= T <= max_workers

Each tick, loading workers whose boot time has passed (and, for process workers, that reported
ready) become ready. While loading + ready < A, stopped workers resume (resume_seconds), then new
workers are created (cold_start_seconds); more are created while the total is below T (they load,
then idle out to stopped: Vast's cold workers). While loading + ready > A, ready workers idle (no
session, grant or reservation) for inactivity_timeout stop, longest idle first. Stopped workers
beyond T are destroyed after inactive_destroy_seconds. A crashed worker shows as `error` for a few
seconds, then is destroyed.

Routing: a ready worker has room when it holds fewer than max_sessions sessions and grants, and
either is empty or its implied queue time (load + cost) / perf stays within max_queue_time; the
least loaded such worker wins (ties: the one idle longest), else the route WAITS and counts toward demand. A re-poll with a
granted request_idx means the client could not use that grant (worker busy or gone): it is dropped
and the route is decided afresh under the same request_idx.

Billing: ready and loading seconds bill price_per_hour; stopped (inactive) seconds bill
storage_price_per_hour only; error seconds bill nothing.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.emulator.config import WORKER_PERF, EmulatorConfig, EndpointConfig

READY, LOADING, INACTIVE, ERROR = "ready", "loading", "inactive", "error"
SDK_STATUS = {READY: "idle", LOADING: "loading", INACTIVE: "stopped", ERROR: "error"}
GRANT_SECONDS = 15.0  # a READY route that becomes no session or request within this is dropped
WAITING_FORGET_SECONDS = 15.0  # a WAITING route not polled again within this is dropped
ERROR_LINGER_SECONDS = 5.0
DELETED_KEPT = 1000


@dataclass
class Ids:
    """Counters shared by every endpoint: worker ids (CONTAINER_ID), request_idx, reqnum."""

    worker: Callable[[], int] = field(default_factory=lambda: itertools.count(1001).__next__)
    request_idx: Callable[[], int] = field(default_factory=lambda: itertools.count(1).__next__)
    reqnum: Callable[[], int] = field(default_factory=lambda: itertools.count(1).__next__)


@dataclass
class SessionInfo:
    session_id: str
    request_idx: int | None
    cost: float
    lifetime: float
    expiration: float
    created_at: float
    auth_data: Any = None
    on_close_route: str | None = None
    on_close_payload: Any = None

    def view(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "request_idx": self.request_idx, "expiration": self.expiration}


@dataclass
class Grant:
    cost: float
    reqnum: int
    deadline: float
    working: bool = False  # the worker holds it as a request in progress: no deadline


@dataclass
class WaitingRoute:
    cost: float
    first_seen: float
    last_seen: float


@dataclass
class Worker:
    id: int
    state: str
    since: float
    started_at: float
    needs_report: bool
    boot_until: float = 0.0
    billed_until: float = 0.0
    last_busy: float = 0.0
    loaded_at: float | None = None
    reported: bool = False
    stuck: bool = False
    url: str = ""
    control_url: str = ""
    error: str = ""
    perf: float = WORKER_PERF
    sessions: dict[str, SessionInfo] = field(default_factory=dict)
    grants: dict[int, Grant] = field(default_factory=dict)

    @property
    def load(self) -> float:
        return sum(s.cost for s in self.sessions.values()) + sum(g.cost for g in self.grants.values())

    @property
    def used(self) -> int:
        return len(self.sessions) + len(self.grants)


@dataclass(frozen=True)
class Ready:
    worker: Worker
    request_idx: int
    reqnum: int
    cost: float


@dataclass(frozen=True)
class Waiting:
    request_idx: int


@dataclass(frozen=True)
class Action:
    kind: Literal["start", "resume", "stop", "destroy"]
    worker_id: int


@dataclass
class Billing:
    ready_seconds: float = 0.0
    loading_seconds: float = 0.0
    inactive_seconds: float = 0.0

    def add(self, state: str, seconds: float) -> None:
        if state == READY:
            self.ready_seconds += seconds
        elif state == LOADING:
            self.loading_seconds += seconds
        elif state == INACTIVE:
            self.inactive_seconds += seconds


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - 1e-9))  # 2.0000000001 from float sums is still 2


class Engine:
    """The autoscaler of one endpoint."""

    def __init__(
        self,
        endpoint: EndpointConfig,
        config: EmulatorConfig,
        *,
        ids: Ids,
        events: deque,
        needs_report: bool = False,
        max_sessions: int | None = None,
        stuck: Callable[[], bool] = lambda: False,
    ):
        self.endpoint = endpoint
        self.name = endpoint.name
        self.ids = ids
        self.events = events
        self.needs_report = needs_report
        self.max_sessions = max_sessions or config.max_sessions
        self.reservations = config.worker_flavor == "reserve"
        self.cold_start = config.knob(endpoint, "cold_start_seconds")
        self.resume = config.knob(endpoint, "resume_seconds")
        self.price = config.knob(endpoint, "price_per_hour")
        self.storage_price = config.knob(endpoint, "storage_price_per_hour")
        self.destroy_after = config.inactive_destroy_seconds
        self._stuck = stuck
        self.workers: dict[int, Worker] = {}
        self.waiting: dict[int, WaitingRoute] = {}
        self.deleted: deque[int] = deque(maxlen=DELETED_KEPT)
        self._grant_owner: dict[int, int] = {}
        self._billed = Billing()

    # -- routing ---------------------------------------------------------------------------------

    def route(self, now: float, request_idx: int, cost: float) -> Ready | Waiting:
        """Grant a worker with room to this request, or keep it waiting (and counted as demand)."""
        if request_idx in self._grant_owner:
            self._drop_grant(self._grant_owner[request_idx], request_idx)
        if not request_idx:
            request_idx = self.ids.request_idx()
        worker = self._pick(cost)
        if worker is not None:
            self.waiting.pop(request_idx, None)
            grant = Grant(cost=cost, reqnum=self.ids.reqnum(), deadline=now + GRANT_SECONDS)
            worker.grants[request_idx] = grant
            self._grant_owner[request_idx] = worker.id
            return Ready(worker, request_idx, grant.reqnum, cost)
        entry = self.waiting.get(request_idx)
        if entry is None:
            self.waiting[request_idx] = WaitingRoute(cost, now, now)
        else:
            entry.cost, entry.last_seen = cost, now
        return Waiting(request_idx)

    def _pick(self, cost: float) -> Worker | None:
        best: Worker | None = None
        best_key = (0.0, 0.0)
        for worker in self.workers.values():
            if worker.state != READY or worker.used >= self.max_sessions:
                continue
            load = worker.load
            if load > 0 and (load + cost) / worker.perf > self.endpoint.max_queue_time:
                continue
            # Ties go to the worker idle longest: the one a FIFO of waiting consumers serves next.
            key = (load, worker.last_busy)
            if best is None or key < best_key:
                best, best_key = worker, key
        return best

    def _drop_grant(self, worker_id: int, request_idx: int) -> None:
        self._grant_owner.pop(request_idx, None)
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.grants.pop(request_idx, None)

    # -- what workers tell us --------------------------------------------------------------------

    def worker_reported(self, worker_id: int, now: float, *, loaded: bool, error: str = "", url: str = "") -> bool:
        """A /worker_status/ report; False if it is not (or no longer) about a worker of ours."""
        worker = self.workers.get(worker_id)
        if worker is None or (url and worker.url and url != worker.url):
            return False  # unknown, or a report from the process this worker replaced
        if worker.state not in (LOADING, READY):
            return True  # a stopping or crashed process's last words
        if error:
            self.fail(worker_id, now, error)
        elif loaded and worker.state == LOADING:
            worker.reported = True
        return True

    def open_session(self, worker_id: int, info: SessionInfo, now: float) -> None:
        worker = self.workers[worker_id]
        if info.request_idx is not None and self._grant_owner.get(info.request_idx) == worker_id:
            self._drop_grant(worker_id, info.request_idx)
        worker.sessions[info.session_id] = info
        worker.last_busy = now
        self._log(info.created_at, "create", worker_id, info.session_id, info.request_idx)

    def close_session(
        self, worker_id: int, session_id: str, now: float, event: str, **extra: Any
    ) -> SessionInfo | None:
        """End a session; `event` is the log event: end | expire | release."""
        worker = self.workers.get(worker_id)
        info = worker.sessions.pop(session_id, None) if worker else None
        if info is not None:
            worker.last_busy = now
            self._log(now, event, worker_id, session_id, info.request_idx, **extra)
        return info

    def extend(self, worker_id: int, session_id: str, expiration: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None and session_id in worker.sessions:
            worker.sessions[session_id].expiration = expiration

    def expired(self, now: float) -> list[tuple[int, SessionInfo]]:
        return [(w.id, s) for w in self.workers.values() for s in w.sessions.values() if s.expiration <= now]

    def requests_working(self, worker_id: int, request_idxs: list[int], now: float) -> None:
        """The worker holds these requests (a reservation, or a session not yet announced)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        for idx in request_idxs:
            grant = worker.grants.get(idx)
            if grant is None and self.reservations and not self._has_session(worker, idx):
                # A request that never came through /route/ (or whose grant expired): still load.
                grant = worker.grants[idx] = Grant(cost=WORKER_PERF, reqnum=0, deadline=now + GRANT_SECONDS)
                self._grant_owner[idx] = worker_id
            if grant is not None and not grant.working:
                grant.working = True
                worker.last_busy = now
                if self.reservations:
                    self._log(now, "create", worker_id, None, idx, kind="reservation")

    def requests_done(self, worker_id: int, request_idxs: list[int], now: float) -> None:
        """The worker finished (or refused) these requests: /delete_requests/."""
        worker = self.workers.get(worker_id)
        for idx in request_idxs:
            self.deleted.append(idx)
            grant = worker.grants.get(idx) if worker else None
            if grant is not None and self._grant_owner.get(idx) == worker_id:
                self._drop_grant(worker_id, idx)
                worker.last_busy = now
                if grant.working and self.reservations:
                    self._log(now, "end", worker_id, None, idx, kind="reservation")

    def fail(self, worker_id: int, now: float, reason: str) -> list[SessionInfo]:
        """The worker crashed or errored: its sessions and grants are gone."""
        worker = self.workers.get(worker_id)
        if worker is None or worker.state == ERROR:
            return []
        dropped = list(worker.sessions.values())
        for info in dropped:
            self.close_session(worker_id, info.session_id, now, "end", reason="crash")
        for idx in list(worker.grants):
            self._drop_grant(worker_id, idx)
        worker.error = reason
        self._set_state(worker, ERROR, now)
        return dropped

    @staticmethod
    def _has_session(worker: Worker, request_idx: int) -> bool:
        return any(s.request_idx == request_idx for s in worker.sessions.values())

    # -- scaling ---------------------------------------------------------------------------------

    def targets(self, now: float) -> tuple[int, int]:
        """(active A, total T) per the formula in the module docstring."""
        ep = self.endpoint
        live = [w for w in self.workers.values() if w.state != ERROR]
        sessions = [s.cost for w in live for s in w.sessions.values()]
        grants = [g.cost for w in live for g in w.grants.values()]
        queued = [e.cost for e in self.waiting.values() if now - e.first_seen >= ep.target_queue_time]
        demand = sum(sessions) + sum(grants) + sum(queued)
        count = len(sessions) + len(grants) + len(queued)
        active = max(_ceil(max(demand, ep.min_load) / (ep.target_util * WORKER_PERF)), _ceil(count / self.max_sessions))
        active = min(active, ep.max_workers)
        total = max(ep.cold_workers, _ceil(active * ep.cold_mult), _ceil(ep.min_cold_load / WORKER_PERF))
        return active, min(max(total, active), ep.max_workers)

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for worker in list(self.workers.values()):
            for idx, grant in list(worker.grants.items()):
                if not grant.working and grant.deadline <= now:
                    self._drop_grant(worker.id, idx)
            if worker.state == LOADING and self._booted(worker, now):
                self._set_state(worker, READY, now)
                worker.loaded_at = worker.last_busy = now
            if worker.used:
                worker.last_busy = now
            if worker.state == ERROR and now - worker.since >= ERROR_LINGER_SECONDS:
                del self.workers[worker.id]
                actions.append(Action("destroy", worker.id))
        self.waiting = {i: e for i, e in self.waiting.items() if now - e.last_seen <= WAITING_FORGET_SECONDS}

        want_active, want_total = self.targets(now)
        live = [w for w in self.workers.values() if w.state != ERROR]
        active = [w for w in live if w.state in (LOADING, READY)]
        deficit = want_active - len(active)
        stopped = sorted((w for w in live if w.state == INACTIVE), key=lambda w: -w.since)
        for worker in stopped[: max(deficit, 0)]:
            self._boot(worker, now, resume=True)
            actions.append(Action("resume", worker.id))
        new = max(deficit - len(stopped), want_total - len(live), 0)
        for _ in range(min(new, self.endpoint.max_workers - len(live))):
            worker = Worker(id=self.ids.worker(), state=LOADING, since=now, started_at=now,
                            needs_report=self.needs_report, billed_until=now)  # fmt: skip
            self.workers[worker.id] = worker
            self._boot(worker, now, resume=False)
            actions.append(Action("start", worker.id))

        excess = len(active) - want_active
        if excess > 0:
            timeout = self.endpoint.inactivity_timeout
            idle = [w for w in active if w.state == READY and not w.used and now - w.last_busy >= timeout]
            for worker in sorted(idle, key=lambda w: w.last_busy)[:excess]:
                self._set_state(worker, INACTIVE, now)
                actions.append(Action("stop", worker.id))

        surplus = len(live) - want_total
        if surplus > 0:
            old = [w for w in live if w.state == INACTIVE and now - w.since >= self.destroy_after]
            for worker in sorted(old, key=lambda w: w.since)[:surplus]:
                self._bill(worker, now)
                del self.workers[worker.id]
                actions.append(Action("destroy", worker.id))
        return actions

    def _booted(self, worker: Worker, now: float) -> bool:
        return not worker.stuck and now >= worker.boot_until and (worker.reported or not worker.needs_report)

    def _boot(self, worker: Worker, now: float, *, resume: bool) -> None:
        self._set_state(worker, LOADING, now)
        worker.boot_until = now + (self.resume if resume else self.cold_start)
        worker.reported = False
        worker.stuck = self._stuck()
        worker.error = ""

    # -- billing and views -----------------------------------------------------------------------

    def _set_state(self, worker: Worker, state: str, now: float) -> None:
        self._bill(worker, now)
        worker.state, worker.since = state, now

    def _bill(self, worker: Worker, now: float) -> None:
        self._billed.add(worker.state, max(0.0, now - worker.billed_until))
        worker.billed_until = now

    def billing(self, now: float) -> dict[str, float]:
        total = Billing(self._billed.ready_seconds, self._billed.loading_seconds, self._billed.inactive_seconds)
        for worker in self.workers.values():
            total.add(worker.state, max(0.0, now - worker.billed_until))
        gpu = total.ready_seconds + total.loading_seconds
        cost = (gpu * self.price + total.inactive_seconds * self.storage_price) / 3600
        return {**vars(total), "cost": cost}

    def worker_views(self) -> list[dict[str, Any]]:
        return [
            {
                "id": w.id, "state": SDK_STATUS[w.state], "url": w.url, "control_url": w.control_url,
                "sessions": [s.view() for s in w.sessions.values()], "load": w.load,
                "grants": sorted(w.grants), "started_at": w.started_at, "loaded_at": w.loaded_at,
                **({"error": w.error} if w.error else {}),
            }  # fmt: skip
            for w in self.workers.values()
        ]

    def sdk_workers(self) -> list[dict[str, Any]]:
        """The workers as /get_endpoint_workers/ lists them (the SDK's `Worker` fields)."""
        return [
            {
                "id": w.id, "status": SDK_STATUS[w.state], "cur_load": w.load, "new_load": w.load,
                "cur_load_rolling_avg": w.load, "cur_perf": w.load, "perf": w.perf, "measured_perf": w.perf,
                "dlperf": w.perf, "reliability": 1.0, "reqs_working": w.used, "disk_usage": 10.0,
                "loaded_at": w.loaded_at or 0.0, "started_at": w.started_at,
            }  # fmt: skip
            for w in self.workers.values()
        ]

    def _log(self, t: float, event: str, worker_id: int, session_id: str | None, request_idx: int | None,
             **extra: Any) -> None:  # fmt: skip
        self.events.append({"t": t, "event": event, "endpoint": self.name, "worker_id": worker_id,
                            "session_id": session_id, "request_idx": request_idx, **extra})  # fmt: skip
