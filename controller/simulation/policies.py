"""The policies under test: ours (the real `controller.policy.decide`) and the KEDA baselines.

`KnownRate` is ours with a wait target told the trace's true arrival rate (what a perfect
profile would know, not the arrivals): how far learning the rate could take the wait rows.

Each is a `Controller`: the world calls `tick(now, world)` and waits the returned delay. The
baselines follow KEDA 2.x and the Kubernetes HPA at their defaults, mapped onto Vast sessions
(a replica or a Job is one session on one worker):

- ScaledObject + HPA: KEDA polls every 30 s and does only 0 <-> 1 (1 as soon as the metric is
  above its activation value 0; 0 once it was inactive for the 300 s cooldown). The HPA syncs every
  15 s and reads the metric fresh (KEDA's metrics adapter queries the scaler on each HPA read):
  desired = ceil(metric / 1) unless within the 10% tolerance of the current count, at least 1;
  scale-up at most max(2 x current, current + 4) per sync; scale-down to the highest desired count
  of the last 300 s. Replicas are long-lived consumers. Surplus removes pending replicas first,
  then ready ones by the ReplicaSet's rule: shortest time ready in log2 buckets, ties at random,
  never looking at who is busy, so busy workers are killed and their jobs requeued.
- ScaledJob: every 30 s, maxScale = min(queue length, max); `default` creates maxScale - running
  Jobs (running = unfinished, pending included), `accurate` creates maxScale - pending (or
  max - running near the cap). Each strategy reads the queue length its documentation asks for:
  default counts locked (in-flight) messages, accurate only the waiting ones. A Job takes one
  message (or finds none) and exits; Jobs are never deleted.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

from controller.config import PolicyConfig
from controller.policy import PolicyState, Supply, close_order, decide, one_queue
from controller.simulation.world import Consumer, World
from controller.sources import QueueDepth


class Ours:
    """The controller's loop: read the depth, `decide()`, cancel youngest, close youngest, open.

    It reads every `poll_interval`, as the loop does, but a reading that would see just what the
    last one saw, with nothing waiting, is put off (up to `quiet` seconds): nothing the policy
    reads has changed, and the run takes a fraction of the time (most seconds of a long trace
    are such). What moves with time alone is kept: the reading a poll before the next change is
    made first (the scale-down window's hold and the averages then start from it, as they would
    every second), a reading is made when the window's oldest hold ends, and at least every
    `quiet` seconds (the arrival rate's decay, the forecast's bins: those act up to that late).
    `quiet=0` reads every poll. Without a rate estimate or a wait target, the scale-down window is
    all that moves with time, so nothing is late and there is no cap.
    """

    consumer = Consumer.REFERENCE

    def __init__(self, config: PolicyConfig, poll_interval: float = 1.0, quiet: float = 10.0):
        self.config = config
        self.poll_interval = poll_interval
        self.state = PolicyState()
        # A boot grace makes the sessions' ages an input that changes every second; without a
        # rate or a wait target nothing but the window moves with time, so no cap is needed.
        timed = config.wait_target is not None or config.estimates_rate
        self.quiet = 0.0 if config.boot_grace or not quiet else quiet if timed else math.inf
        self._seen: tuple[int, int, int] | None = None  # (in flight, open, opening) of a quiet reading
        self._read_by = 0.0
        self._put_off = False

    def tick(self, now: float, world: World) -> float:
        seen = (world.in_flight, world.sessions_open, world.sessions_opening)
        if seen == self._seen and not world.waiting and not world.startups and now < self._read_by:
            self._put_off = True
            return self.poll_interval
        if self._put_off:
            # The reading of a poll ago, which saw what the last one saw; its steps are not
            # taken (the world has moved on since): this reading decides again.
            in_flight, open_, opening = self._seen  # type: ignore[misc]
            before = now - self.poll_interval
            quiet = one_queue(QueueDepth(0, in_flight))
            self.state = decide(quiet, Supply(open_, opening), self.config, before, self.state, self.poll_interval,
                                explain=False).state  # fmt: skip
            self._put_off = False
        oldest = now - world.trace.arrivals[world.queue[0]] if world.queue else None
        depth = QueueDepth(waiting=world.waiting, in_flight=world.in_flight, oldest_age=oldest)
        # Ages only matter with a boot grace; building them costs a pass over every session.
        ages = tuple(now - at for at in world.granted_at.values()) if self.config.boot_grace > 0 else ()
        startups = tuple(world.startups)
        world.startups.clear()
        supply = Supply(open=world.sessions_open, opening=world.sessions_opening, ages=ages, startups=startups)
        decision = decide(one_queue(depth), supply, self.config, now, self.state, self.poll_interval, explain=False)
        self.state = decision.state
        acts = decision.act and bool(decision.open or decision.cancel or decision.close)
        self._seen = None if acts or world.waiting else seen
        window = self.state.window
        self._read_by = now + self.quiet
        if len(window) > 1:
            self._read_by = min(self._read_by, window[0][0] + self.config.scale_down_delay)
        if not acts:
            return self.poll_interval
        # SessionPool.apply's order: cancel the youngest requests, close the youngest sessions
        # old enough to close (boot grace), open.
        world.cancel_youngest(decision.cancel)
        if decision.close:
            world.close(close_order(world.granted_at, world.granted_at.__getitem__, decision, now))
        world.open(decision.open)
        return self.poll_interval


class KnownRate(Ours):
    """Ours, its wait target's arrival rate replaced at every reading by `rate` one measured
    start-up ahead (the forecast is off: it has nothing to add to the true rate)."""

    def __init__(self, config: PolicyConfig, rate: Callable[[float], float]):
        assert config.wait_target is not None
        super().__init__(config.model_copy(update={"forecast": False}))
        self.rate = rate

    def tick(self, now: float, world: World) -> float:
        learned = self.state.learned
        if learned.wait is not None:
            told = replace(learned.wait, rate=self.rate(now + learned.startup.lead))
            self.state = replace(self.state, learned=replace(learned, wait=told))
        return super().tick(now, world)


class KedaScaledObject:
    """KEDA ScaledObject driving an HPA, both at their defaults (see the module docstring)."""

    consumer = Consumer.LONG_LIVED

    def __init__(
        self,
        max_replicas: int,
        seed: int,
        polling_interval: float = 30.0,
        sync_period: float = 15.0,
        sync_offset: float = 7.5,  # the two loops are not aligned; HPA syncs halfway between polls
        tolerance: float = 0.1,
        stabilization: float = 300.0,
        cooldown: float = 300.0,
    ):
        self.max_replicas = max_replicas
        self.polling_interval = polling_interval
        self.sync_period = sync_period
        self.tolerance = tolerance
        self.stabilization = stabilization
        self.cooldown = cooldown
        self.replicas = 0
        self.last_active: float | None = None
        self.recommendations: deque[tuple[float, int]] = deque()
        self.next_poll = 0.0
        self.next_sync = sync_offset
        self.rng = random.Random(seed)

    def tick(self, now: float, world: World) -> float:
        metric = world.waiting + world.in_flight
        if now >= self.next_poll:
            self._poll(now, metric)
            self.next_poll += self.polling_interval
        if now >= self.next_sync:
            if self.replicas > 0:  # the HPA does not act on a target scaled to zero
                self._sync(now, metric)
            self.next_sync += self.sync_period
        self._apply(now, world)
        return min(self.next_poll, self.next_sync) - now

    def _poll(self, now: float, metric: int) -> None:
        if metric > 0:
            self.last_active = now
            self.replicas = max(self.replicas, 1)
        elif self.replicas and self.last_active is not None and now - self.last_active >= self.cooldown:
            self.replicas = 0

    def _sync(self, now: float, metric: int) -> None:
        current = self.replicas
        desired = current
        if abs(1 - metric / current) > self.tolerance:
            desired = math.ceil(metric)
        desired = max(1, min(self.max_replicas, desired))
        self.recommendations.append((now, desired))
        while self.recommendations[0][0] <= now - self.stabilization:
            self.recommendations.popleft()
        if desired > current:
            self.replicas = min(desired, max(2 * current, current + 4), self.max_replicas)
        else:
            self.replicas = min(current, max(value for _, value in self.recommendations))

    def _apply(self, now: float, world: World) -> None:
        have = world.sessions_open + world.sessions_opening
        if self.replicas > have:
            world.open(self.replicas - have)
            return
        surplus = have - self.replicas
        pending = min(surplus, world.sessions_opening)
        world.cancel_youngest(pending)
        if surplus > pending:
            world.close(self._victims(now, world, surplus - pending))

    def _victims(self, now: float, world: World, count: int) -> list[int]:
        def rank(item: tuple[int, float]) -> tuple[int, float]:
            ready_for = max(1.0, now - item[1])
            return int(math.log2(ready_for)), self.rng.random()

        return [session for session, _ in sorted(world.granted_at.items(), key=rank)[:count]]


class KedaScaledJob:
    """KEDA ScaledJob, one Job per message, `default` or `accurate` strategy, 30 s polling."""

    consumer = Consumer.ONE_JOB

    def __init__(
        self,
        strategy: Literal["default", "accurate"],
        max_replicas: int,
        polling_interval: float = 30.0,
    ):
        self.strategy = strategy
        self.max_replicas = max_replicas
        self.polling_interval = polling_interval

    def tick(self, now: float, world: World) -> float:
        queue_length = world.waiting + (world.in_flight if self.strategy == "default" else 0)
        running = world.sessions_open + world.sessions_opening  # unfinished Jobs
        pending = world.sessions_opening  # Jobs whose pod does not run yet
        max_scale = min(queue_length, self.max_replicas)
        if self.strategy == "default":
            effective = max_scale - running
        elif max_scale + running > self.max_replicas:
            effective = self.max_replicas - running
        else:
            effective = max_scale - pending
        if queue_length > 0 and effective > 0:
            world.open(min(queue_length, effective))
        return self.polling_interval
