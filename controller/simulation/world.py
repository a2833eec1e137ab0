"""The simulated world in virtual time: a job queue, and a Vast endpoint whose workers serve sessions.

The Vast side, kept simple on purpose (the real autoscaler's formula is not published):

- A session request goes at once to an idle ready worker (one without a session; the one idle
  the shortest time first), else it waits in the endpoint's queue.
- The engine keeps one loading worker per waiting request, up to `max_workers` loading + ready:
  it resumes a stopped worker (`resume` seconds) before creating a new one (`cold_start`).
- A worker that finishes loading takes the oldest waiting request, else it idles. A cancelled
  request leaves its worker loading; that worker then idles like any other.
- A ready worker without a session for `inactivity_timeout` seconds is stopped.
- Loading and ready workers are billed (the GPU); stopped ones cost nothing here (storage only).

One session per worker. A worker holding a session runs the queue's jobs one at a time, oldest
first; what its consumer does with the session afterwards is the `Consumer` style of the policy
under test. Closing a session whose worker runs a job interrupts the job: it goes back to the front
of the queue at once (its lost run time still billed).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from controller.simulation.traces import Trace, distribution, mean

# Event kinds, in the order they run when they share an instant: a controller's tick sees the
# state after everything else that happened at that moment.
_FINISH, _READY, _ARRIVAL, _STOP, _TICK = range(5)


class Consumer(Enum):
    """What the consumer on a worker does with its session."""

    # examples/consumer: after a job, take the next one if any is waiting, else release; with a
    # session and nothing to do, wait for work.
    REFERENCE = "reference"
    ONE_JOB = "one-job"  # a KEDA ScaledJob: take one job (or none), then exit
    LONG_LIVED = "long-lived"  # a KEDA ScaledObject replica: never lets go


class Controller(Protocol):
    """A scaling policy under test: called as the run starts, then after each returned delay."""

    consumer: Consumer

    def tick(self, now: float, world: World) -> float: ...


@dataclass(frozen=True)
class Model:
    """The Vast endpoint and the length of a run."""

    cold_start: str = "180"  # a distribution: "180", "uniform:150:210", "lognormal:180:0.2"
    resume: float = 30.0  # a stopped worker back to ready
    inactivity_timeout: float = 10.0  # Vast's endpoint setting (the null worker's tested value)
    max_workers: int = 100  # the endpoint's cap, for every policy (KEDA's default maxReplicaCount)
    seed: int = 1
    drain_limit: float = 7200.0  # stop this long after the last arrival even if never idle

    @property
    def mean_cold_start(self) -> float:
        return mean(self.cold_start)


class Worker:
    __slots__ = ("epoch", "id", "idle_since", "job", "job_started", "ready_at", "session")

    def __init__(self, worker_id: int):
        self.id = worker_id
        self.ready_at: float | None = None  # set while loading
        self.session: int | None = None
        self.job: int | None = None
        self.job_started = 0.0
        self.idle_since = 0.0
        self.epoch = 0  # bumped on every change, so stale timers are ignored


class World:
    """Jobs, workers and sessions; controllers read the counts and call open/cancel/close."""

    def __init__(self, trace: Trace, model: Model, consumer: Consumer):
        self.trace = trace
        self.model = model
        self.consumer = consumer
        # The clock starts one cold start before the trace, so that the oracle can have workers
        # ready for the very first jobs; nothing else happens in that lead-in.
        self.now = self.started_at = -model.mean_cold_start
        self._cold_start = distribution(model.cold_start, random.Random(model.seed))
        self._events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.queue: deque[int] = deque()
        self.finished_at: list[float | None] = [None] * len(trace.arrivals)
        self.workers: list[Worker] = []
        self.idle: dict[int, None] = {}  # ready, no session; in the order they became idle
        self.holding: dict[int, None] = {}  # ready, a session, no job
        self.stopped: list[int] = []
        self.loading = 0
        self.ready = 0
        self.busy = 0
        self.requests: dict[int, None] = {}  # waiting session requests, oldest first
        self.sessions: dict[int, int] = {}  # granted session -> worker, in grant order
        self.granted_at: dict[int, float] = {}
        self.requested_at: dict[int, float] = {}  # waiting requests: when each was made
        # Request-to-grant seconds of the latest grants, for a controller that measures them.
        self.startups: deque[float] = deque(maxlen=1024)
        self._next_session = 0
        # What a run measures, integrated over time between events.
        self.billed_seconds = 0.0
        self.busy_seconds = 0.0
        self.mismatch_seconds = 0.0  # area between sessions and work (waiting + in flight)
        self.billed_in_learning = 0.0  # billed_seconds at trace.learning (0 without learning)
        self.opens = 0
        self.interrupted = 0

    # ---- what a controller sees --------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def in_flight(self) -> int:
        return self.busy

    @property
    def sessions_open(self) -> int:
        return len(self.sessions)

    @property
    def sessions_opening(self) -> int:
        return len(self.requests)

    # ---- what a controller does --------------------------------------------------------------

    def open(self, count: int) -> None:
        """Request `count` sessions."""
        for _ in range(count):
            session = self._next_session
            self._next_session += 1
            self.opens += 1
            self.requested_at[session] = self.now
            if self.idle:
                self._grant(session, self.idle.popitem()[0])
            else:
                self.requests[session] = None
        self._start_workers()

    def cancel_youngest(self, count: int) -> None:
        """Drop the `count` most recent waiting requests; their loading workers carry on."""
        if count <= 0:
            return  # every tick asks; building the list is the cost
        for session in list(reversed(self.requests))[:count]:
            del self.requests[session]
            del self.requested_at[session]

    def close_youngest(self, count: int) -> None:
        """Close the `count` most recently granted sessions, busy or not."""
        self.close(list(reversed(self.sessions))[:count])

    def close(self, sessions: list[int]) -> None:
        """Close these granted sessions; a job running under one is interrupted and requeued."""
        for session in sessions:
            self._end_session(session, interrupt=True)

    # ---- the engine ---------------------------------------------------------------------------

    def _start_workers(self) -> None:
        while len(self.requests) > self.loading and self.loading + self.ready < self.model.max_workers:
            if self.stopped:
                worker, delay = self.workers[self.stopped.pop()], self.model.resume
            else:
                worker, delay = Worker(len(self.workers)), self._cold_start()
                self.workers.append(worker)
            self.loading += 1
            worker.epoch += 1
            worker.ready_at = self.now + delay
            self._schedule(worker.ready_at, _READY, worker.id, worker.epoch)

    def _grant(self, session: int, worker_id: int) -> None:
        worker = self.workers[worker_id]
        worker.session = session
        worker.epoch += 1
        self.sessions[session] = worker_id
        self.granted_at[session] = self.now
        self.startups.append(self.now - self.requested_at.pop(session))
        if self.queue:
            self._run_next(worker)
        elif self.consumer is Consumer.ONE_JOB:
            self._end_session(session, interrupt=False)  # nothing to take: the job exits
        else:
            self.holding[worker_id] = None

    def _free(self, worker: Worker) -> None:
        """A ready worker lost its session: it serves the oldest waiting request, else idles."""
        if self.requests:
            session = next(iter(self.requests))
            del self.requests[session]
            self._grant(session, worker.id)
            return
        worker.epoch += 1
        worker.idle_since = self.now
        self.idle[worker.id] = None
        self._schedule(self.now + self.model.inactivity_timeout, _STOP, worker.id, worker.epoch)

    def _end_session(self, session: int, *, interrupt: bool) -> None:
        worker = self.workers[self.sessions.pop(session)]
        del self.granted_at[session]
        worker.session = None
        self.holding.pop(worker.id, None)
        if worker.job is not None:
            assert interrupt, "a consumer releases only between jobs"
            self.queue.appendleft(worker.job)
            worker.job = None
            self.busy -= 1
            self.interrupted += 1
        self._free(worker)
        self._dispatch()

    def _run_next(self, worker: Worker) -> None:
        job = self.queue.popleft()
        worker.job = job
        worker.job_started = self.now
        worker.epoch += 1
        self.busy += 1
        self._schedule(self.now + self.trace.services[job], _FINISH, worker.id, worker.epoch)

    def _dispatch(self) -> None:
        while self.queue and self.holding:
            worker_id = next(iter(self.holding))
            del self.holding[worker_id]
            self._run_next(self.workers[worker_id])

    # ---- events -------------------------------------------------------------------------------

    def _schedule(self, at: float, kind: int, subject: int, epoch: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, kind, self._seq, subject, epoch))

    def _advance(self, to: float) -> None:
        elapsed = to - self.now
        if elapsed > 0:
            billed = self.loading + self.ready
            if self.now < self.trace.learning <= to:
                self.billed_in_learning = self.billed_seconds + (self.trace.learning - self.now) * billed
            self.billed_seconds += elapsed * billed
            self.busy_seconds += elapsed * self.busy
            work = len(self.queue) + self.busy
            self.mismatch_seconds += elapsed * abs(len(self.sessions) + len(self.requests) - work)
            self.now = to

    def _on_finish(self, worker: Worker) -> None:
        self.finished_at[worker.job] = self.now
        worker.job = None
        self.busy -= 1
        if self.queue and self.consumer is not Consumer.ONE_JOB:
            self._run_next(worker)
        elif self.consumer is Consumer.LONG_LIVED:
            self.holding[worker.id] = None
        else:
            self._end_session(worker.session, interrupt=False)

    def _on_ready(self, worker: Worker) -> None:
        self.loading -= 1
        self.ready += 1
        worker.ready_at = None
        self._free(worker)

    def _on_stop(self, worker: Worker) -> None:
        del self.idle[worker.id]
        self.ready -= 1
        worker.epoch += 1
        self.stopped.append(worker.id)

    def run(self, controller: Controller) -> None:
        """Play the trace against `controller` until all is done and idle (or the drain limit)."""
        arrivals = self.trace.arrivals
        for job, at in enumerate(arrivals):
            self._events.append((at, _ARRIVAL, job, job, 0))
        self._seq = len(arrivals)
        heapq.heapify(self._events)
        self._schedule(self.now, _TICK, 0, 0)
        last_arrival = arrivals[-1] if arrivals else 0.0
        deadline = last_arrival + self.model.drain_limit
        handlers = {_FINISH: self._on_finish, _READY: self._on_ready, _STOP: self._on_stop}
        remaining = len(arrivals)
        while self._events:
            at, kind, _, subject, epoch = heapq.heappop(self._events)
            if at > deadline:
                self._advance(deadline)
                return
            self._advance(at)
            if kind == _TICK:
                if remaining == 0 and self._settled():
                    return
                self._schedule(at + controller.tick(at, self), _TICK, 0, 0)
            elif kind == _ARRIVAL:
                self.queue.append(subject)
                self._dispatch()
            else:
                worker = self.workers[subject]
                if worker.epoch == epoch:
                    if kind == _FINISH:
                        remaining -= 1
                    handlers[kind](worker)

    def _settled(self) -> bool:
        return not (self.loading or self.ready or self.sessions or self.requests)
