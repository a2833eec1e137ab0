"""Property tests of the scaling policy: random configs and random histories of reads.

Each history is played through `decide()` with a small model of the pool (opens are granted
later, consumers release sessions), and every decision is checked against the rules as the
spec states them, computed here independently of controller/policy.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import PolicyConfig
from controller.policy import Decision, Observation, PolicyState, SourceDepth, Supply, decide, one_queue
from controller.sources import QueueDepth

SETTINGS = settings(max_examples=100, deadline=None)


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    max_sessions = draw(st.integers(1, 25))
    budget = draw(st.none() | st.tuples(st.integers(1, 5000), st.integers(1, 1000)))
    return PolicyConfig(
        work_per_session=draw(st.integers(1, 4)),
        min_sessions=draw(st.integers(0, max_sessions)),
        max_sessions=max_sessions,
        activation=draw(st.integers(1, 8)),
        max_opens_per_tick=draw(st.integers(1, 8)),
        scale_down_delay=draw(st.sampled_from([0.0, 1.0, 5.0, 30.0])),
        error_hold=draw(st.sampled_from([0.0, 3.0, 60.0])),
        fallback_sessions=draw(st.none() | st.integers(0, 30)),
        # Cents, so the expected cap is exact integer arithmetic.
        max_cost_per_hour=None if budget is None else budget[0] / 100,
        price_per_session_hour=None if budget is None else budget[1] / 100,
    )


def caps(config: PolicyConfig) -> tuple[int, int]:
    """[lower, upper] as the spec states them: the budget wins over min_sessions."""
    upper = config.max_sessions
    if config.max_cost_per_hour is not None and config.price_per_session_hour is not None:
        upper = min(
            upper, round(config.max_cost_per_hour * 100) // round(config.price_per_session_hour * 100)
        )
    return min(config.min_sessions, upper), upper


def within(config: PolicyConfig, count: int) -> int:
    lower, upper = caps(config)
    return max(lower, min(upper, count))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def work_sessions(config: PolicyConfig, depth: QueueDepth, supply: Supply) -> int:
    """Sessions the work asks for; at zero supply only from `activation` units up."""
    awake = supply.total > 0 or depth.total >= config.activation
    return ceil_div(depth.total, config.work_per_session) if awake else 0


# Small counts often, so the activation threshold and the caps get hit exactly.
counts = st.integers(0, 10) | st.integers(0, 120)
depths = st.builds(QueueDepth, counts, counts)
supplies = st.builds(Supply, st.integers(0, 3) | st.integers(0, 40), st.integers(0, 3) | st.integers(0, 40))
reads = st.none() | depths


@dataclass(frozen=True)
class Step:
    after: float  # seconds since the previous tick
    depth: QueueDepth | None
    granted: int  # opening sessions the endpoint grants before the next tick
    released: int  # open sessions consumers release before the next tick


steps = st.builds(
    Step,
    st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.0, 7.0, 40.0]),
    reads,
    st.integers(0, 5),
    st.integers(0, 2),
)


def applied(supply: Supply, decision: Decision) -> Supply:
    return Supply(supply.open - decision.close, supply.opening + decision.open - decision.cancel)


def check_decision(
    decision: Decision, supply: Supply, depth: QueueDepth | None, config: PolicyConfig, *, paused: bool = False
) -> None:
    """The rules every single decision obeys, whatever the history."""
    lower, upper = caps(config)
    after = applied(supply, decision)
    assert min(decision.open, decision.cancel, decision.close) >= 0
    assert decision.open <= config.max_opens_per_tick
    assert decision.cancel <= supply.opening and decision.close <= supply.open
    assert not (decision.open and (decision.cancel or decision.close)), "opens and closes at once"
    if decision.close:
        assert decision.cancel == supply.opening, "closed an open session while one was still opening"
    if paused:
        assert (decision.target, decision.open, decision.cancel, decision.close) == (supply.total, 0, 0, 0)
        return
    assert lower <= decision.target <= upper
    if decision.open or decision.cancel or decision.close:
        # Every action moves toward the target and stops at it (or at max_opens_per_tick).
        assert after.total == decision.target or decision.open == config.max_opens_per_tick
    if depth is not None:
        step_limit = supply.total + config.max_opens_per_tick
        need = work_sessions(config, depth, supply)
        assert after.total >= min(need, upper, step_limit), "fewer sessions than the work"
        in_flight_need = ceil_div(depth.in_flight, config.work_per_session)
        assert after.total >= min(in_flight_need, upper, supply.total), "closed below in-flight work"


def check_failed_read(decision: Decision, supply: Supply, config: PolicyConfig, failing_for: float) -> None:
    """Hold (within bounds) during error_hold, or forever without fallback; then the fallback."""
    held = within(config, supply.total)
    if failing_for < config.error_hold or config.fallback_sessions is None:
        assert decision.target == held, "a failed read changed the count during error_hold"
        assert decision.target > 0 or held == 0, "a failed read scaled to zero"
    else:
        assert decision.target == within(config, config.fallback_sessions)


@SETTINGS
@given(
    config=configs(),
    supply=supplies,
    history=st.lists(steps, min_size=1, max_size=40),
)
def test_every_decision_in_any_history_obeys_the_rules(
    config: PolicyConfig, supply: Supply, history: list[Step]
) -> None:
    _, upper = caps(config)
    state, now = PolicyState(), 1000.0
    last_ok: float | None = None
    failing_since: float | None = None
    targets: list[tuple[float, int]] = []  # (time, target the spec wants) for the delay window
    for step in history:
        decision = decide(one_queue(step.depth), supply, config, now, state)
        check_decision(decision, supply, step.depth, config)
        after = applied(supply, decision)
        if step.depth is None:
            failing_since = now if failing_since is None else failing_since
            since = failing_since if last_ok is None else last_ok
            check_failed_read(decision, supply, config, now - since)
            targets.append((now, decision.target))
        else:
            last_ok, failing_since = now, None
            wanted = within(config, work_sessions(config, step.depth, supply))
            if decision.cancel or decision.close:
                recent = max([wanted, *(t for at, t in targets if now - at < config.scale_down_delay)])
                assert after.total >= recent, "closed before the scale-down delay passed"
            targets.append((now, wanted))
        assert len(decision.state.window) <= upper + 1
        state = decision.state
        granted = min(step.granted, after.opening)
        held = after.open + granted
        supply = Supply(held - min(step.released, held), after.opening - granted)
        now += step.after


@SETTINGS
@given(
    config=configs(),
    supply=supplies,
    good_reads=st.lists(depths, max_size=3),
    outage=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 30.0, 60.0]), min_size=1, max_size=8),
)
def test_an_outage_holds_for_error_hold_then_falls_back(
    config: PolicyConfig, supply: Supply, good_reads: list[QueueDepth], outage: list[float]
) -> None:
    state, now = PolicyState(), 100.0
    for depth in good_reads:
        decision = decide(one_queue(depth), supply, config, now, state)
        state, supply = decision.state, Supply(applied(supply, decision).total, 0)
        now += 1.0
    # error_hold counts from the last good read, or from the first failure without one.
    since = now - 1.0 if good_reads else now
    for gap in outage:
        decision = decide(one_queue(None), supply, config, now, state)
        check_decision(decision, supply, None, config)
        check_failed_read(decision, supply, config, now - since)
        state, supply = decision.state, Supply(applied(supply, decision).total, 0)
        now += gap


@SETTINGS
@given(
    config=configs(),
    depth=depths,
    supply=supplies,
    tick=st.sampled_from([0.05, 1.0, 3.0]),
)
def test_a_constant_queue_converges_without_flapping(
    config: PolicyConfig, depth: QueueDepth, supply: Supply, tick: float
) -> None:
    state, now = PolicyState(), 0.0
    directions: set[str] = set()
    converged_at = None
    ticks = int(config.scale_down_delay / tick) + 60 // config.max_opens_per_tick + 10
    for index in range(ticks + 50):
        decision = decide(one_queue(depth), supply, config, now, state)
        check_decision(decision, supply, depth, config)
        if decision.open:
            directions.add("up")
        if decision.cancel or decision.close:
            directions.add("down")
        if decision.open or decision.cancel or decision.close:
            converged_at = None
        elif converged_at is None:
            converged_at = index
        state = decision.state
        # Opens are granted a tick later: opening sessions must not be requested again.
        after = applied(supply, decision)
        supply = Supply(after.total - decision.open, decision.open)
        now += tick
    assert len(directions) <= 1, f"flapped: both {directions}"
    assert converged_at is not None and converged_at <= ticks, "still acting on a constant queue"


@SETTINGS
@given(
    config=configs(),
    depth=reads,
    supply=supplies,
    window=st.lists(st.tuples(st.floats(0, 100), st.integers(0, 30)), max_size=5),
)
def test_paused_never_acts(
    config: PolicyConfig, depth: QueueDepth | None, supply: Supply, window: list[tuple[float, int]]
) -> None:
    decision = decide(one_queue(depth), supply, config, 50.0, PolicyState(window=tuple(sorted(window))), paused=True)
    check_decision(decision, supply, depth, config, paused=True)
    assert decision.reason == "paused"


@SETTINGS
@given(config=configs(), depth=depths)
def test_at_zero_work_at_or_above_activation_wakes_the_scaler(
    config: PolicyConfig, depth: QueueDepth
) -> None:
    decision = decide(one_queue(depth), Supply(0, 0), config, 0.0, PolicyState())
    check_decision(decision, Supply(0, 0), depth, config)
    assert decision.target == within(config, work_sessions(config, depth, Supply(0, 0)))
    assert decision.open == min(decision.target, config.max_opens_per_tick)


# ---- issue 8: advise, buffer, pre-warming, several queues, queue age, boot grace ------------------


@st.composite
def feature_configs(draw: st.DrawFn, **fixed: Any) -> PolicyConfig:
    """A random base config with every issue-8 feature drawn on or off."""
    base = draw(configs()).model_dump(exclude_unset=True)
    seconds_per_unit = draw(st.none() | st.sampled_from([1.0, 30.0, 60.0]))
    lead_time = draw(st.sampled_from([0.0, 0.0, 5.0, 30.0]))
    rate = {}
    if seconds_per_unit is not None or lead_time:
        rate = {"rate_window": draw(st.sampled_from([0.001, 10.0, 60.0]))}
    drain_time = None if seconds_per_unit is None else draw(st.none() | st.sampled_from([1.0, 5.0, 60.0]))
    safety = 0.0 if seconds_per_unit is None else draw(st.sampled_from([0.0, 0.0, 0.5, 1.0]))
    fields = {
        **base,
        "buffer_sessions": draw(st.sampled_from([0, 0, 1, 3])),
        "seconds_per_unit": seconds_per_unit,
        "drain_time": drain_time,
        "prewarm_safety": safety,
        "lead_time": lead_time,
        **rate,
        "max_wait": draw(st.none() | st.sampled_from([0.5, 10.0, 60.0])),
        "boot_grace": draw(st.sampled_from([0.0, 0.0, 1.0, 5.0, 60.0])),
        **fixed,
    }
    return PolicyConfig(**fields)


ages = st.none() | st.sampled_from([0.0, 0.4, 5.0, 11.0, 100.0])
aged_depths = st.builds(QueueDepth, counts, counts, ages)
weights = st.sampled_from([0.1, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0])
source_lists = st.lists(
    st.builds(SourceDepth, st.sampled_from(["a", "b", "c", "d"]), st.none() | aged_depths, weights,
              st.sampled_from([0, 0, 1, 2, 5])),
    min_size=1,
    max_size=4,
)
observations = source_lists | (st.none() | aged_depths).map(one_queue)


def readable(observation: Observation) -> list[SourceDepth]:
    return [s for s in observation if s.depth is not None]


def partial(observation: Observation) -> bool:
    return any(s.depth is None for s in observation) and bool(readable(observation))


def units(sources: Sequence[SourceDepth], part: str = "total") -> int:
    return sum(getattr(s.depth, part) for s in sources)


def weighted_need(config: PolicyConfig, sources: Sequence[SourceDepth], supply: Supply) -> int:
    """Sessions the weighted work asks for (in flight always counted), activation-gated; with
    drain_time the backlog shares: spu / (spu + drain_time) of a session per weighted unit."""
    if supply.total == 0 and units(sources) < config.activation:
        return 0
    weighted = sum((Fraction(str(s.weight)) * s.depth.total for s in sources), Fraction(0))
    if config.drain_time is not None:
        assert config.seconds_per_unit is not None
        unit = Fraction(str(config.seconds_per_unit))
        weighted = weighted * unit / (unit + Fraction(str(config.drain_time)))
    return ceil_div_fraction(max(weighted, Fraction(units(sources, "in_flight"))), config.work_per_session)


def ceil_div_fraction(value: Fraction, by: int) -> int:
    return -(-value.numerator // (value.denominator * by))


def reserve_allowance(config: PolicyConfig, sources: Sequence[SourceDepth]) -> int | None:
    """At most this many sessions while some sources hold reserves (None: no reserves)."""
    reserving = [s for s in sources if s.reserve]
    if not reserving:
        return None
    _, upper = caps(config)
    own = sum(
        min(ceil_div_fraction(Fraction(str(s.weight)) * s.depth.total, config.work_per_session), s.reserve)
        for s in reserving
    )
    return own + max(0, upper - sum(s.reserve for s in reserving))


class Pool:
    """The pool as the loop drives it: applies only acting decisions, closes the youngest
    sessions old enough (close_min_age), grants opens later, and consumers release sessions."""

    def __init__(self, supply: Supply):
        self.granted = [-100.0 * (n + 1) for n in range(supply.open)]  # grant times, oldest first
        self.granted.sort()
        self.opening = supply.opening

    def supply(self, now: float) -> Supply:
        return Supply(len(self.granted), self.opening, tuple(now - at for at in self.granted))

    def apply(self, decision: Decision, now: float) -> None:
        if not decision.act:
            return
        self.opening += decision.open - decision.cancel
        eligible = [at for at in reversed(self.granted) if now - at >= decision.close_min_age]
        for at in eligible[: decision.close]:
            self.granted.remove(at)

    def settle(self, now: float, granted: int, released: int) -> None:
        granted = min(granted, self.opening)
        self.opening -= granted
        self.granted += [now] * granted
        del self.granted[: min(released, len(self.granted))]


def check_feature_decision(
    decision: Decision, supply: Supply, observation: Observation, config: PolicyConfig, act: bool
) -> None:
    """The rules every decision obeys with any features on, in act or advise mode."""
    lower, upper = caps(config)
    after = applied(supply, decision)
    closable = supply.closable(config.boot_grace)
    assert decision.act == act
    assert decision.close_min_age == config.boot_grace
    assert min(decision.open, decision.cancel, decision.close) >= 0
    assert decision.open <= config.max_opens_per_tick
    assert decision.cancel <= supply.opening and decision.close <= closable, "closed a young session"
    assert not (decision.open and (decision.cancel or decision.close)), "opens and closes at once"
    if decision.close:
        assert decision.cancel == supply.opening, "closed an open session while one was still opening"
    assert lower <= decision.target <= upper
    if decision.open or decision.cancel or decision.close:
        assert (
            after.total == decision.target
            or decision.open == config.max_opens_per_tick
            or decision.close == closable
        ), "an action that stops short of the target, neither step-limited nor grace-limited"
    sources = readable(observation)
    if not sources:
        return
    step_limit = supply.total + config.max_opens_per_tick
    in_flight = ceil_div(units(sources, "in_flight"), config.work_per_session)
    assert after.total >= min(in_flight, upper, supply.total), "closed below in-flight work"
    if partial(observation):
        assert after.total >= min(supply.total, upper), "scaled down with a source unreadable"
    if reserve_allowance(config, sources) is None:
        need = weighted_need(config, sources, supply)
        assert after.total >= min(need, upper, step_limit), "fewer sessions than the work"
        if config.max_wait is not None:
            aged = sum(
                s.depth.waiting for s in sources
                if s.depth.waiting and s.depth.oldest_age is not None and s.depth.oldest_age > config.max_wait
            )
            if aged:
                by_age = supply.open + ceil_div(aged, config.work_per_session)
                assert decision.target >= min(by_age, upper), "old work got no sessions"
                assert after.total >= min(supply.total, upper), "scaled down while old work waits"


@dataclass(frozen=True)
class FeatureStep:
    after: float
    observation: Observation
    granted: int
    released: int


feature_steps = st.builds(
    FeatureStep,
    st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.0, 7.0, 40.0]),
    observations,
    st.integers(0, 5),
    st.integers(0, 2),
)


@SETTINGS
@given(
    config=feature_configs(),
    act=st.booleans(),
    supply=supplies,
    history=st.lists(feature_steps, min_size=1, max_size=40),
)
def test_with_any_features_every_decision_obeys_the_rules(
    config: PolicyConfig, act: bool, supply: Supply, history: list[FeatureStep]
) -> None:
    pool, state, now = Pool(supply), PolicyState(), 1000.0
    _, upper = caps(config)
    for step in history:
        supply = pool.supply(now)
        decision = decide(step.observation, supply, config, now, state, act=act)
        check_feature_decision(decision, supply, step.observation, config, act)
        assert len(decision.state.window) <= upper + 1
        state = decision.state
        pool.apply(decision, now)
        now += step.after
        pool.settle(now, step.granted, step.released)


@SETTINGS
@given(
    config=feature_configs() | feature_configs(wait_target="p95 10s", forecast_period=600.0),
    supply=supplies,
    history=st.lists(feature_steps, min_size=1, max_size=30),
)
def test_a_decision_without_its_explanation_takes_the_same_steps(
    config: PolicyConfig, supply: Supply, history: list[FeatureStep]
) -> None:
    def both(observation: Observation, supply: Supply, now: float, state: PolicyState) -> Decision:
        explained = decide(observation, supply, config, now, state)
        terse = decide(observation, supply, config, now, state, explain=False)
        assert terse.inputs is None and terse.terms == ()
        assert replace(terse, reason=explained.reason, inputs=explained.inputs, terms=explained.terms) == explained
        return terse

    replay(supply, history, both)


@SETTINGS
@given(
    config=feature_configs(),
    supply=supplies,
    history=st.lists(feature_steps, min_size=1, max_size=30),
)
def test_advise_mode_never_acts_and_would_do_what_act_mode_does(
    config: PolicyConfig, supply: Supply, history: list[FeatureStep]
) -> None:
    def both(observation: Observation, supply: Supply, now: float, state: PolicyState) -> Decision:
        advised = decide(observation, supply, config, now, state, act=False)
        acted = decide(observation, supply, config, now, state)
        assert not advised.act and acted.act
        assert advised == replace(acted, act=False)
        return advised  # applying it is a no-op: the sessions change only by grants and releases

    replay(supply, history, both)


def replay(supply: Supply, history: list[FeatureStep], step: Callable[[Observation, Supply, float, PolicyState], Decision]) -> None:
    """Drive a pool through `history`, applying the decision `step` returns at each reading."""
    pool, state, now = Pool(supply), PolicyState(), 1000.0
    for moment in history:
        decision = step(moment.observation, pool.supply(now), now, state)
        state = decision.state
        pool.apply(decision, now)
        now += moment.after
        pool.settle(now, moment.granted, moment.released)


@SETTINGS
@given(
    config=feature_configs(),
    supply=supplies,
    busy=st.lists(feature_steps, max_size=20),
    idle_ticks=st.lists(st.sampled_from([0.05, 0.5, 1.0, 7.0]), min_size=1, max_size=10),
)
def test_after_scale_down_delay_without_work_the_buffer_and_prewarming_are_gone(
    config: PolicyConfig, supply: Supply, busy: list[FeatureStep], idle_ticks: list[float]
) -> None:
    pool, state, now = Pool(supply), PolicyState(), 1000.0
    for step in busy:
        decision = decide(step.observation, pool.supply(now), config, now, state)
        state = decision.state
        pool.apply(decision, now)
        now += step.after
        pool.settle(now, step.granted, step.released)
    # The queue empties for good; the scaler ticks through the delay and past it.
    idle_since = now
    for gap in [*idle_ticks, config.scale_down_delay]:
        decision = decide(one_queue(QueueDepth(0, 0)), pool.supply(now), config, now, state)
        state = decision.state
        pool.apply(decision, now)
        now += gap
        pool.settle(now, 0, 0)
    decision = decide(one_queue(QueueDepth(0, 0)), pool.supply(now), config, now, state)
    assert now - idle_since >= config.scale_down_delay
    assert decision.target == within(config, 0), "idle, yet more than min_sessions wanted"
    assert dict(decision.terms) == {"work": 0}


@SETTINGS
@given(
    config=configs(),
    buffer=st.integers(0, 4),
    depth=depths,
)
def test_the_buffer_adds_exactly_its_sessions_while_there_is_work(
    config: PolicyConfig, buffer: int, depth: QueueDepth
) -> None:
    with_buffer = config.model_copy(update={"buffer_sessions": buffer})
    need = work_sessions(config, depth, Supply(0, 0))
    decision = decide(one_queue(depth), Supply(0, 0), with_buffer, 0.0, PolicyState())
    assert decision.target == within(config, need + buffer if need else 0)


@SETTINGS
@given(
    config=configs(),
    buffer=st.sampled_from([0, 0, 2]),
    sources=source_lists.filter(lambda sources: all(s.depth is not None for s in sources)),
    supply=supplies,
)
def test_weights_and_reserves_respect_the_caps(
    config: PolicyConfig, buffer: int, sources: list[SourceDepth], supply: Supply
) -> None:
    config = config.model_copy(update={"buffer_sessions": buffer})
    lower, upper = caps(config)
    decision = decide(sources, supply, config, 0.0, PolicyState())
    need = weighted_need(config, sources, supply)
    if need:
        need += buffer
    allowance = reserve_allowance(config, sources)
    if allowance is not None:
        in_flight = ceil_div(units(sources, "in_flight"), config.work_per_session)
        need = min(need, max(allowance, in_flight))
    # From a fresh state the target is the wanted count itself, whatever the supply.
    assert decision.target == within(config, need)
    assert lower <= decision.target <= upper
    if allowance is not None and decision.target > max(lower, allowance):
        # Beyond the allowance only for work already running.
        assert decision.target <= ceil_div(units(sources, "in_flight"), config.work_per_session)


@SETTINGS
@given(
    config=feature_configs(),
    act=st.booleans(),
    observation=observations,
    open_ages=st.lists(st.sampled_from([0.0, 0.5, 0.99, 1.0, 4.9, 5.0, 59.0, 61.0, 1e4]), max_size=30),
    opening=st.integers(0, 5),
    window=st.lists(st.tuples(st.floats(0, 100), st.integers(0, 30)), max_size=5),
)
def test_boot_grace_never_closes_a_young_session(
    config: PolicyConfig,
    act: bool,
    observation: Observation,
    open_ages: list[float],
    opening: int,
    window: list[tuple[float, int]],
) -> None:
    supply = Supply(len(open_ages), opening, tuple(open_ages))
    decision = decide(observation, supply, config, 50.0, PolicyState(window=tuple(sorted(window))), act=act)
    check_feature_decision(decision, supply, observation, config, act)
    assert decision.close <= sum(age >= config.boot_grace for age in open_ages)


@SETTINGS
@given(
    config=feature_configs(),
    act=st.booleans(),
    observation=observations.filter(lambda o: o is not None),
    supply=supplies,
    tick=st.sampled_from([0.05, 1.0, 3.0]),
)
def test_a_constant_queue_does_not_flap_with_any_features(
    config: PolicyConfig, act: bool, observation: Observation, supply: Supply, tick: float
) -> None:
    state, now = PolicyState(), 0.0
    directions: set[str] = set()
    for _ in range(int(config.scale_down_delay / tick) + 80):
        decision = decide(observation, supply, config, now, state, act=act)
        check_feature_decision(decision, supply, observation, config, act)
        if decision.act and decision.open:
            directions.add("up")
        if decision.act and (decision.cancel or decision.close):
            directions.add("down")
        state = decision.state
        # Opens are granted a tick later; advice changes nothing.
        opened = decision.open if decision.act else 0
        after = applied(supply, decision) if decision.act else supply
        supply = Supply(after.total - opened, opened)
        now += tick
    assert len(directions) <= 1, f"flapped: both {directions}"


@SETTINGS
@given(
    config=configs(),
    seconds_per_unit=st.sampled_from([1.0, 7.0, 60.0, 90.0]),
    drain_time=st.sampled_from([0.5, 5.0, 60.0, 600.0]),
    sources=st.lists(st.builds(SourceDepth, st.just("a"), aged_depths, weights), min_size=1, max_size=3),
    supply=supplies,
)
def test_drain_time_shares_the_backlog_and_never_asks_for_more(
    config: PolicyConfig,
    seconds_per_unit: float,
    drain_time: float,
    sources: list[SourceDepth],
    supply: Supply,
) -> None:
    plain = config.model_copy(update={"seconds_per_unit": seconds_per_unit})
    shared = plain.model_copy(update={"drain_time": drain_time})
    with_drain = decide(sources, supply, shared, 0.0, PolicyState())
    without = decide(sources, supply, plain, 0.0, PolicyState())
    # From a fresh state the rate is the one that keeps the (weighted) in-flight work steady,
    # so pre-warming asks for those units' sessions and no more.
    need = weighted_need(shared, sources, supply)
    running = sum((Fraction(str(s.weight)) * s.depth.in_flight for s in sources), Fraction(0))
    prewarm = ceil_div_fraction(running, config.work_per_session) if need else 0
    assert with_drain.target == within(shared, max(need, prewarm))
    assert with_drain.target <= without.target
    in_flight = ceil_div(units(sources, "in_flight"), config.work_per_session)
    assert with_drain.target >= within(shared, in_flight if weighted_need(plain, sources, supply) else 0)


@SETTINGS
@given(
    config=configs(),
    seconds_per_unit=st.sampled_from([1.0, 7.0, 60.0]),
    safety=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]),
    sources=st.lists(st.builds(SourceDepth, st.just("a"), aged_depths, weights), min_size=1, max_size=3),
    supply=supplies,
)
def test_prewarm_safety_staffs_the_load_plus_its_square_root(
    config: PolicyConfig, seconds_per_unit: float, safety: float, sources: list[SourceDepth], supply: Supply
) -> None:
    plain = config.model_copy(update={"seconds_per_unit": seconds_per_unit})
    staffed = plain.model_copy(update={"prewarm_safety": safety})
    decision = decide(sources, supply, staffed, 0.0, PolicyState())
    # From a fresh state the load is the weighted in-flight work (the rate that keeps it steady).
    need = weighted_need(staffed, sources, supply)
    load = float(sum((Fraction(str(s.weight)) * s.depth.in_flight for s in sources), Fraction(0)))
    spare = math.ceil((load + safety * math.sqrt(load)) / config.work_per_session - 1e-9) if need else 0
    assert decision.target == within(staffed, max(need, spare))
    assert decision.target >= decide(sources, supply, plain, 0.0, PolicyState()).target


@SETTINGS
@given(
    seconds_per_unit=st.sampled_from([1.0, 7.0, 60.0, 300.0, 3600.0]),
    rate_window=st.sampled_from([0.001, 10.0, 60.0, 600.0]),
    tick=st.sampled_from([0.05, 1.0, 5.0, 30.0]),
    queued_for=st.integers(1, 5),
)
def test_a_lone_unit_never_asks_for_a_second_session(
    seconds_per_unit: float, rate_window: float, tick: float, queued_for: int
) -> None:
    config = PolicyConfig(seconds_per_unit=seconds_per_unit, rate_window=rate_window)
    state, now = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 0.0, PolicyState()).state, 0.0
    # The unit waits a few ticks, then runs (the estimate peaks early: 200 reads of its run).
    reads = [QueueDepth(1, 0)] * queued_for + [QueueDepth(0, 1)] * min(200, int(seconds_per_unit / tick) + 1)
    for depth in reads:
        now += tick
        decision = decide(one_queue(depth), Supply(0, 1) if depth.waiting else Supply(1, 0), config, now, state)
        state = decision.state
        assert decision.target <= 1, f"{decision.target} sessions for one unit at t={now:g}"
