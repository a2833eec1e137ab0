"""Warm spares for a wait target: a queueing model, and a price of lateness learned from the waits.

**The model.** The pool is the sessions held for units: those running one and those free. Units
in the system (waiting or in flight) are Poisson with mean rate x service (M/G/infinity, the
load), so a unit arriving finds a free session unless the pool's n sessions are all taken. One
that finds j - 1 units queued ahead of it is served by the j-th of the pool's units to complete
(the consumer takes the next unit before it releases), or by the session the controller asks for
it, whichever comes first. It waits longer than the target T when both are late:

    P_late(n) = slow x sum over N >= n of P(N) x P(Poisson(n x (T - poll) / service) < N - n + 1)

`slow` is the share of the measured start-ups R (controller/policy_startup.py) with R + poll > T.
Grants at once (`warm`: a worker released moments ago) are left out: they are mostly the pool
taking back a worker its own unit just released, and a unit that finds every session taken
seldom finds such a worker (counted, they made a trickle's idle pool look safe). This is
square-root staffing's model, with the completions and the start-ups of this endpoint in it: the
pool grows with the load, its free sessions with about the square root of it.

**The price.** Free sessions cost worker-seconds, late units break the target; the policy holds
the pool worth most: rate x price x (P_late(0) - P_late(n)) - E[(n - N)+] at its largest, `price`
being the worker-seconds one late unit is worth. Where arrivals are frequent a free session saves
many units, where they are rare it saves few: they go where they are cheapest per unit saved,
which is how a share of late units is met at the least cost (the Lagrangian of "at most that
share late"). The price is learned (integral control on its log): late units raise it and units
on time lower it, each by a step sized to the units `wait_window` holds (and so that one late unit
raises it at most STEP x STEP times), so that the late share settles at the allowed share less a
margin of MARGIN_Z standard deviations of a day's late share. Units late within a start-up of the
first unit do not raise it: no pool could have saved them, and a price wound up by them would
take hours to come down (anti-windup); they still count against the day's allowance, so the aim
is lower by their share of a day's units. Learning corrects whatever the model gets wrong
(bursts, service times, a source's quirks).

**Late units from depth readings.** The queue is served oldest first, so the units that arrived
T or more seconds ago and still wait number max(0, waiting - arrivals of the last T seconds); of
those, the ones that arrived in the reading that has just become T seconds old are the newly late
(T less one poll: a reading sees waits only to within a poll, so it errs towards late).
Arrivals are the rises of waiting + in flight between readings (a lower bound when a unit arrives
and another completes between two reads). A source that reports its oldest unit's age (Redis
streams) vouches for an empty late set when that age is under that. Pure: the clock is `now`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache

from controller.config import WaitTarget
from controller.identity import Same
from controller.policy_startup import StartupState

#: The late share the price aims at is the allowed one less this many standard deviations of the
#: late share of a day's units: a day of 360 units at p95 aims at 1.6% late, one of 10,000 at
#: 4.3%. Few units make a noisy share, so they need the margin; many would only pay for it. Never
#: below a quarter of the allowed share. Not the 1.645 of a one-sided 95% bound: the price is
#: learned from late units, and the first ones of a fresh scaler teach it (on 20 draws of the
#: trickle, 1 unit in 4 minutes, the late share came out 1.1-1.4 points over a 95% bound's aim).
MARGIN_Z = 3.0
#: A wait window of units all on time lowers the price STEP x STEP times; a late unit raises it
#: at most that much too.
STEP = 4.0
#: A window counts as holding at least this many units: the first few do not swing the price.
MIN_UNITS = 20.0
#: The price a fresh scaler starts from (worker-seconds per late unit), and its bounds: a late
#: unit is worth at most a worker-day.
PRICE_START, PRICE_MIN, PRICE_MAX = 600.0, 10.0, 86400.0
#: Arrivals are averaged over this long for the model's rate: Poisson traffic, not one arrival.
RATE_WINDOW = 600.0
#: Arrivals are also averaged over a day: what a window holds in the busier hours, so that a unit
#: of a quiet hour moves the price no more than one of a busy hour.
DAY = 86400.0
#: A default service time until units have been seen in flight (Little's law needs a rate).
SERVICE_START = 60.0


@dataclass(frozen=True)
class WaitState:
    """The last reading, averaged rates and in-flight work, the late share seen, and the price.

    `recent` holds (time, arrivals) of the readings of the last target seconds: the arrivals that
    may still become late. `at` is None until the first reading after a (re)start.
    """

    at: float | None = None
    since: float | None = None  # the first reading of a fresh state (-inf after a restart)
    first: float | None = None  # the first arrival a fresh state saw (None after a restart)
    total: float = 0.0
    rate: float = 0.0  # arrivals per second over RATE_WINDOW
    busy: float = 0.0  # units in flight, averaged over wait_window
    seen: float = 0.0  # arrivals per second over wait_window
    daily: float = 0.0  # arrivals per second over a DAY
    late: float = 0.0  # late units per second over wait_window
    unsaved: float = 0.0  # late units per second over a DAY that no pool could have saved
    price: float = PRICE_START
    aim: float | None = None  # the late share the price aims at (None until units were seen)
    recent: tuple[tuple[float, float], ...] = ()

    @property
    def late_share(self) -> float:
        """The share of units that waited longer than the target, over the wait window."""
        return self.late / self.seen if self.seen > 0 else 0.0

    @property
    def service(self) -> float:
        """Seconds a unit spends in flight, by Little's law (busy = arrival rate x service), both
        over the wait window: a burst's arrivals must not read as short units."""
        if self.seen <= 0 or self.busy <= 0:
            return SERVICE_START
        return min(3600.0, max(1.0, self.busy / self.seen))

    def as_json(self) -> dict[str, float]:
        return {"rate": self.rate, "busy": self.busy, "seen": self.seen, "daily": self.daily, "late": self.late,
                "unsaved": self.unsaved, "price": self.price}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, float]) -> WaitState:
        return cls(rate=float(data["rate"]), busy=float(data["busy"]), seen=float(data["seen"]),
                   daily=float(data.get("daily", data["seen"])), late=float(data["late"]),
                   unsaved=float(data.get("unsaved", 0.0)), price=float(data["price"]))  # fmt: skip


def update(
    state: WaitState, now: float, waiting: int, in_flight: int, oldest_age: float | None,
    target: WaitTarget, window: float, poll: float, startup: float,
) -> tuple[WaitState, float]:  # fmt: skip
    """The state after one good reading, and the arrivals it counted; `poll` is the longest
    time between readings, `startup` how long a session opened now takes (the lead time)."""
    total = float(waiting + in_flight)
    if state.at is None:
        # After a restart the averages carry on: they are what was learned, whole averages, not
        # fresh ones that read low for want of history (which `since` corrects for).
        since = -math.inf if state.seen > 0 else now
        return replace(state, at=now, since=since, total=total, recent=()), 0.0
    dt = now - state.at
    if dt <= 0:
        # The same instant, or the wall clock stepped back: start afresh from here.
        return (state if dt == 0 else replace(state, at=now, total=total, recent=())), 0.0
    arrived = max(0.0, total - state.total)
    # A reading sees a unit's wait only to within a poll: one still waiting a poll short of
    # the target is counted late (a unit served between two readings past it would be missed).
    horizon = max(0.0, target.seconds - poll)
    cutoff = now - horizon
    # `recent` runs oldest first: the due readings are a prefix. (Counts are whole numbers, so
    # the sums are exact in any order.)
    split, due, due_all, since = 0, 0.0, 0.0, arrived
    # Anti-windup: with no traffic seen there is no pool, and the first one sized from it is
    # ready a start-up later; units late before then were late whatever the price, so they do
    # not raise it (they still spend the day's allowance: see the aim). A restored state has
    # seen traffic: its units count at once.
    first = now if state.first is None and state.seen == 0 and arrived else state.first
    saveable = -math.inf if first is None else first + startup
    for at, count in state.recent:
        if at <= cutoff:
            split += 1
            due_all += count
            if at >= saveable:
                due += count
        else:
            since += count
    kept = state.recent[split:]
    late_all = min(due_all, max(0.0, waiting - since))
    late = min(due, late_all)
    if oldest_age is not None and oldest_age < horizon:
        late = late_all = 0.0
    fast, slow, day = -math.expm1(-dt / RATE_WINDOW), -math.expm1(-dt / window), -math.expm1(-dt / DAY)
    unsaved = state.unsaved + day * ((late_all - late) / dt - state.unsaved)
    seen = state.seen + slow * (arrived / dt - state.seen)
    daily = state.daily + day * (arrived / dt - state.daily)
    late_rate = state.late + slow * (late_all / dt - state.late)  # what the metric says: every late unit
    price, aim = state.price, state.aim
    if arrived or late:
        # The window's units: the average, corrected for how little of a window (of a day) has
        # been seen; at least what a window holds on an average day's hour.
        units, per_second = 0.0, 0.0
        if state.since is not None:
            age = now - state.since
            per_second = daily / -math.expm1(-age / DAY)
            units = window * max(seen / -math.expm1(-age / window), per_second)
        # Every unit lowers the log of the price a little, every late unit raises it by
        # (1 - aim) / aim times as much: it stands still at the aimed late share. A window of
        # units all on time lowers it STEP x STEP times. Without units nothing moves it. The
        # price is one for every hour (what a late unit is worth, as the target is one quantile
        # over all units), so a quiet hour's few units move it as little each as a busy hour's:
        # it does not chase the late share of the hour.
        allowed = 1 - target.quantile
        noise = math.sqrt(allowed * target.quantile / max(1.0, DAY * per_second))
        # The late units no pool could have saved (a count over the last day) took their part of
        # the allowance of a day's units.
        spent = unsaved / per_second if per_second > 0 else 0.0
        aim = max(allowed / 4, allowed - MARGIN_Z * noise - spent)
        # A late unit's rise is 1 / aim steps (its arrival's fall taken back): for an aim of 1%
        # five windows' worth. Cut off at PRICE_MAX it left the late share over the aim (the
        # falls are whole): a trickle's price fell from the cap within 30 units to where the next
        # unit came late.
        step = 2 * math.log(STEP) / max(MIN_UNITS, units, 1 / aim)
        price *= math.exp(step * (late * (1 - aim) / aim - (arrived - late)))
    return WaitState(
        at=now,
        since=state.since,
        first=first,
        total=total,
        rate=state.rate + fast * (arrived / dt - state.rate),
        busy=state.busy + slow * (in_flight - state.busy),
        seen=seen,
        daily=daily,
        late=late_rate,
        unsaved=unsaved,
        price=min(PRICE_MAX, max(PRICE_MIN, price)),
        aim=aim,
        recent=(*kept, (now, arrived)) if arrived else kept,
    ), arrived


def late_chance(
    rate: float, service: float, target: float, poll: float, startup: StartupState, pool: int
) -> float:
    """The chance a unit arriving now waits longer than `target` with `pool` units' sessions held
    (see above)."""
    return _late(_pmf(rate * service), service, target, poll, _slow(target, poll, startup), pool)


def _slow(target: float, poll: float, startup: StartupState) -> float:
    """The share of start-ups (grants at once left out) longer than `target` (a poll included)."""
    return _slow_share(target, poll, startup.spread)


@lru_cache(maxsize=256)
def _slow_share(target: float, poll: float, spread: tuple[tuple[float, float], ...]) -> float:
    return sum(share for share, seconds in spread if seconds + poll > target)


def _late(pmf: tuple[float, ...], service: float, target: float, poll: float, slow: float, pool: int) -> float:
    # Units in the system: P(N = k) is pmf[k]. The unit that finds j - 1 units queued behind a
    # full pool is late when fewer than j of the pool's units complete within the target and its
    # own session comes late.
    if slow <= 0:
        return 0.0
    completions = pool * max(0.0, target - poll) / service
    late, term, below = 0.0, math.exp(-completions), 0.0
    for ahead in range(len(pmf) - pool):
        below += term  # P(fewer than ahead + 1 completions)
        term *= completions / (ahead + 1)
        late += pmf[pool + ahead] * below
    return slow * min(1.0, late)


@lru_cache(maxsize=1024)
def _pmf(mean: float) -> tuple[float, ...]:
    """P(N = 0), P(N = 1), ... for N ~ Poisson(mean), as far as any mass is left (1e-12)."""
    if mean <= 0:
        return (1.0,)
    # From the mode both ways, in logs: exp(-mean) underflows for a large mean.
    mode = math.floor(mean)
    value = math.exp(mode * math.log(mean) - mean - math.lgamma(mode + 1))
    down, k = [value], mode
    while k > 0 and down[-1] > 1e-12:
        down.append(down[-1] * k / mean)
        k -= 1
    up, k = [], mode
    while not up or up[-1] > 1e-12:
        k += 1
        up.append((up[-1] if up else value) * mean / k)
    # Below what `down` reached, the mass is negligible: zeros keep pmf[k] at index k.
    return (0.0,) * (mode + 1 - len(down)) + tuple(reversed(down)) + tuple(up)


def pool(state: WaitState, target: WaitTarget, startup: StartupState, poll: float, cap: int) -> int:
    """Units' sessions worth holding at the learned price for the traffic seen, read every
    `poll` seconds at most; at most `cap`. Spares are what of them the work does not use."""
    if state.rate <= 0:
        return 0
    # The load on a 5% log grid, the service, the price and the slow share on a 10% one, the
    # poll to 50 ms: the answer is the same for nearby inputs, so it is computed once for them (a
    # pure function's cache: every arrival moves the load and the price a little, every grant
    # the slow share). That is finer than what they are known to: a load averaged over
    # RATE_WINDOW is a count of tens of arrivals, the slow share one of the last 50 start-ups,
    # and the price moves by a factor STEP x STEP in a window.
    poll = round(poll * 20) / 20
    slow = _slow_on_grid(target.seconds, poll, Same(startup))
    service = state.service
    return _pool(_grid(state.rate * service, 0.05), _grid(service, 0.1), _grid(state.price, 0.1), poll,
                 target.seconds, slow, cap)  # fmt: skip


def _grid(value: float, step: float) -> float:
    """`value` rounded to a log grid of `step` (0 for none)."""
    return math.exp(round(math.log(value) / step) * step) if value > 0 else 0.0


@lru_cache(maxsize=256)
def _slow_on_grid(target: float, poll: float, startup: Same[StartupState]) -> float:
    # Changed only by a grant, read every reading: cached with its grid, keyed by the start-ups'
    # identity (hashing their histogram would cost what the cache saves).
    return min(1.0, _grid(_slow(target, poll, startup.value), 0.1))


@lru_cache(maxsize=8192)
def _pool(mean: float, service: float, price: float, poll: float, target: float, slow: float, cap: int) -> int:
    # Most net worth: late units saved per second x price, less the sessions held free (the
    # pool's units beyond those in the system: E[(n - N)+]). Not the first n whose next session
    # saves too little: P_late is not convex in n. Below `low` (the load less 4 standard
    # deviations) a session is almost never free, so each saves more than it costs: the search
    # starts there.
    rate, pmf = mean / service, _pmf(mean)
    first = _late(pmf, service, target, poll, slow, 0)
    low = min(cap, max(0, math.floor(mean - 4 * math.sqrt(mean))))
    below = sum(pmf[:low])  # P(N < low)
    free = sum((low - k) * chance for k, chance in enumerate(pmf[:low]))  # E[(low - N)+]
    best, best_worth = 0, 0.0
    if low:
        best_worth = rate * price * (first - _late(pmf, service, target, poll, slow, low)) - free
        best = low if best_worth > 0 else 0
    for count in range(low + 1, cap + 1):
        below += pmf[count - 1] if count - 1 < len(pmf) else 0.0  # P(N < count)
        free += below  # E[(count - N)+]
        late = _late(pmf, service, target, poll, slow, count)
        worth = rate * price * (first - late) - free
        if worth > best_worth:
            best, best_worth = count, worth
        if late < 1e-9 or rate * price * late < below:
            break  # each further session costs more than all the late units left are worth
    return best


# Asked every reading with a forecast; the price moves only with arrivals, the forecast once a bin.
@lru_cache(maxsize=1024)
def forecast_units(expected: float, price: float, hold: float, cap: int) -> int:
    """Sessions worth pre-warming for a forecast of `expected` units: the count that comes is
    taken as Poisson; the j-th session serves a unit with chance P(N >= j), saving a late unit
    (worth `price`), and else is held for nothing (`hold` worker-seconds)."""
    count = 0
    for chance in _poisson_tails(expected):
        if count >= cap or chance * price < (1 - chance) * hold:
            break
        count += 1
    return count


def _poisson_tails(mean: float) -> Iterator[float]:
    """P(N >= 1), P(N >= 2), ... for N ~ Poisson(mean), each from the last (falls to 0)."""
    if mean > 500:
        # exp(-mean) would underflow: the normal approximation, with a continuity correction.
        deviation = math.sqrt(mean)
        k = 1
        while True:
            yield 0.5 * math.erfc((k - 0.5 - mean) / deviation / math.sqrt(2))
            k += 1
    exactly, tail, k = math.exp(-mean), 1.0, 0
    while True:
        tail = max(0.0, tail - exactly)  # P(N >= k + 1)
        k += 1
        exactly *= mean / k
        yield tail
