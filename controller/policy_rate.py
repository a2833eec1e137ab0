"""The arrival-rate estimate behind pre-warming, inferred from successive depth readings alone.

Sources report depths, not arrivals or completions, and Δtotal = arrivals − completions between
two reads. So, over the dt between two good reads:

    completions ≈ mean(in_flight) × dt / seconds_per_unit   (each unit in flight finishes at
                                                            1 / seconds_per_unit per second)
    arrivals    ≈ Δtotal + completions

That is exact on average, not per interval: over a 1 s tick a finished unit shows as Δtotal = −1
against a fraction of an estimated completion. Clipping each interval at zero would drop those
negative terms and count the completions again as arrivals (about twice the true rate in a
steady state), so intervals are averaged unclipped and the average is clipped at zero when used.
Without seconds_per_unit completions are unknown and taken as 0: the estimate is then how fast
the queue grows (a lower bound on arrivals, exact while a burst fills the queue, 0 when steady).
Totals are weighted like the targets (weight × units, summed over sources).

In a steady state rate × seconds_per_unit is about the mean in-flight work whatever
seconds_per_unit is (the completions term is in_flight / seconds_per_unit); seconds_per_unit
sets how far a growing queue is extrapolated.

arrivals / dt is averaged as an EWMA with time constant rate_window (at least seconds_per_unit,
so that one unit never reads as a load above one unit): each interval weighs
1 − exp(−dt / window), so ticks that come early (a push from the queue) weigh less, and an
outage counts as one long interval. The first read starts the average at in_flight /
seconds_per_unit, the rate that keeps that depth steady (0 without seconds_per_unit). Pure: the
clock is the caller's `now`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import PolicyConfig

#: Float noise below this is no fraction of a session: 2.0000000001 sessions is 2.
_EPSILON = 1e-9


@dataclass(frozen=True)
class RateState:
    """The last good read the next interval starts from, and the averaged rate (units/s; it can
    dip below zero while a queue drains: read it through `arrival_rate`)."""

    at: float
    total: float
    in_flight: float
    rate: float = 0.0


def update(
    previous: RateState | None, now: float, total: float, in_flight: float, config: PolicyConfig
) -> RateState:
    """The estimate after one more good read of `total` (and `in_flight`) units at `now`."""
    if previous is None:
        # Start from the rate that keeps this depth steady: a fresh estimate that began at 0
        # would first let sessions go that it asks back for a rate_window later.
        steady = in_flight / config.seconds_per_unit if config.seconds_per_unit is not None else 0.0
        return RateState(now, total, in_flight, steady)
    dt = now - previous.at
    if dt == 0:
        return previous  # a second read at the same instant: the interval goes on from the first
    if dt < 0:
        # The wall clock stepped back: start a new interval here, keep what was learnt.
        return RateState(now, total, in_flight, previous.rate)
    completions = 0.0
    if config.seconds_per_unit is not None:
        completions = (previous.in_flight + in_flight) / 2 * dt / config.seconds_per_unit
    arrivals = total - previous.total + completions
    weight = -math.expm1(-dt / window(config))
    return RateState(now, total, in_flight, previous.rate + weight * (arrivals / dt - previous.rate))


def window(config: PolicyConfig) -> float:
    """The average's time constant: rate_window, never shorter than seconds_per_unit."""
    # One arrival lifts a w-second average by 1/w units/s, which pre-warming multiplies by
    # seconds_per_unit: a window shorter than a unit would ask a lone unit for several sessions.
    return max(config.rate_window, config.seconds_per_unit or 0.0)


def arrival_rate(state: RateState) -> float:
    """The estimated arrival rate, units per second, never negative."""
    return max(0.0, state.rate)


def sessions(units: float, config: PolicyConfig) -> int:
    """ceil(units / work_per_session), ignoring float noise."""
    return max(0, math.ceil(units / config.work_per_session - _EPSILON))


def prewarm(rate: float, config: PolicyConfig) -> int:
    """Sessions busy on average at this arrival rate (Little's law), plus prewarm_safety x
    sqrt(load) spare: square-root staffing, since Poisson-like arrivals around a mean load
    stray by about its square root; 0 without seconds_per_unit."""
    if config.seconds_per_unit is None:
        return 0
    load = rate * config.seconds_per_unit
    return sessions(load + config.prewarm_safety * math.sqrt(load), config)


def lead(rate: float, total: float, config: PolicyConfig) -> int:
    """Sessions for the work there now plus what arrives within lead_time; 0 without lead_time.

    Every arrival in the lead time is counted as still there when the sessions are ready (none
    completes meanwhile): right for a queue that grows, generous for short units.
    """
    if config.lead_time <= 0:
        return 0
    return sessions(total + rate * config.lead_time, config)
