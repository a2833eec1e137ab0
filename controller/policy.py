"""How many sessions a scaler wants: a pure function of the queue, the supply and a small state.

`decide()` does no I/O, reads no clock and logs nothing, so the loop and the simulator run the
very same rules. The rules, in the order they apply:

- **Target.** total = waiting + in_flight; target = ceil(total / work_per_session), clamped to
  [min_sessions, max_sessions].
- **Sources.** `depth` is one SourceDepth per queue of the scaler (`one_queue()` for the common
  case of one). A source's units count `weight` times (total = sum of weight x units); in-flight units
  always get their sessions, whatever the weights. When some sources fail to read and others do,
  the scaler scales up for what it reads but never down (the missing work is unknown); when all
  fail, the read failed.
- **Activation** only gates waking from zero: with no sessions open or opening, a scaler stays at
  zero while total < activation (activation=1: a single unit wakes it; units, not weighted). Once
  it has sessions it serves whatever work remains, even below activation, so in-flight work is
  never stranded; it returns to zero only when the queue is empty (after the scale-down delay).
- **Drain time** (drain_time, with seconds_per_unit): a backlog shares sessions. The work asks
  for at most ceil(total x seconds_per_unit / (seconds_per_unit + drain_time) / work_per_session)
  sessions, never fewer than its in-flight units need: each session may take on drain_time
  seconds of the backlog beyond its own unit, so the work there now clears about drain_time
  later than with a session per unit, for fewer session starts. The consumer takes the next unit
  before it releases, so the units beyond the sessions wait for one to finish a unit (one unit's
  time longer for those few, none for the rest). Pre-warming, age, buffer and bounds apply after.
- **Pre-warming** (seconds_per_unit, lead_time; the rate estimator is controller/policy_rate.py):
  while there is work, target >= ceil(rate x seconds_per_unit / work_per_session) (the sessions
  busy on average at the arrival rate) and >= ceil((total + rate x lead_time) / work_per_session)
  (the work there once a session opened now is ready). prewarm_safety (beta) turns the first
  into square-root staffing: ceil((load + beta x sqrt(load)) / work_per_session), load = rate x
  seconds_per_unit, so the spare sessions grow with the square root of the load.
- **Queue age** (max_wait): when a source's oldest waiting unit has waited longer than max_wait,
  the open sessions are taken as busy: target >= open + ceil(waiting / work_per_session), the
  waiting units of such sources, and nothing is cancelled or closed (target >= open + opening)
  while such work waits. It wakes a scaler below activation too. Sessions opening count toward
  it, so it does not grow tick by tick while they start; it grows again only when granted
  sessions still leave old work waiting.
- **Warm buffer** (buffer_sessions): while there is work, N sessions more. The scale-down window
  keeps them for scale_down_delay after the last work, then they go: idle still means zero.
- **Reserves.** A source with `reserve: R` holds R sessions of the cap back from the others: the
  target is at most sum(min(need_j, R_j)) + max(0, cap - sum(R_j)), need_j being the sessions
  source j's own work asks for; never below the in-flight work. Sessions are not tied to sources,
  so "held back" means not opened: when the reserved queue gets work there is room under the cap
  to open its sessions at once (consumers should take the priority queue first).
- **Budget.** With max_cost_per_hour, the target is capped at
  floor(max_cost_per_hour / price_per_session_hour). The budget wins over min_sessions: money
  is never spent past the cap.
- **Scale-up** is immediate, at most max_opens_per_tick opens per decision. Sessions still opening
  count as supply, so nothing is requested twice.
- **Scale-down** waits: the scaler keeps the maximum target seen over the last scale_down_delay
  seconds. Surplus cancels opening sessions first, then closes open ones.
- **Boot grace.** `close` never exceeds the open sessions granted at least boot_grace ago
  (Supply.ages; unknown ages count as old), and `Decision.close_min_age` tells the pool to close
  the youngest of those. The target stays: a young session is closed once it has aged.
- **Failed read** (depth None): hold the current supply (within bounds) for error_hold seconds
  since the last good read (since the first failure if there never was one), then go to
  fallback_sessions if set, else keep holding. An error alone never scales to zero; an explicit
  fallback_sessions: 0 is the user's choice and is honoured after error_hold. The count held
  during an outage enters the scale-down window, so the first good reads after it wait the
  delay before closing anything.
- **Paused**: target = current supply, no actions.
- **Advise** (mode: advise): the same decision, with `act=False`: the caller records it and
  does not apply it.

Config changes apply at once: a lowered max_sessions or budget closes the excess without waiting
(boot grace permitting).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Reversible, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeVar

from controller import policy_rate, policy_season, policy_startup, policy_wait
from controller.config import PolicyConfig
from controller.identity import Same
from controller.policy_rate import RateState
from controller.policy_season import Profile
from controller.policy_startup import StartupState
from controller.policy_wait import WaitState
from controller.sources import QueueDepth

K = TypeVar("K")


@dataclass(frozen=True)
class SourceDepth:
    """One queue of a scaler with several: its reading (None: the read failed) and its rules."""

    name: str
    depth: QueueDepth | None
    weight: float = 1.0  # each unit counts this many times; > 0
    reserve: int = 0  # sessions of the cap held back for this source's work


#: What `decide()` reads: every queue of the scaler (most have one); a depth of None is a failed read.
Observation = Sequence[SourceDepth]


def one_queue(depth: QueueDepth | None) -> tuple[SourceDepth]:
    """The observation of a scaler with one queue."""
    return (SourceDepth("", depth),)


@dataclass(frozen=True)
class Supply:
    """Sessions a scaler holds: granted (`open`) and requested but not yet granted (`opening`).

    `ages`: seconds since each open session was granted, in any order; one per open session,
    or () when unknown (then every open session may be closed). `startups`: request-to-grant
    seconds of the sessions granted since the last decision (measured start-up times).
    """

    open: int
    opening: int
    ages: tuple[float, ...] = ()
    startups: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.ages and len(self.ages) != self.open:
            raise ValueError(f"ages: expected one per open session ({self.open}), got {len(self.ages)}")

    @property
    def total(self) -> int:
        return self.open + self.opening

    def closable(self, grace: float) -> int:
        """Open sessions granted at least `grace` seconds ago (all of them when ages are unknown)."""
        if not self.ages or grace <= 0:
            return self.open
        return sum(age >= grace for age in self.ages)


@dataclass(frozen=True)
class Learned:
    """What a scaler learns about its endpoint and its traffic, kept across restarts (the state
    store): start-up times, the wait target's price and rates, the recurring arrival profile."""

    startup: StartupState = StartupState()
    wait: WaitState | None = None
    profile: Profile | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "startup": self.startup.as_json(),
            "wait": None if self.wait is None else self.wait.as_json(),
            "profile": None if self.profile is None else self.profile.as_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Learned:
        """Raises ValueError (or KeyError, TypeError) on a malformed record."""
        wait, profile = data.get("wait"), data.get("profile")
        return cls(
            StartupState.from_json(data["startup"]),
            None if wait is None else WaitState.from_json(wait),
            None if profile is None else Profile.from_json(profile),
        )


@dataclass(frozen=True)
class PolicyState:
    """What `decide()` remembers between ticks; `PolicyState()` is the initial state.

    `window` holds (time, target) points of the scale-down window with strictly decreasing
    targets (a later, larger target makes earlier ones irrelevant), so it never holds more than
    max_sessions + 1 points however often the loop ticks. `rate` is the arrival-rate estimate
    (only with seconds_per_unit or lead_time). `learned` is what outlives a restart.
    """

    window: tuple[tuple[float, int], ...] = ()
    last_ok_at: float | None = None
    failing_since: float | None = None
    rate: RateState | None = None
    learned: Learned = Learned()


@dataclass(frozen=True)
class Inputs:
    """What a decision was made from: the time, the summed depth (None: read failed), each
    source, and the supply."""

    at: float
    depth: QueueDepth | None
    sources: tuple[SourceDepth, ...]
    supply: Supply


@dataclass(frozen=True)
class Decision:
    """One tick's verdict: the session count wanted, and the steps toward it.

    `open` sessions to request, `cancel` opening requests to drop, `close` open sessions to end
    (the youngest of those at least `close_min_age` seconds old); `reason` says why in a short
    human line; `state` is the PolicyState for the next tick. `act` is False in advise mode: the
    steps are what the scaler would do, and the caller must not apply them. `terms` are the
    numbers the target came from, for the decision log.
    """

    target: int
    open: int
    cancel: int
    close: int
    reason: str
    state: PolicyState
    act: bool = True
    close_min_age: float = 0.0
    inputs: Inputs | None = None
    terms: tuple[tuple[str, float], ...] = ()

    def as_log(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict: inputs, target, steps, reason, mode and terms."""
        entry: dict[str, Any] = {}
        if self.inputs is not None:
            supply = self.inputs.supply
            entry["t"] = self.inputs.at
            entry["depth"] = _depth_log(self.inputs.depth)
            # One queue's depth is the depth above; several are listed each.
            entry["sources"] = [
                {"name": s.name, "weight": s.weight, "reserve": s.reserve, **(_depth_log(s.depth) or {})}
                for s in self.inputs.sources
            ] if len(self.inputs.sources) > 1 else []
            entry["sessions"] = {"open": supply.open, "opening": supply.opening}
        entry.update(
            target=self.target,
            to_open=self.open,
            to_cancel=self.cancel,
            to_close=self.close,
            reason=self.reason,
            mode="act" if self.act else "advise",
            terms=dict(self.terms),
        )
        return entry


def _depth_log(depth: QueueDepth | None) -> dict[str, Any] | None:
    if depth is None:
        return None
    return {**depth.as_dict(), "oldest_age": depth.oldest_age}


@dataclass(frozen=True)
class _Bounds:
    """The session range the config allows right now: [lower, upper]."""

    lower: int
    upper: int
    budget_cap: int | None

    def clamp(self, count: int) -> int:
        return max(self.lower, min(self.upper, count))


def budget_cap(config: PolicyConfig) -> int | None:
    """Sessions the budget pays for, or None without a budget."""
    if config.max_cost_per_hour is None or config.price_per_session_hour is None:
        return None
    # Decimal of the shortest repr: 0.3 / 0.1 is 3 sessions, not float division's 2.
    sessions = Decimal(repr(config.max_cost_per_hour)) / Decimal(repr(config.price_per_session_hour))
    return math.floor(sessions)


def _bounds(config: PolicyConfig) -> _Bounds:
    return _bounds_of(Same(config))


# Read every tick from a config that rarely changes: keyed by its identity (hashing a config
# hashes its every field).
@lru_cache(maxsize=64)
def _bounds_of(key: Same[PolicyConfig]) -> _Bounds:
    config = key.value
    cap = budget_cap(config)
    upper = config.max_sessions if cap is None else min(config.max_sessions, cap)
    return _Bounds(lower=min(config.min_sessions, upper), upper=upper, budget_cap=cap)


@dataclass(frozen=True)
class _Work:
    """The readable sources summed up."""

    waiting: int
    in_flight: int
    weighted: Decimal  # sum of weight x (waiting + in_flight)
    weighted_in_flight: Decimal
    oldest_age: float | None
    aged: int  # waiting units of the sources whose oldest unit waited past max_wait
    reserves: tuple[tuple[int, int], ...]  # (sessions its work asks for, reserve) per reserving source

    @property
    def total(self) -> int:
        return self.waiting + self.in_flight

    @property
    def depth(self) -> QueueDepth:
        return QueueDepth(self.waiting, self.in_flight, self.oldest_age)


def _work(sources: Sequence[SourceDepth], config: PolicyConfig) -> _Work:
    waiting = in_flight = aged = 0
    weighted = weighted_in_flight = Decimal(0)
    ages: list[float] = []
    reserves: list[tuple[int, int]] = []
    for source in sources:
        assert source.depth is not None
        units_waiting, units_in_flight = max(0, source.depth.waiting), max(0, source.depth.in_flight)
        # Decimal of the shortest repr, as for the budget: 1.1 x 10 units is 11, not 11.000000000000002.
        weight = _decimal(source.weight)
        waiting += units_waiting
        in_flight += units_in_flight
        weighted += weight * (units_waiting + units_in_flight)
        weighted_in_flight += weight * units_in_flight
        age = source.depth.oldest_age
        if age is not None and units_waiting:
            ages.append(age)
            if config.max_wait is not None and age > config.max_wait:
                aged += units_waiting
        if source.reserve > 0:
            need = math.ceil(weight * (units_waiting + units_in_flight) / config.work_per_session)
            reserves.append((need, source.reserve))
    return _Work(
        waiting, in_flight, weighted, weighted_in_flight, max(ages, default=None), aged, tuple(reserves)
    )


def decide(
    depth: Observation,
    supply: Supply,
    config: PolicyConfig,
    now: float,
    state: PolicyState,
    poll: float = 1.0,
    *,
    paused: bool = False,
    act: bool = True,
    explain: bool = True,
) -> Decision:
    """The decision for one tick; a source whose depth is None failed to read (all of them: the read failed).
    `poll`: the longest time until the next reading (the loop's poll_interval): what a reading
    can miss, which the wait target allows for. `paused` and `act` are the operator's runtime
    control (the loop owns them): paused holds the count, act=False is advise mode.
    `explain=False` leaves the reason, the inputs and the terms out (the same steps and state):
    for the simulator, which reads only those (writing them is up to a fifth of a decision)."""
    bounds = _bounds(config)
    sources = tuple(depth)
    readable = [s for s in sources if s.depth is not None]
    terms: dict[str, float] = {}
    learned = state.learned
    if supply.startups:
        learned = replace(learned, startup=policy_startup.observe(learned.startup, supply.startups))
    if not readable:
        failing_since = now if state.failing_since is None else state.failing_since
        since = failing_since if state.last_ok_at is None else state.last_ok_at
        target, reason = _on_failed_read(supply, config, bounds, now - since)
        # The error target goes straight to the supply (hold or fallback) and into the window
        # too, so the first good read after an outage waits the delay before closing anything.
        window = _slide(state.window, now, target, config.scale_down_delay)
        state = PolicyState(window, state.last_ok_at, failing_since, state.rate, learned)
        summed = None
    else:
        work = _work(readable, config)
        summed = work.depth if explain else None
        rate = state.rate
        if config.estimates_rate and len(readable) == len(sources):
            # Only full reads: a source missing from the sum would look like its work completed.
            rate = policy_rate.update(rate, now, float(work.weighted), float(work.weighted_in_flight), config)
        if config.wait_target is not None and len(readable) == len(sources):
            learned = _learn(learned, work, now, config, poll)
        wanted, notes = _wanted(work, supply, config, bounds, rate, terms, learned, now, poll)
        if len(readable) < len(sources):
            wanted = max(wanted, bounds.clamp(supply.total))
            missing = ", ".join(s.name for s in sources if s.depth is None)
            notes.append(f"not scaling down: {missing} unreadable")
        window = _slide(state.window, now, wanted, config.scale_down_delay)
        # Clamped again: a lowered max_sessions or budget applies without waiting the delay.
        keep = bounds.clamp(max([value for _, value in window]))
        target = min(max(supply.total, wanted), keep)
        reason = _explain(work.total, wanted, "; ".join(notes), target, supply, config) if explain else ""
        state = PolicyState(window=window, last_ok_at=now, rate=rate, learned=learned)
    if paused:
        target, reason, (open_, cancel, close) = supply.total, "paused", (0, 0, 0)
    else:
        open_, cancel, close = _actions(target, supply, config)
        closable = supply.closable(config.boot_grace)
        if close > closable:
            reason += f" (boot grace: {_count(close - closable, 'session')} too young to close)"
            close = closable
    return Decision(
        target,
        open_,
        cancel,
        close,
        reason,
        state,
        act=act,
        close_min_age=config.boot_grace,
        inputs=Inputs(now, summed, sources, supply) if explain else None,
        terms=tuple(terms.items()) if explain else (),
    )


def _learn(learned: Learned, work: _Work, now: float, config: PolicyConfig, poll: float) -> Learned:
    """The wait target's rates, late share and price, and the profile, after one full reading."""
    assert config.wait_target is not None
    wait, arrived = policy_wait.update(
        learned.wait or WaitState(), now, work.waiting, work.in_flight, work.oldest_age,
        config.wait_target, config.wait_window, poll, learned.startup.lead,
    )  # fmt: skip
    profile = learned.profile
    if config.forecast and wait.at is not None:
        profile = policy_season.update(profile, now, arrived, config.forecast_period, config.forecast_step)
    return Learned(learned.startup, wait, profile)


def _wanted(
    work: _Work,
    supply: Supply,
    config: PolicyConfig,
    bounds: _Bounds,
    rate: RateState | None,
    terms: dict[str, float],
    learned: Learned,
    now: float,
    poll: float,
) -> tuple[int, list[str]]:
    """Sessions the work asks for now, and notes on what bent the number; fills `terms`."""
    notes: list[str] = []
    below_activation = supply.total == 0 and work.total < config.activation
    # Activation gates waking from zero only; a scaler with sessions serves every unit.
    need = 0 if below_activation else math.ceil(max(work.weighted, work.in_flight) / config.work_per_session)
    terms["work"] = need
    if need and config.drain_time is not None:
        shared = _shared(work, config)
        if shared < need:
            terms["drain"] = shared
            notes.append(f"backlog shared: drain_time {config.drain_time:g}s")
            need = shared
    if need and rate is not None:
        arrivals = policy_rate.arrival_rate(rate)
        terms["rate"] = arrivals
        prewarm = policy_rate.prewarm(arrivals, config)
        lead = policy_rate.lead(arrivals, float(work.weighted), config)
        if max(prewarm, lead) > need:
            notes.append(f"pre-warm for {arrivals:.3g} units/s")
        terms.update(prewarm=prewarm, lead=lead)
        need = max(need, prewarm, lead)
    if work.aged:
        assert config.max_wait is not None
        # Starved work: no scaling down, and a session per waiting unit beyond the open ones.
        by_age = max(supply.total, supply.open + math.ceil(work.aged / config.work_per_session))
        terms["age"] = by_age
        if by_age > need:
            notes.append(f"oldest waited {work.oldest_age:g}s > max_wait {config.max_wait:g}s")
        need = max(need, by_age)
    if config.wait_target is not None and learned.wait is not None:
        need = _for_wait_target(need, config, bounds, learned, now, poll, terms, notes)
    if need and config.buffer_sessions:
        need += config.buffer_sessions
        terms["buffer"] = config.buffer_sessions
    if work.reserves:
        own = sum(min(asked, reserve) for asked, reserve in work.reserves)
        allowed = own + max(0, bounds.upper - sum(reserve for _, reserve in work.reserves))
        # Reserves only stop new sessions: running work keeps its sessions.
        ceiling = max(allowed, math.ceil(work.in_flight / config.work_per_session))
        if need > ceiling and ceiling < bounds.upper:
            terms["held_back"] = min(need, bounds.upper) - ceiling
            notes.append(f"reserve: {_count(min(need, bounds.upper) - ceiling, 'session')} held back")
        need = min(need, ceiling)
    wanted = bounds.clamp(need)
    if wanted > need:
        notes.append("min_sessions")
    elif wanted < need:
        capped_by_budget = bounds.budget_cap is not None and bounds.budget_cap < config.max_sessions
        notes.append(f"budget cap {bounds.budget_cap}" if capped_by_budget else "max_sessions")
    elif below_activation and work.total and not work.aged:
        notes.append(f"below activation {config.activation}")
    return wanted, notes


def _for_wait_target(
    need: int, config: PolicyConfig, bounds: _Bounds, learned: Learned, now: float, poll: float,
    terms: dict[str, float], notes: list[str],
) -> int:  # fmt: skip
    """`need` raised to the forecast work one start-up ahead (capped), and to the pool the wait
    target holds for the traffic seen (its free sessions are the spares)."""
    assert config.wait_target is not None and learned.wait is not None
    wait, startup = learned.wait, learned.startup
    if config.forecast and learned.profile is not None:
        lead = startup.lead + poll
        service = config.seconds_per_unit or wait.service
        expected = policy_season.expected(learned.profile, now, now + lead, service)
        # A session held for a forecast unit that does not come costs its lead, a bin and the
        # scale-down delay; one whose unit comes saves a late unit.
        hold = lead + config.forecast_step + config.scale_down_delay
        cap = config.max_sessions if config.forecast_max_sessions is None else config.forecast_max_sessions
        units = policy_wait.forecast_units(expected, wait.price, hold, need + cap) if expected else 0
        ahead = policy_rate.sessions(units, config) - need
        if config.forecast_max_cost_per_hour is not None and config.price_per_session_hour is not None:
            cap = min(cap, math.floor(config.forecast_max_cost_per_hour / config.price_per_session_hour))
        ahead = max(0, min(ahead, cap))
        terms.update(forecast=round(expected, 3), forecast_weight=round(learned.profile.weight, 3), ahead=ahead)
        if ahead:
            notes.append(f"forecast: {expected:.3g} units in {lead:.0f}s")
            need += ahead
    pool = policy_rate.sessions(policy_wait.pool(wait, config.wait_target, startup, poll, bounds.upper), config)
    spare = max(0, pool - need)
    terms.update(pool=pool, spares=spare, late_share=round(wait.late_share, 4), price=round(wait.price, 1),
                 allowed=round(1 - config.wait_target.quantile, 6))  # fmt: skip
    if wait.aim is not None:
        terms["aim"] = round(wait.aim, 4)
    if spare:
        notes.append(f"{_count(spare, 'spare')} for {config.wait_target}")
    return need + spare


def _shared(work: _Work, config: PolicyConfig) -> int:
    """Sessions that clear the work there now drain_time after a session per unit would; the
    in-flight units keep theirs."""
    assert config.seconds_per_unit is not None and config.drain_time is not None
    # Decimal of the shortest repr, as for the weights: 6 x 0.1 / 0.2 is 3 sessions, not 4.
    unit = _decimal(config.seconds_per_unit)
    share = work.weighted * unit / (unit + _decimal(config.drain_time))
    return math.ceil(max(share, work.in_flight) / config.work_per_session)


@lru_cache(maxsize=256)
def _decimal(value: float) -> Decimal:
    """The Decimal of a float's shortest repr (a few settings, converted every tick: cached)."""
    return Decimal(repr(value))


def _on_failed_read(
    supply: Supply, config: PolicyConfig, bounds: _Bounds, failing_for: float
) -> tuple[int, str]:
    """Hold the supply for error_hold, then go to fallback_sessions when set."""
    held = bounds.clamp(supply.total)
    if config.fallback_sessions is None:
        return held, f"read failed: holding {held} (no fallback_sessions)"
    fallback = bounds.clamp(config.fallback_sessions)
    if failing_for < config.error_hold:
        remaining = math.ceil(config.error_hold - failing_for)
        return held, f"read failed: holding {held}, fallback to {fallback} in {remaining}s"
    return fallback, f"read failed for {math.floor(failing_for)}s: fallback to {fallback}"


def _slide(
    window: tuple[tuple[float, int], ...], now: float, target: int, delay: float
) -> tuple[tuple[float, int], ...]:
    """Add (now, target) to the scale-down window; drop points that are too old or dominated."""
    # A point from the future (the wall clock stepped back) counts as now: it then holds at
    # most one delay instead of until the clock catches up.
    kept = []
    for at, value in window:  # a loop, not a generator: this runs every tick
        if value > target:
            at = now if now < at else at  # min(at, now)
            if now - at < delay:
                kept.append((at, value))
    kept.append((now, target))
    return tuple(kept)


def _actions(target: int, supply: Supply, config: PolicyConfig) -> tuple[int, int, int]:
    """(open, cancel, close) that move the supply toward the target; cancels before closes."""
    if target > supply.total:
        return min(target - supply.total, config.max_opens_per_tick), 0, 0
    surplus = supply.total - target
    cancel = min(surplus, supply.opening)
    return 0, cancel, surplus - cancel


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _explain(total: int, wanted: int, note: str, target: int, supply: Supply, config: PolicyConfig) -> str:
    """The decision in a short human line, e.g. "scale up: 7 units waiting+in flight -> 7 sessions"."""
    work = f"{_count(total, 'unit')} waiting+in flight"
    sessions = _count(target, "session")
    note = f" ({note})" if note else ""
    if target > supply.total:
        step = target - supply.total
        limit = ""
        if step > config.max_opens_per_tick:
            limit = f", opening {config.max_opens_per_tick} now (max_opens_per_tick)"
        return f"scale up: {work} -> {sessions}{note}{limit}"
    if target < supply.total:
        delayed = f" (scale-down delay: {wanted} wanted)" if target > wanted else ""
        return f"scale down: {work} -> {sessions}{note}{delayed}"
    if target > wanted:
        return f"hold: scale-down delay ({work} want {wanted}, keeping {target})"
    if target == 0:
        return f"idle: {work}{note}"
    return f"steady: {work} -> {sessions}{note}"


def close_order(opened: Reversible[K], opened_at: Callable[[K], float], decision: Decision, now: float) -> list[K]:
    """The sessions `decision` closes: the youngest first (least likely to have started work),
    none younger than its boot grace. `opened` runs from the oldest to the youngest."""
    eligible = (key for key in reversed(opened) if now - opened_at(key) >= decision.close_min_age)
    return list(itertools.islice(eligible, decision.close))
