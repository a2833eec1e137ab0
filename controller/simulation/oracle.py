"""The oracle: knows every future arrival and service time, and opens each job's session exactly
one start-up time ahead of the job, so the job finds a ready worker and no worker waits long.

The start-up time is what the engine will need when the session is opened: none when a worker
will be idle and not yet stopped when the job arrives (open at arrival; or just before the worker
would stop, when keeping it costs less than a resume), the resume time when a stopped worker is
left, else the mean cold start. Every second it re-plans: it matches the coming arrivals, in
order, to what will be free for them (sessions it holds or has asked for first, then workers that
will be idle, earliest deadline first) and opens what is due. A clairvoyant greedy plan: a near
lower bound on waits at the lowest cost, not a proven optimum.

It respects the endpoint's `max_workers`: a job that would need a worker beyond the cap waits for
the first session or worker to free instead (a session asked for beyond the cap would only queue
at the endpoint). Each plan stops at the first job that can no longer be due now: one arriving
after a resume time from now, with more stopped workers to resume than jobs left in the window.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right, insort

from controller.simulation.world import Consumer, Model, World


class Oracle:
    consumer = Consumer.REFERENCE

    def __init__(self, model: Model, interval: float = 1.0):
        self.cold_start = model.mean_cold_start
        self.resume = model.resume
        self.timeout = model.inactivity_timeout
        self.max_workers = model.max_workers
        self.interval = interval
        self._first_future = 0  # index of the first arrival after now

    def tick(self, now: float, world: World) -> float:
        arrivals, services = world.trace.arrivals, world.trace.services
        while self._first_future < len(arrivals) and arrivals[self._first_future] <= now:
            self._first_future += 1
        last = bisect_right(arrivals, now + self.cold_start + self.interval, lo=self._first_future)
        if last == self._first_future and not world.queue:
            return self.interval  # no job waits or comes within a cold start: none is due
        # Jobs already waiting come first, as if arriving now.
        upcoming = [(now, services[job]) for job in world.queue]
        upcoming += zip(arrivals[self._first_future : last], services[self._first_future : last], strict=True)
        sessions, idle, workers = self._free_times(now, world)
        capacity = self.max_workers - world.loading - world.ready
        world.open(self._due(now, upcoming, sessions, idle, workers, len(world.stopped), capacity))
        return self.interval

    def _due(
        self,
        now: float,
        upcoming: list[tuple[float, float]],
        sessions: list[float],
        usable: list[float],
        workers: list[float],
        stopped: int,
        capacity: int,
    ) -> int:
        """How many of the `upcoming` (arrival, service) jobs need a session opened now.

        A job takes, in this order: a session held or asked for that is free by then (give or
        take a tick); an idle worker, earliest deadline first (`usable`: when each idle worker
        stops; `workers`: when more will be idle, each stopping `timeout` later); a session that frees before a
        new worker could be ready; a resumed worker; a new one; and past the cap (`capacity`
        more workers may start now, plus one per idle worker that stops first) the first
        session or worker to free. Whatever serves a job is free again when the job ends.
        """
        soon = now + self.interval  # opening at the next tick would be late
        expired: list[float] = []  # when unused idle workers stop: each can be resumed after
        resumed = started = due = 0
        for index, (arrival, service) in enumerate(upcoming):
            while workers and workers[0] <= arrival:
                heapq.heappush(usable, heapq.heappop(workers) + self.timeout)
            # An idle worker serves the arrival if it is still up then, or if keeping it (a
            # session opened just before it would stop) costs less than a resume later.
            while usable and usable[0] + self.resume < arrival:
                insort(expired, heapq.heappop(usable))
            resumable = stopped + bisect_right(expired, arrival - self.resume) - resumed
            if arrival >= soon + self.resume and resumable >= len(upcoming) - index:
                break  # every job left is served without a cold start, none of them due now
            start = arrival
            if sessions and sessions[0] <= arrival + self.interval:
                heapq.heappop(sessions)
            elif usable:
                until = heapq.heappop(usable)
                due += min(arrival, until) < soon and until - self.timeout <= now
            else:
                lead = self.resume if resumable > 0 else self.cold_start
                if sessions and sessions[0] <= max(arrival, now + lead):
                    heapq.heappop(sessions)
                elif started < capacity + bisect_right(expired, arrival):
                    started += 1
                    resumed += resumable > 0
                    due += arrival - lead < soon
                else:
                    start = max(arrival, self._first_free(sessions, workers))
            heapq.heappush(workers, start + service)
        return due

    @staticmethod
    def _first_free(sessions: list[float], workers: list[float]) -> float:
        """Take whichever session or worker frees first (at the cap); when it frees."""
        if sessions and (not workers or sessions[0] <= workers[0]):
            return heapq.heappop(sessions)
        if workers:
            return heapq.heappop(workers)
        return -math.inf

    def _free_times(self, now: float, world: World) -> tuple[list[float], list[float], list[float]]:
        """When held and asked-for sessions will be free for a job; when each idle worker stops;
        when more workers will idle without being asked for. All three as heaps (sorted lists)."""
        sessions = [now] * len(world.holding)
        idle = sorted(world.workers[w].idle_since + self.timeout for w in world.idle)
        loading, ending = [], []
        for worker in world.workers:
            if worker.ready_at is not None:
                loading.append(worker.ready_at)
            elif worker.job is not None:
                ending.append(worker.job_started + world.trace.services[worker.job])
        # Waiting requests take the first loading workers, or else the first workers to finish
        # a job; the rest of those workers will idle.
        loading.sort()
        ending.sort()
        waiting = world.sessions_opening
        from_ending = max(0, waiting - len(loading))
        sessions += loading[:waiting] + ending[:from_ending]
        idle_later = loading[waiting:] + ending[from_ending:]
        sessions.sort()
        idle_later.sort()
        return sessions, idle, idle_later
