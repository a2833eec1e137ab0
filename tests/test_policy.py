"""Example tests of the scaling policy: one scenario per rule, exact numbers."""

from __future__ import annotations

from controller.config import PolicyConfig
from controller.policy import Decision, PolicyState, Supply, budget_cap, decide
from controller.sources import QueueDepth


def policy(**fields: object) -> PolicyConfig:
    return PolicyConfig(**fields)


def after(supply: Supply, decision: Decision) -> Supply:
    """The supply once the pool applied the decision (opens still opening)."""
    return Supply(
        open=supply.open - decision.close,
        opening=supply.opening + decision.open - decision.cancel,
    )


def run(config: PolicyConfig, reads: list[tuple[float, QueueDepth | None]], supply: Supply) -> list[Decision]:
    """Feed reads in order, granting every opening session before the next tick."""
    state, decisions = PolicyState(), []
    for now, depth in reads:
        decision = decide(depth, supply, config, now, state)
        state = decision.state
        decisions.append(decision)
        applied = after(supply, decision)
        supply = Supply(open=applied.total, opening=0)
    return decisions


def test_a_single_message_wakes_a_scaler_at_zero() -> None:
    decision = decide(QueueDepth(1, 0), Supply(0, 0), policy(), 0.0, PolicyState())
    assert (decision.target, decision.open, decision.cancel, decision.close) == (1, 1, 0, 0)
    assert decision.reason == "scale up: 1 unit waiting+in flight -> 1 session"


def test_an_empty_queue_stays_at_zero() -> None:
    decision = decide(QueueDepth(0, 0), Supply(0, 0), policy(), 0.0, PolicyState())
    assert (decision.target, decision.open) == (0, 0)
    assert decision.reason.startswith("idle")


def test_target_is_work_divided_by_work_per_session_rounded_up() -> None:
    config = policy(work_per_session=3)
    assert decide(QueueDepth(5, 2), Supply(0, 0), config, 0.0, PolicyState()).target == 3
    assert decide(QueueDepth(5, 1), Supply(0, 0), config, 0.0, PolicyState()).target == 2


def test_activation_gates_only_the_wake_from_zero() -> None:
    config = policy(activation=5, scale_down_delay=0)
    below = decide(QueueDepth(4, 0), Supply(0, 0), config, 0.0, PolicyState())
    assert (below.target, below.open) == (0, 0)
    assert "below activation 5" in below.reason
    at = decide(QueueDepth(5, 0), Supply(0, 0), config, 0.0, PolicyState())
    assert (at.target, at.open) == (5, 5)
    # With sessions held, work below the activation is still served, in flight included.
    active = decide(QueueDepth(1, 2), Supply(5, 0), config, 1.0, at.state)
    assert (active.target, active.close) == (3, 2)
    drained = decide(QueueDepth(0, 0), Supply(3, 0), config, 2.0, active.state)
    assert (drained.target, drained.close) == (0, 3)


def test_target_is_clamped_to_min_and_max_sessions() -> None:
    config = policy(min_sessions=2, max_sessions=4)
    assert decide(QueueDepth(0, 0), Supply(0, 0), config, 0.0, PolicyState()).target == 2
    big = decide(QueueDepth(100, 0), Supply(0, 0), config, 0.0, PolicyState())
    assert (big.target, big.open) == (4, 4)
    assert "(max_sessions)" in big.reason


def test_scale_up_is_bounded_per_tick_and_counts_opening_sessions() -> None:
    config = policy(max_opens_per_tick=3)
    first = decide(QueueDepth(7, 0), Supply(0, 0), config, 0.0, PolicyState())
    assert (first.target, first.open) == (7, 3)
    assert "opening 3 now (max_opens_per_tick)" in first.reason
    # The three requested are still opening: only the rest is requested, never twice.
    second = decide(QueueDepth(7, 0), Supply(0, 3), config, 1.0, first.state)
    assert second.open == 3
    third = decide(QueueDepth(7, 0), Supply(2, 4), config, 2.0, second.state)
    assert third.open == 1
    steady = decide(QueueDepth(7, 0), Supply(5, 2), config, 3.0, third.state)
    assert (steady.open, steady.cancel, steady.close) == (0, 0, 0)


def test_scale_down_waits_the_delay_then_closes() -> None:
    config = policy(scale_down_delay=10)
    reads = [(0.0, QueueDepth(5, 0)), (1.0, QueueDepth(0, 1))]
    reads += [(t, QueueDepth(0, 1)) for t in (2.0, 5.0, 9.9)]
    reads += [(10.0, QueueDepth(0, 1)), (11.0, QueueDepth(0, 1))]
    decisions = run(config, reads, Supply(0, 0))
    assert [d.target for d in decisions] == [5, 5, 5, 5, 5, 1, 1]
    assert [d.close for d in decisions] == [0, 0, 0, 0, 0, 4, 0]
    assert decisions[1].reason == "hold: scale-down delay (1 unit waiting+in flight want 1, keeping 5)"
    assert decisions[5].reason == "scale down: 1 unit waiting+in flight -> 1 session"


def test_scale_down_delay_counts_from_the_last_high_reading() -> None:
    config = policy(scale_down_delay=10)
    reads = [(0.0, QueueDepth(5, 0)), (3.0, QueueDepth(1, 0)), (6.0, QueueDepth(5, 0))]
    reads += [(15.0, QueueDepth(1, 0)), (16.0, QueueDepth(1, 0))]
    decisions = run(config, reads, Supply(0, 0))
    assert [d.close for d in decisions] == [0, 0, 0, 0, 4]


def test_scale_down_steps_through_intermediate_targets() -> None:
    config = policy(scale_down_delay=10)
    reads = [(0.0, QueueDepth(6, 0)), (5.0, QueueDepth(3, 0)), (8.0, QueueDepth(0, 0))]
    reads += [(10.0, QueueDepth(0, 0)), (15.0, QueueDepth(0, 0)), (18.0, QueueDepth(0, 0))]
    decisions = run(config, reads, Supply(0, 0))
    assert [d.target for d in decisions] == [6, 6, 6, 3, 0, 0]
    assert "(scale-down delay: 0 wanted)" in decisions[3].reason


def test_surplus_cancels_opening_sessions_before_closing_open_ones() -> None:
    config = policy(scale_down_delay=0)
    few = decide(QueueDepth(1, 0), Supply(open=3, opening=2), config, 0.0, PolicyState())
    assert (few.target, few.cancel, few.close) == (1, 2, 2)
    some = decide(QueueDepth(3, 0), Supply(open=3, opening=2), config, 0.0, PolicyState())
    assert (some.cancel, some.close) == (2, 0)


def test_a_failed_read_holds_the_count_then_falls_back() -> None:
    config = policy(error_hold=60, fallback_sessions=1)
    ok = decide(QueueDepth(3, 0), Supply(0, 0), config, 100.0, PolicyState())
    supply = Supply(3, 0)
    held = decide(None, supply, config, 110.0, ok.state)
    assert (held.target, held.open, held.cancel, held.close) == (3, 0, 0, 0)
    assert held.reason == "read failed: holding 3, fallback to 1 in 50s"
    still = decide(None, supply, config, 159.9, held.state)
    assert (still.target, still.close) == (3, 0)
    # error_hold counts from the last good read (t=100), not from the first failure (t=110).
    fallback = decide(None, supply, config, 160.0, still.state)
    assert (fallback.target, fallback.close) == (1, 2)
    assert fallback.reason == "read failed for 60s: fallback to 1"


def test_without_a_good_read_error_hold_counts_from_the_first_failure() -> None:
    config = policy(error_hold=30, fallback_sessions=2, min_sessions=0)
    first = decide(None, Supply(0, 0), config, 1000.0, PolicyState())
    assert (first.target, first.open) == (0, 0)
    assert first.state.failing_since == 1000.0
    later = decide(None, Supply(0, 0), config, 1029.0, first.state)
    assert later.target == 0
    fallback = decide(None, Supply(0, 0), config, 1030.0, later.state)
    assert (fallback.target, fallback.open) == (2, 2)


def test_without_fallback_a_failed_read_holds_forever() -> None:
    config = policy(error_hold=5)
    ok = decide(QueueDepth(4, 0), Supply(0, 0), config, 0.0, PolicyState())
    held = decide(None, Supply(4, 0), config, 10_000.0, ok.state)
    assert (held.target, held.close, held.cancel) == (4, 0, 0)
    assert held.reason == "read failed: holding 4 (no fallback_sessions)"


def test_a_good_read_after_an_outage_waits_the_delay_before_closing() -> None:
    config = policy(scale_down_delay=10, error_hold=60)
    ok = decide(QueueDepth(4, 0), Supply(0, 0), config, 0.0, PolicyState())
    outage = decide(None, Supply(4, 0), config, 30.0, ok.state)
    back = decide(QueueDepth(0, 0), Supply(4, 0), config, 31.0, outage.state)
    assert (back.target, back.close) == (4, 0)
    assert back.state.failing_since is None and back.state.last_ok_at == 31.0
    later = decide(QueueDepth(0, 0), Supply(4, 0), config, 40.0, back.state)
    assert (later.target, later.close) == (0, 4)


def test_the_budget_caps_the_target_and_wins_over_min_sessions() -> None:
    config = policy(min_sessions=5, max_sessions=20, max_cost_per_hour=10.0, price_per_session_hour=3.0)
    decision = decide(QueueDepth(50, 0), Supply(0, 0), config, 0.0, PolicyState())
    assert (decision.target, decision.open) == (3, 3)
    assert "(budget cap 3)" in decision.reason
    idle = decide(QueueDepth(0, 0), Supply(0, 0), config, 0.0, PolicyState())
    assert idle.target == 3


def test_budget_cap_is_exact_for_decimal_prices() -> None:
    assert budget_cap(policy(max_cost_per_hour=0.3, price_per_session_hour=0.1)) == 3
    assert budget_cap(policy(max_cost_per_hour=0.29, price_per_session_hour=0.1)) == 2
    assert budget_cap(policy(max_cost_per_hour=0.05, price_per_session_hour=0.1)) == 0
    assert budget_cap(policy()) is None


def test_a_lowered_cap_closes_the_excess_without_waiting() -> None:
    wide = policy(max_sessions=10, scale_down_delay=600)
    first = decide(QueueDepth(10, 0), Supply(0, 0), wide, 0.0, PolicyState())
    narrow = policy(max_sessions=4, scale_down_delay=600)
    second = decide(QueueDepth(10, 0), Supply(8, 2), narrow, 1.0, first.state)
    assert (second.target, second.cancel, second.close) == (4, 2, 4)


def test_paused_freezes_the_count() -> None:
    config = policy(paused=True)
    for depth, supply in [
        (QueueDepth(50, 0), Supply(1, 1)),
        (QueueDepth(0, 0), Supply(7, 0)),
        (None, Supply(2, 0)),
    ]:
        decision = decide(depth, supply, config, 0.0, PolicyState())
        assert (decision.target, decision.open, decision.cancel, decision.close) == (supply.total, 0, 0, 0)
        assert decision.reason == "paused"


def test_the_window_stays_small_however_often_it_ticks() -> None:
    config = policy(max_sessions=5, scale_down_delay=3600)
    state, now = PolicyState(), 0.0
    for tick in range(5000):
        work = 5 - (tick // 1000)  # a staircase down: each step stays in the window
        state = decide(QueueDepth(work, 0), Supply(5, 0), config, now, state).state
        now += 0.05
    assert [value for _, value in state.window] == [5, 4, 3, 2, 1]


def test_a_clock_stepping_back_holds_at_most_one_delay() -> None:
    config = policy(scale_down_delay=10)
    high = decide(QueueDepth(5, 0), Supply(0, 0), config, 10_000.0, PolicyState())
    # The wall clock steps back an hour: the old high point holds 10 s from now, not an hour.
    stepped = decide(QueueDepth(0, 0), Supply(5, 0), config, 6_400.0, high.state)
    assert (stepped.target, stepped.close) == (5, 0)
    later = decide(QueueDepth(0, 0), Supply(5, 0), config, 6_410.0, stepped.state)
    assert (later.target, later.close) == (0, 5)


def test_decide_is_deterministic() -> None:
    config = policy(max_opens_per_tick=2)
    args = (QueueDepth(9, 1), Supply(1, 1), config, 5.0, PolicyState(window=((1.0, 4),)))
    assert decide(*args) == decide(*args)
