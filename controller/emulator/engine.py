"""One endpoint's autoscaler: routing, scaling and billing as plain state driven by timestamps.

Nothing here does I/O or reads the clock: callers pass `now`, and `tick(now)` returns the
actions (start, resume, stop, destroy) for the worker pool to carry out. It follows Vast's
documented behaviour (docs/emulator-vs-vast.md); `config.lenient` switches kinder shortcuts on.

Loads are in Vast's units: one worker has `perf` = 100 (the null worker's pinned max_perf), and a
session or request costs what its route asked for (the SDK's default cost 100 = one worker).

    demand  D = cost of open sessions + cost of granted routes (READY, no session yet)
              + cost of recent WAITING or refused routes, once routes have waited target_queue_time
    active  A = max(ceil(D / (target_util * perf)), ceil(min_load / (target_util * perf))), <= max_workers;
                at least 1 unless inactivity_timeout allows zero: 0 = at once, > 0 = after that
                long with D = 0 (never had demand: at once); unset or negative = never
    total   T = max(cold_workers, ceil(A * cold_mult), ceil(min_cold_load / perf)), A <= T <= max_workers

Each tick, loading workers whose model has loaded become ready at the worker library's next
status report (reports come 1 s after boot, then every report_interval; process workers: when
their report says so). While loading + ready < A, stopped workers resume (resume_seconds; a
resume fails with probability resume_failure: the stopped instance is gone and a new worker is
created instead), then new workers are created (cold_start_seconds); more are created while the
total is below T (they load, then stop: Vast's cold workers). While loading + ready > A, ready
workers that have held no session or grant for LOAD_REPORT_SECONDS (the library's report of it)
stop, chosen at random (Vast stops the worst price-performance first; emulated workers all have
one price). Stopped workers beyond T are
destroyed after inactive_destroy_seconds. A crashed worker shows as `error` for a few seconds,
then is destroyed.

Routing knows loads, not max_sessions (the worker's status report has no such field): a ready
worker is a candidate when it is empty or its expected queue time (load + cost) / perf stays
within max_queue_time; among the candidates with the least queue time, one is picked at random;
no candidate: the route WAITS. A worker whose session table is full answers the session with 429
(`rejected`): the route counts as waiting demand, and the client routes again. A re-poll with a
granted request_idx means the client could not use that grant: it is dropped and the route is
decided afresh. WAITING answers carry no request_idx, so a poll cannot name its route: it takes
the place of the waiting route polled least recently (REPOLL_SECONDS); a waiting route is
forgotten WAITING_SECONDS after it was last polled.

Billing: ready and loading seconds bill price_per_hour; stopped (inactive) seconds bill
storage_price_per_hour only; error seconds bill nothing.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.emulator.config import WORKER_PERF, EmulatorConfig, EndpointConfig

READY, LOADING, INACTIVE, ERROR = "ready", "loading", "inactive", "error"
SDK_STATUS = {READY: "idle", LOADING: "loading", INACTIVE: "stopped", ERROR: "error"}
GRANT_SECONDS = 15.0  # a READY route that becomes no session or request within this is dropped
#: A WAITING (or refused) route not polled again within this is dropped: longer than the SDK's
#: largest poll interval (5 s by default).
WAITING_SECONDS = 6.0
#: WAITING answers carry no request_idx, so the SDK polls with request_idx 0. Such a poll takes the
#: place of the waiting route (of its cost) polled least recently, if that was at least this long
#: ago, else it is a new waiting route: the count follows the number of clients that wait.
REPOLL_SECONDS = 0.1
FIRST_REPORT_SECONDS = 1.0  # the worker library's first status report after it starts
#: A change of load (a session ended) reaches Vast with the library's next report, within a second:
#: only then can a worker be seen idle and stopped.
LOAD_REPORT_SECONDS = 1.0
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
    ready_at: float = 0.0  # in-process: the library's first report after boot_until
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
        resume_failure: Callable[[], float | None] = lambda: None,
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
        self.resume_failure = config.knob(endpoint, "resume_failure")
        self.report_interval = config.report_interval
        self.lenient = config.lenient
        # Seeded per endpoint, so one endpoint's choices do not shift another's.
        self.rng = random.Random(None if config.seed is None else f"{config.seed}:{endpoint.name}")
        self._resume_failure_override = resume_failure
        self.price = config.knob(endpoint, "price_per_hour")
        self.storage_price = config.knob(endpoint, "storage_price_per_hour")
        self.destroy_after = config.inactive_destroy_seconds
        self._stuck = stuck
        self.workers: dict[int, Worker] = {}
        self.waiting: dict[int, WaitingRoute] = {}
        self.waiting_since: float | None = None  # routes have been waiting since (None: none wait)
        self.last_demand: float | None = None  # last tick with any demand (None: never)
        self.resume_failures = 0
        self.worker_log: deque[dict[str, Any]] = deque(maxlen=DELETED_KEPT * 10)  # state changes
        self.deleted: deque[int] = deque(maxlen=DELETED_KEPT)
        self._grant_owner: dict[int, int] = {}
        self._billed = Billing()

    # -- routing ---------------------------------------------------------------------------------

    def route(self, now: float, request_idx: int, cost: float) -> Ready | Waiting:
        """Grant a worker with room to this request, or keep it waiting (and counted as demand)."""
        if request_idx in self._grant_owner:
            self._drop_grant(self._grant_owner[request_idx], request_idx)
        repoll = None if request_idx else self._stalest_waiting(now, cost)
        if not request_idx:
            request_idx = self.ids.request_idx()
        worker = self._pick(cost)
        if worker is not None:
            self.waiting.pop(request_idx, None)
            if repoll is not None:
                del self.waiting[repoll]
            grant = Grant(cost=cost, reqnum=self.ids.reqnum(), deadline=now + GRANT_SECONDS)
            worker.grants[request_idx] = grant
            self._grant_owner[request_idx] = worker.id
            return Ready(worker, request_idx, grant.reqnum, cost)
        self._wait(now, request_idx if repoll is None else repoll, cost)
        return Waiting(request_idx if repoll is None else repoll)

    def _stalest_waiting(self, now: float, cost: float) -> int | None:
        """The waiting route an anonymous poll most likely repeats (see REPOLL_SECONDS)."""
        stale = [(e.last_seen, idx) for idx, e in self.waiting.items()
                 if e.cost == cost and now - e.last_seen >= REPOLL_SECONDS]  # fmt: skip
        return min(stale)[1] if stale else None

    def _wait(self, now: float, request_idx: int, cost: float) -> None:
        entry = self.waiting.get(request_idx)
        if entry is None:
            self.waiting[request_idx] = WaitingRoute(cost, now, now)
        else:
            entry.cost, entry.last_seen = cost, now
        if self.waiting_since is None:
            self.waiting_since = now

    def _pick(self, cost: float) -> Worker | None:
        """The worker with the least expected queue time that can take `cost`; ties at random."""
        candidates: list[tuple[float, Worker]] = []
        for worker in self.workers.values():
            if worker.state != READY:
                continue
            if self.lenient.route_skips_full_workers and worker.used >= self.max_sessions:
                continue
            load = worker.load
            if load > 0 and (load + cost) / worker.perf > self.endpoint.max_queue_time:
                continue
            candidates.append((load / worker.perf, worker))
        if not candidates:
            return None
        least = min(queue for queue, _ in candidates)
        best = [worker for queue, worker in candidates if queue <= least + 1e-9]
        if self.lenient.placement_idle_longest:
            return min(best, key=lambda w: w.last_busy)
        return self.rng.choice(best)

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

    def rejected(self, worker_id: int, request_idxs: list[int], now: float) -> None:
        """The worker refused these granted requests (429, its session table full): still demand."""
        worker = self.workers.get(worker_id)
        for idx in request_idxs:
            grant = worker.grants.get(idx) if worker else None
            self.requests_done(worker_id, [idx], now)
            if grant is not None:
                self._wait(now, idx, grant.cost)

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

    def _demand(self, now: float) -> float:
        live = [w for w in self.workers.values() if w.state != ERROR]
        demand = sum(w.load for w in live)
        if self.waiting_since is not None and now - self.waiting_since >= self.endpoint.target_queue_time:
            demand += sum(e.cost for e in self.waiting.values())
        return demand

    def targets(self, now: float) -> tuple[int, int]:
        """(active A, total T) per the formula in the module docstring."""
        ep = self.endpoint
        per_worker = ep.target_util * WORKER_PERF
        active = max(_ceil(self._demand(now) / per_worker), _ceil(ep.min_load / per_worker))
        if self.lenient.route_skips_full_workers:
            held = sum(w.used for w in self.workers.values() if w.state != ERROR)
            active = max(active, _ceil(held / self.max_sessions))
        if active == 0 and not self._may_scale_to_zero(now):
            active = 1
        active = min(active, ep.max_workers)
        total = max(ep.cold_workers, _ceil(active * ep.cold_mult), _ceil(ep.min_cold_load / WORKER_PERF))
        return active, min(max(total, active), ep.max_workers)

    def _may_scale_to_zero(self, now: float) -> bool:
        timeout = self.endpoint.inactivity_timeout
        if timeout is None or timeout < 0:
            return False
        return self.last_demand is None or now - self.last_demand >= timeout

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
                actions.append(self._destroy(worker, now, "destroyed"))
        self.waiting = {i: e for i, e in self.waiting.items() if now - e.last_seen <= WAITING_SECONDS}
        if not self.waiting:
            self.waiting_since = None
        if self._demand(now) > 0:
            self.last_demand = now

        want_active, want_total = self.targets(now)
        deficit = want_active - len(self._active())
        stopped = sorted((w for w in self.workers.values() if w.state == INACTIVE), key=lambda w: -w.since)
        for worker in stopped[: max(deficit, 0)]:
            if self.rng.random() < self._resume_failure():
                # A stopped instance holds no GPU: someone else took it. The instance is given up.
                self.resume_failures += 1
                actions.append(self._destroy(worker, now, "resume_failed"))
                continue
            self._boot(worker, now, resume=True)
            actions.append(Action("resume", worker.id))
        live = [w for w in self.workers.values() if w.state != ERROR]
        stopped_left = sum(1 for w in live if w.state == INACTIVE)
        deficit = want_active - len(self._active())
        new = max(deficit - stopped_left, want_total - len(live), 0)
        for _ in range(min(new, self.endpoint.max_workers - len(live))):
            worker = Worker(id=self.ids.worker(), state=LOADING, since=now, started_at=now,
                            needs_report=self.needs_report, billed_until=now)  # fmt: skip
            self.workers[worker.id] = worker
            self._boot(worker, now, resume=False)
            actions.append(Action("start", worker.id))

        active = self._active()
        excess = len(active) - want_active
        if excess > 0:
            idle = [w for w in active if w.state == READY and not w.used and self._idle_enough(w, now)]
            for worker in self.rng.sample(idle, min(excess, len(idle))):
                self._set_state(worker, INACTIVE, now)
                actions.append(Action("stop", worker.id))

        live = [w for w in self.workers.values() if w.state != ERROR]
        surplus = len(live) - want_total
        if surplus > 0:
            old = [w for w in live if w.state == INACTIVE and now - w.since >= self.destroy_after]
            for worker in sorted(old, key=lambda w: w.since)[:surplus]:
                actions.append(self._destroy(worker, now, "destroyed"))
        return actions

    def _active(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state in (LOADING, READY)]

    def _idle_enough(self, worker: Worker, now: float) -> bool:
        seconds = self.lenient.worker_idle_seconds
        return now - worker.last_busy >= (LOAD_REPORT_SECONDS if seconds is None else max(seconds, LOAD_REPORT_SECONDS))

    def _resume_failure(self) -> float:
        override = self._resume_failure_override()
        return self.resume_failure if override is None else override

    def _booted(self, worker: Worker, now: float) -> bool:
        if worker.stuck or now < worker.boot_until:
            return False
        return worker.reported if worker.needs_report else now >= worker.ready_at

    def _boot(self, worker: Worker, now: float, *, resume: bool) -> None:
        self._set_state(worker, LOADING, now)
        worker.boot_until = now + (self.resume if resume else self.cold_start)
        worker.ready_at = worker.boot_until
        if not self.lenient.early_readiness:
            # The library reports 1 s after it starts, then every report_interval: readiness is seen
            # at the first report after the model has loaded.
            first = now + FIRST_REPORT_SECONDS
            reports = max(0, math.ceil((worker.boot_until - first) / self.report_interval - 1e-9))
            worker.ready_at = first + reports * self.report_interval
        worker.reported = False
        worker.stuck = self._stuck()
        worker.error = ""

    # -- billing and views -----------------------------------------------------------------------

    def _set_state(self, worker: Worker, state: str, now: float) -> None:
        self._bill(worker, now)
        worker.state, worker.since = state, now
        self.worker_log.append({"t": now, "worker_id": worker.id, "state": SDK_STATUS[state]})

    def _destroy(self, worker: Worker, now: float, why: str) -> Action:
        self._bill(worker, now)
        del self.workers[worker.id]
        self.worker_log.append({"t": now, "worker_id": worker.id, "state": why})
        return Action("destroy", worker.id)

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
