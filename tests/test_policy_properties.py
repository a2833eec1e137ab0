"""Property tests of the scaling policy: random configs and random histories of reads.

Each history is played through `decide()` with a small model of the pool (opens are granted
later, consumers release sessions), and every decision is checked against the rules as the
spec states them, computed here independently of controller/policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import PolicyConfig
from controller.policy import Decision, PolicyState, Supply, decide
from controller.sources import QueueDepth

SETTINGS = settings(max_examples=100, deadline=None)


@st.composite
def configs(draw: st.DrawFn, paused: bool = False) -> PolicyConfig:
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
        paused=paused,
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
    decision: Decision, supply: Supply, depth: QueueDepth | None, config: PolicyConfig
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
    if config.paused:
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
        decision = decide(step.depth, supply, config, now, state)
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
        decision = decide(depth, supply, config, now, state)
        state, supply = decision.state, Supply(applied(supply, decision).total, 0)
        now += 1.0
    # error_hold counts from the last good read, or from the first failure without one.
    since = now - 1.0 if good_reads else now
    for gap in outage:
        decision = decide(None, supply, config, now, state)
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
        decision = decide(depth, supply, config, now, state)
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
    config=configs(paused=True),
    depth=reads,
    supply=supplies,
    window=st.lists(st.tuples(st.floats(0, 100), st.integers(0, 30)), max_size=5),
)
def test_paused_never_acts(
    config: PolicyConfig, depth: QueueDepth | None, supply: Supply, window: list[tuple[float, int]]
) -> None:
    decision = decide(depth, supply, config, 50.0, PolicyState(window=tuple(sorted(window))))
    check_decision(decision, supply, depth, config)
    assert decision.reason == "paused"


@SETTINGS
@given(config=configs(), depth=depths)
def test_at_zero_work_at_or_above_activation_wakes_the_scaler(
    config: PolicyConfig, depth: QueueDepth
) -> None:
    decision = decide(depth, Supply(0, 0), config, 0.0, PolicyState())
    check_decision(decision, Supply(0, 0), depth, config)
    assert decision.target == within(config, work_sessions(config, depth, Supply(0, 0)))
    assert decision.open == min(decision.target, config.max_opens_per_tick)
