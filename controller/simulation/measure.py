"""One run of one policy on one trace, and what it measures."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from controller.simulation.traces import Trace
from controller.simulation.world import Controller, Model, World

#: Builds a fresh controller for a run; the model tells it the endpoint's cap and timings.
PolicyFactory = Callable[[Model], Controller]


@dataclass(frozen=True)
class Result:
    """What one run measured. Times in seconds; cost in billed worker-seconds.

    wait = finish - arrival - service: the time a job was not being usefully served, so a job
    interrupted by scale-in also counts the run it lost. A job still unfinished when the run
    ends (only at the drain limit) counts as waiting until then.
    """

    trace: str
    policy: str
    jobs: int
    unfinished: int
    wait_p50: float
    wait_p95: float
    wait_p99: float
    wait_max: float
    cost: float  # billed worker-seconds: loading + ready
    idle: float  # billed worker-seconds not running a job (loading or idle)
    opens: int  # session requests made
    interrupted: int  # jobs interrupted by scale-in
    mismatch: float  # area between sessions (open + opening) and work (waiting + in flight)
    seconds: float  # virtual time simulated
    # After the trace's learning time (its first period), when it has one: the p95 wait of the
    # jobs arriving after it, and the cost billed after it.
    learning: float = 0.0
    learned_p95: float | None = None
    learned_cost: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def p95_after(self) -> float:
        """p95 wait after the learning time (of the whole run without one)."""
        return self.wait_p95 if self.learned_p95 is None else self.learned_p95

    @property
    def cost_after(self) -> float:
        """Cost billed after the learning time (the whole run's without one)."""
        return self.cost if self.learned_cost is None else self.learned_cost


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


DEFAULT_MODEL = Model()


def simulate(trace: Trace, policy: PolicyFactory, model: Model = DEFAULT_MODEL, name: str = "") -> Result:
    """Play `trace` against a fresh controller from `policy` and measure the run."""
    controller = policy(model)
    world = World(trace, model, controller.consumer)
    world.run(controller)
    waits, unfinished = [], 0
    for arrival, service, finished in zip(trace.arrivals, trace.services, world.finished_at, strict=True):
        if finished is None:
            unfinished += 1
            waits.append(world.now - arrival)
        else:
            # Rounded to the microsecond: float sums must not turn "no wait" into 1e-14 s.
            waits.append(max(0.0, round(finished - arrival - service, 6)))
    learned = [w for w, at in zip(waits, trace.arrivals, strict=True) if at >= trace.learning]
    return Result(
        trace=trace.name,
        policy=name or type(controller).__name__,
        jobs=len(trace.arrivals),
        unfinished=unfinished,
        wait_p50=percentile(waits, 0.50),
        wait_p95=percentile(waits, 0.95),
        wait_p99=percentile(waits, 0.99),
        wait_max=max(waits, default=0.0),
        cost=world.billed_seconds,
        idle=world.billed_seconds - world.busy_seconds,
        opens=world.opens,
        interrupted=world.interrupted,
        mismatch=world.mismatch_seconds,
        seconds=world.now - world.started_at,
        learning=trace.learning,
        learned_p95=percentile(learned, 0.95) if trace.learning else None,
        learned_cost=world.billed_seconds - world.billed_in_learning if trace.learning else None,
    )
