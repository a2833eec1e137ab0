"""How many sessions a scaler wants: a pure function of the queue, the supply and a small state.

`decide()` does no I/O, reads no clock and logs nothing, so the loop and the simulator run the
very same rules. The rules, in the order they apply:

- **Target.** total = waiting + in_flight; target = ceil(total / work_per_session), clamped to
  [min_sessions, max_sessions].
- **Activation** only gates waking from zero: with no sessions open or opening, a scaler stays at
  zero while total < activation (activation=1: a single unit wakes it). Once it has sessions it
  serves whatever work remains, even below activation, so in-flight work is never stranded; it
  returns to zero only when the queue is empty (after the scale-down delay).
- **Budget.** With max_cost_per_hour, the target is capped at
  floor(max_cost_per_hour / price_per_session_hour). The budget wins over min_sessions: money
  is never spent past the cap.
- **Scale-up** is immediate, at most max_opens_per_tick opens per decision. Sessions still opening
  count as supply, so nothing is requested twice.
- **Scale-down** waits: the scaler keeps the maximum target seen over the last scale_down_delay
  seconds. Surplus cancels opening sessions first, then closes open ones.
- **Failed read** (depth None): hold the current supply (within bounds) for error_hold seconds
  since the last good read (since the first failure if there never was one), then go to
  fallback_sessions if set, else keep holding. An error alone never scales to zero; an explicit
  fallback_sessions: 0 is the user's choice and is honoured after error_hold. The count held
  during an outage enters the scale-down window, so the first good reads after it wait the
  delay before closing anything.
- **Paused**: target = current supply, no actions.

Config changes apply at once: a lowered max_sessions or budget closes the excess without waiting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from decimal import Decimal

from controller.config import PolicyConfig
from controller.sources import QueueDepth


@dataclass(frozen=True)
class Supply:
    """Sessions a scaler holds: granted (`open`) and requested but not yet granted (`opening`)."""

    open: int
    opening: int

    @property
    def total(self) -> int:
        return self.open + self.opening


@dataclass(frozen=True)
class PolicyState:
    """What `decide()` remembers between ticks; `PolicyState()` is the initial state.

    `window` holds (time, target) points of the scale-down window with strictly decreasing
    targets (a later, larger target makes earlier ones irrelevant), so it never holds more than
    max_sessions + 1 points however often the loop ticks.
    """

    window: tuple[tuple[float, int], ...] = ()
    last_ok_at: float | None = None
    failing_since: float | None = None


@dataclass(frozen=True)
class Decision:
    """One tick's verdict: the session count wanted, and the steps toward it.

    `open` sessions to request, `cancel` opening requests to drop, `close` open sessions to end;
    `reason` says why in a short human line; `state` is the PolicyState for the next tick.
    """

    target: int
    open: int
    cancel: int
    close: int
    reason: str
    state: PolicyState


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
    cap = budget_cap(config)
    upper = config.max_sessions if cap is None else min(config.max_sessions, cap)
    return _Bounds(lower=min(config.min_sessions, upper), upper=upper, budget_cap=cap)


def decide(
    depth: QueueDepth | None, supply: Supply, config: PolicyConfig, now: float, state: PolicyState
) -> Decision:
    """The decision for one tick; `depth=None` means the read failed."""
    bounds = _bounds(config)
    if depth is None:
        failing_since = now if state.failing_since is None else state.failing_since
        since = failing_since if state.last_ok_at is None else state.last_ok_at
        target, reason = _on_failed_read(supply, config, bounds, now - since)
        # The error target goes straight to the supply (hold or fallback) and into the window
        # too, so the first good read after an outage waits the delay before closing anything.
        window = _slide(state.window, now, target, config.scale_down_delay)
        state = replace(state, window=window, failing_since=failing_since)
    else:
        wanted, note = _wanted(depth, supply, config, bounds)
        window = _slide(state.window, now, wanted, config.scale_down_delay)
        # Clamped again: a lowered max_sessions or budget applies without waiting the delay.
        keep = bounds.clamp(max(value for _, value in window))
        target = min(max(supply.total, wanted), keep)
        reason = _explain(depth.total, wanted, note, target, supply, config)
        state = PolicyState(window=window, last_ok_at=now)
    if config.paused:
        return Decision(supply.total, 0, 0, 0, "paused", state)
    return Decision(target, *_actions(target, supply, config), reason, state)


def _wanted(depth: QueueDepth, supply: Supply, config: PolicyConfig, bounds: _Bounds) -> tuple[int, str]:
    """Sessions the work asks for now, and a note on what bent the number (or "")."""
    total = max(0, depth.total)
    need = -(-total // config.work_per_session)
    below_activation = supply.total == 0 and total < config.activation
    if below_activation:
        # Activation gates waking from zero only; a scaler with sessions serves every unit.
        need = 0
    wanted = bounds.clamp(need)
    if wanted > need:
        return wanted, "min_sessions"
    if wanted < need:
        capped_by_budget = bounds.budget_cap is not None and bounds.budget_cap < config.max_sessions
        return wanted, f"budget cap {bounds.budget_cap}" if capped_by_budget else "max_sessions"
    if below_activation and total:
        return wanted, f"below activation {config.activation}"
    return wanted, ""


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
    kept = tuple(
        (min(at, now), value) for at, value in window if now - min(at, now) < delay and value > target
    )
    return (*kept, (now, target))


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
