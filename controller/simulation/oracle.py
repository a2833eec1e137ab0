"""The oracle: knows every future arrival and service time, and opens each job's session exactly
one start-up time ahead of the job, so the job finds a ready worker and no worker waits long.

The start-up time is what the engine will need when the session is opened: none when a worker
will be idle and not yet stopped when the job arrives (open at arrival; or just before the worker
would stop, when keeping it costs less than a resume), the resume time when a stopped worker is
left, else the mean cold start. Every second it re-plans: it matches the coming arrivals, in
order, to what will be free for them (sessions it holds or has asked for first, then workers that
will be idle, earliest deadline first) and opens what is due. A clairvoyant greedy plan: a near
lower bound on waits at the lowest cost, not a proven optimum.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort

from controller.simulation.world import Consumer, Model, World

Slot = tuple[float, float]  # a worker that will idle: (free from, stops at)


class Oracle:
    consumer = Consumer.REFERENCE

    def __init__(self, model: Model, interval: float = 1.0):
        self.cold_start = model.mean_cold_start
        self.resume = model.resume
        self.timeout = model.inactivity_timeout
        self.interval = interval
        self._first_future = 0  # index of the first arrival after now

    def tick(self, now: float, world: World) -> float:
        arrivals, services = world.trace.arrivals, world.trace.services
        while self._first_future < len(arrivals) and arrivals[self._first_future] <= now:
            self._first_future += 1
        last = bisect_right(arrivals, now + self.cold_start + self.interval, lo=self._first_future)
        # Jobs already waiting come first, as if arriving now.
        upcoming = [(now, services[job]) for job in world.queue]
        upcoming += zip(arrivals[self._first_future : last], services[self._first_future : last], strict=True)
        sessions, workers = self._free_times(now, world)
        world.open(self._due(now, upcoming, sessions, workers, len(world.stopped)))
        return self.interval

    def _due(
        self,
        now: float,
        upcoming: list[tuple[float, float]],
        sessions: list[float],
        workers: list[Slot],
        stopped: int,
    ) -> int:
        """How many of the `upcoming` (arrival, service) jobs need a session opened now.

        A job takes, in this order: a session held or asked for that is free by then (give or
        take a tick); an idle worker, earliest deadline first; a session that frees before a
        new worker could be ready; a resumed worker; a new one. Whatever serves a job is free
        again when the job ends.
        """
        soon = now + self.interval  # opening at the next tick would be late
        usable: list[tuple[float, float]] = []  # (usable until, free from) of idle workers
        expired: list[float] = []  # when unused idle workers stop: each can be resumed after
        resumed = due = 0
        for arrival, service in upcoming:
            while workers and workers[0][0] <= arrival:
                free_from, until = heapq.heappop(workers)
                heapq.heappush(usable, (until, free_from))
            # An idle worker serves the arrival if it is still up then, or if keeping it (a
            # session opened just before it would stop) costs less than a resume later.
            while usable and usable[0][0] + self.resume < arrival:
                insort(expired, heapq.heappop(usable)[0])
            ends = arrival + service
            heapq.heappush(workers, (ends, ends + self.timeout))
            if sessions and sessions[0] <= arrival + self.interval:
                heapq.heappop(sessions)
                continue
            if usable:
                until, free_from = heapq.heappop(usable)
                due += min(arrival, until) < soon and free_from <= now
                continue
            resume = stopped + bisect_right(expired, arrival - self.resume) > resumed
            lead = self.resume if resume else self.cold_start
            if sessions and sessions[0] <= max(arrival, now + lead):
                heapq.heappop(sessions)
                continue
            resumed += resume
            due += arrival - lead < soon
        return due

    def _free_times(self, now: float, world: World) -> tuple[list[float], list[Slot]]:
        """When held and asked-for sessions will be free for a job, and which workers will idle
        without being asked for (free from, stops at); both as heaps (sorted lists)."""
        sessions = [now] * len(world.holding)
        workers = [(now, world.workers[w].idle_since + self.timeout) for w in world.idle]
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
        workers += [(t, t + self.timeout) for t in idle_later]
        sessions.sort()
        workers.sort()
        return sessions, workers
