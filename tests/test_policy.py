"""Example tests of the scaling policy: one scenario per rule, exact numbers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from pydantic import ValidationError

from controller import policy_rate
from controller.config import PolicyConfig
from controller.policy import Decision, PolicyState, SourceDepth, Supply, budget_cap, close_order, decide, one_queue
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
        decision = decide(one_queue(depth), supply, config, now, state)
        state = decision.state
        decisions.append(decision)
        applied = after(supply, decision)
        supply = Supply(open=applied.total, opening=0)
    return decisions


def test_a_single_message_wakes_a_scaler_at_zero() -> None:
    decision = decide(one_queue(QueueDepth(1, 0)), Supply(0, 0), policy(), 0.0, PolicyState())
    assert (decision.target, decision.open, decision.cancel, decision.close) == (1, 1, 0, 0)
    assert decision.reason == "scale up: 1 unit waiting+in flight -> 1 session"


def test_an_empty_queue_stays_at_zero() -> None:
    decision = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), policy(), 0.0, PolicyState())
    assert (decision.target, decision.open) == (0, 0)
    assert decision.reason.startswith("idle")


def test_target_is_work_divided_by_work_per_session_rounded_up() -> None:
    config = policy(work_per_session=3)
    assert decide(one_queue(QueueDepth(5, 2)), Supply(0, 0), config, 0.0, PolicyState()).target == 3
    assert decide(one_queue(QueueDepth(5, 1)), Supply(0, 0), config, 0.0, PolicyState()).target == 2


def test_activation_gates_only_the_wake_from_zero() -> None:
    config = policy(activation=5, scale_down_delay=0)
    below = decide(one_queue(QueueDepth(4, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (below.target, below.open) == (0, 0)
    assert "below activation 5" in below.reason
    at = decide(one_queue(QueueDepth(5, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (at.target, at.open) == (5, 5)
    # With sessions held, work below the activation is still served, in flight included.
    active = decide(one_queue(QueueDepth(1, 2)), Supply(5, 0), config, 1.0, at.state)
    assert (active.target, active.close) == (3, 2)
    drained = decide(one_queue(QueueDepth(0, 0)), Supply(3, 0), config, 2.0, active.state)
    assert (drained.target, drained.close) == (0, 3)


def test_target_is_clamped_to_min_and_max_sessions() -> None:
    config = policy(min_sessions=2, max_sessions=4)
    assert decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 0.0, PolicyState()).target == 2
    big = decide(one_queue(QueueDepth(100, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (big.target, big.open) == (4, 4)
    assert "(max_sessions)" in big.reason


def test_scale_up_is_bounded_per_tick_and_counts_opening_sessions() -> None:
    config = policy(max_opens_per_tick=3)
    first = decide(one_queue(QueueDepth(7, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (first.target, first.open) == (7, 3)
    assert "opening 3 now (max_opens_per_tick)" in first.reason
    # The three requested are still opening: only the rest is requested, never twice.
    second = decide(one_queue(QueueDepth(7, 0)), Supply(0, 3), config, 1.0, first.state)
    assert second.open == 3
    third = decide(one_queue(QueueDepth(7, 0)), Supply(2, 4), config, 2.0, second.state)
    assert third.open == 1
    steady = decide(one_queue(QueueDepth(7, 0)), Supply(5, 2), config, 3.0, third.state)
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
    few = decide(one_queue(QueueDepth(1, 0)), Supply(open=3, opening=2), config, 0.0, PolicyState())
    assert (few.target, few.cancel, few.close) == (1, 2, 2)
    some = decide(one_queue(QueueDepth(3, 0)), Supply(open=3, opening=2), config, 0.0, PolicyState())
    assert (some.cancel, some.close) == (2, 0)


def test_a_failed_read_holds_the_count_then_falls_back() -> None:
    config = policy(error_hold=60, fallback_sessions=1)
    ok = decide(one_queue(QueueDepth(3, 0)), Supply(0, 0), config, 100.0, PolicyState())
    supply = Supply(3, 0)
    held = decide(one_queue(None), supply, config, 110.0, ok.state)
    assert (held.target, held.open, held.cancel, held.close) == (3, 0, 0, 0)
    assert held.reason == "read failed: holding 3, fallback to 1 in 50s"
    still = decide(one_queue(None), supply, config, 159.9, held.state)
    assert (still.target, still.close) == (3, 0)
    # error_hold counts from the last good read (t=100), not from the first failure (t=110).
    fallback = decide(one_queue(None), supply, config, 160.0, still.state)
    assert (fallback.target, fallback.close) == (1, 2)
    assert fallback.reason == "read failed for 60s: fallback to 1"


def test_without_a_good_read_error_hold_counts_from_the_first_failure() -> None:
    config = policy(error_hold=30, fallback_sessions=2, min_sessions=0)
    first = decide(one_queue(None), Supply(0, 0), config, 1000.0, PolicyState())
    assert (first.target, first.open) == (0, 0)
    assert first.state.failing_since == 1000.0
    later = decide(one_queue(None), Supply(0, 0), config, 1029.0, first.state)
    assert later.target == 0
    fallback = decide(one_queue(None), Supply(0, 0), config, 1030.0, later.state)
    assert (fallback.target, fallback.open) == (2, 2)


def test_without_fallback_a_failed_read_holds_forever() -> None:
    config = policy(error_hold=5)
    ok = decide(one_queue(QueueDepth(4, 0)), Supply(0, 0), config, 0.0, PolicyState())
    held = decide(one_queue(None), Supply(4, 0), config, 10_000.0, ok.state)
    assert (held.target, held.close, held.cancel) == (4, 0, 0)
    assert held.reason == "read failed: holding 4 (no fallback_sessions)"


def test_a_good_read_after_an_outage_waits_the_delay_before_closing() -> None:
    config = policy(scale_down_delay=10, error_hold=60)
    ok = decide(one_queue(QueueDepth(4, 0)), Supply(0, 0), config, 0.0, PolicyState())
    outage = decide(one_queue(None), Supply(4, 0), config, 30.0, ok.state)
    back = decide(one_queue(QueueDepth(0, 0)), Supply(4, 0), config, 31.0, outage.state)
    assert (back.target, back.close) == (4, 0)
    assert back.state.failing_since is None and back.state.last_ok_at == 31.0
    later = decide(one_queue(QueueDepth(0, 0)), Supply(4, 0), config, 40.0, back.state)
    assert (later.target, later.close) == (0, 4)


def test_the_budget_caps_the_target_and_wins_over_min_sessions() -> None:
    config = policy(min_sessions=5, max_sessions=20, max_cost_per_hour=10.0, price_per_session_hour=3.0)
    decision = decide(one_queue(QueueDepth(50, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (decision.target, decision.open) == (3, 3)
    assert "(budget cap 3)" in decision.reason
    idle = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert idle.target == 3


def test_budget_cap_is_exact_for_decimal_prices() -> None:
    assert budget_cap(policy(max_cost_per_hour=0.3, price_per_session_hour=0.1)) == 3
    assert budget_cap(policy(max_cost_per_hour=0.29, price_per_session_hour=0.1)) == 2
    assert budget_cap(policy(max_cost_per_hour=0.05, price_per_session_hour=0.1)) == 0
    assert budget_cap(policy()) is None


def test_a_lowered_cap_closes_the_excess_without_waiting() -> None:
    wide = policy(max_sessions=10, scale_down_delay=600)
    first = decide(one_queue(QueueDepth(10, 0)), Supply(0, 0), wide, 0.0, PolicyState())
    narrow = policy(max_sessions=4, scale_down_delay=600)
    second = decide(one_queue(QueueDepth(10, 0)), Supply(8, 2), narrow, 1.0, first.state)
    assert (second.target, second.cancel, second.close) == (4, 2, 4)


def test_paused_freezes_the_count() -> None:
    config = policy()
    for depth, supply in [
        (QueueDepth(50, 0), Supply(1, 1)),
        (QueueDepth(0, 0), Supply(7, 0)),
        (None, Supply(2, 0)),
    ]:
        decision = decide(one_queue(depth), supply, config, 0.0, PolicyState(), paused=True)
        assert (decision.target, decision.open, decision.cancel, decision.close) == (supply.total, 0, 0, 0)
        assert decision.reason == "paused"


def test_the_window_stays_small_however_often_it_ticks() -> None:
    config = policy(max_sessions=5, scale_down_delay=3600)
    state, now = PolicyState(), 0.0
    for tick in range(5000):
        work = 5 - (tick // 1000)  # a staircase down: each step stays in the window
        state = decide(one_queue(QueueDepth(work, 0)), Supply(5, 0), config, now, state).state
        now += 0.05
    assert [value for _, value in state.window] == [5, 4, 3, 2, 1]


def test_a_clock_stepping_back_holds_at_most_one_delay() -> None:
    config = policy(scale_down_delay=10)
    high = decide(one_queue(QueueDepth(5, 0)), Supply(0, 0), config, 10_000.0, PolicyState())
    # The wall clock steps back an hour: the old high point holds 10 s from now, not an hour.
    stepped = decide(one_queue(QueueDepth(0, 0)), Supply(5, 0), config, 6_400.0, high.state)
    assert (stepped.target, stepped.close) == (5, 0)
    later = decide(one_queue(QueueDepth(0, 0)), Supply(5, 0), config, 6_410.0, stepped.state)
    assert (later.target, later.close) == (0, 5)


def test_decide_is_deterministic() -> None:
    config = policy(max_opens_per_tick=2)
    args = (one_queue(QueueDepth(9, 1)), Supply(1, 1), config, 5.0, PolicyState(window=((1.0, 4),)))
    assert decide(*args) == decide(*args)


# ---- advise mode ----------------------------------------------------------------------------


def test_advise_mode_decides_the_same_steps_but_does_not_act() -> None:
    state = PolicyState(window=((0.0, 6),))
    acting = decide(one_queue(QueueDepth(2, 1)), Supply(4, 1), policy(), 5.0, state)
    advising = decide(one_queue(QueueDepth(2, 1)), Supply(4, 1), policy(), 5.0, state, act=False)
    assert acting.act and not advising.act
    assert (advising.target, advising.open, advising.cancel, advising.close, advising.reason) == (
        acting.target, acting.open, acting.cancel, acting.close, acting.reason
    )
    assert advising.state == acting.state
    assert advising.as_log()["mode"] == "advise" and acting.as_log()["mode"] == "act"


# ---- warm buffer ------------------------------------------------------------------------------


def test_the_buffer_adds_sessions_while_there_is_work_and_goes_at_idle() -> None:
    config = policy(buffer_sessions=2, scale_down_delay=10)
    reads = [(0.0, QueueDepth(3, 0)), (1.0, QueueDepth(0, 1)), (5.0, QueueDepth(0, 0))]
    reads += [(10.9, QueueDepth(0, 0)), (11.0, QueueDepth(0, 0))]
    decisions = run(config, reads, Supply(0, 0))
    assert [d.target for d in decisions] == [5, 5, 5, 3, 0]
    assert dict(decisions[0].terms) == {"work": 3, "buffer": 2}
    assert dict(decisions[2].terms) == {"work": 0}


def test_the_buffer_stays_within_the_caps_and_does_not_wake_below_activation() -> None:
    capped = policy(buffer_sessions=2, max_sessions=4)
    assert decide(one_queue(QueueDepth(3, 0)), Supply(0, 0), capped, 0.0, PolicyState()).target == 4
    asleep = policy(buffer_sessions=2, activation=2)
    assert decide(one_queue(QueueDepth(1, 0)), Supply(0, 0), asleep, 0.0, PolicyState()).target == 0


# ---- rate-aware pre-warming ---------------------------------------------------------------------


def test_prewarming_covers_the_arrival_rate_times_the_unit_time() -> None:
    assert policy_rate.prewarm(2.0, policy(seconds_per_unit=3)) == 6
    assert policy_rate.prewarm(2.0, policy(seconds_per_unit=3, work_per_session=4)) == 2


def test_prewarming_keeps_the_sessions_of_the_arrival_rate_through_a_dip() -> None:
    config = policy(seconds_per_unit=10)
    # From a fresh state the rate is the one that keeps 6 units in flight: 0.6 units/s.
    first = decide(one_queue(QueueDepth(0, 6)), Supply(6, 0), config, 0.0, PolicyState())
    dip = decide(one_queue(QueueDepth(0, 3)), Supply(6, 0), config, 1.0, first.state)
    # 3 fewer in flight a second later, 0.45 expected to complete: -2.55 arrivals, weighed
    # 1 - e^(-1/60) against the average (rate_window 60 s).
    rate = 0.6 + (1 - math.exp(-1 / 60)) * (-3 + 0.45 - 0.6)
    assert dip.terms == (("work", 3), ("rate", pytest.approx(rate)), ("prewarm", 6), ("lead", 0))
    assert (dip.target, dip.close) == (6, 0)
    assert f"(pre-warm for {rate:.3g} units/s)" in dip.reason


def test_a_lone_unit_asks_for_one_session_however_long_units_take() -> None:
    for seconds in (30, 300, 3600):
        config = policy(seconds_per_unit=seconds)  # rate_window 60 s, shorter than most units
        state = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 0.0, PolicyState()).state
        targets = set()
        for now, depth in [(1.0, QueueDepth(1, 0)), *((t + 2.0, QueueDepth(0, 1)) for t in range(seconds))]:
            decision = decide(one_queue(depth), Supply(1, 0), config, now, state)
            state = decision.state
            targets.add(decision.target)
        assert targets == {1}, f"seconds_per_unit {seconds}"


def test_prewarm_safety_adds_spare_sessions_for_the_square_root_of_the_load() -> None:
    # 2 units/s x 3 s = a load of 6 units; 6 + sqrt(6) = 8.45 -> 9 sessions, 3 of them spare.
    assert policy_rate.prewarm(2.0, policy(seconds_per_unit=3, prewarm_safety=1)) == 9
    # One unit in 4 s at 1 s a unit is a load of 0.25: 0.25 + 0.5 asks for no spare session.
    assert policy_rate.prewarm(0.25, policy(seconds_per_unit=1, prewarm_safety=1)) == 1
    # In decide(): 6 units in flight, from a fresh state a load of 6.
    config = policy(seconds_per_unit=60, prewarm_safety=1)
    decision = decide(one_queue(QueueDepth(0, 6)), Supply(6, 0), config, 0.0, PolicyState())
    assert (dict(decision.terms)["prewarm"], decision.target, decision.open) == (9, 9, 3)


def test_in_a_steady_state_prewarming_asks_for_the_in_flight_work() -> None:
    # Depth unchanged over 2 s with 4 in flight at 4 s a unit: 2 completed, so 2 arrived.
    config = policy(seconds_per_unit=4, rate_window=0.001, work_per_session=2)
    first = decide(one_queue(QueueDepth(0, 4)), Supply(2, 0), config, 0.0, PolicyState())
    second = decide(one_queue(QueueDepth(0, 4)), Supply(2, 0), config, 2.0, first.state)
    assert dict(second.terms)["rate"] == pytest.approx(1.0)
    assert (dict(second.terms)["prewarm"], second.target) == (2, 2)


def test_the_rate_is_an_average_over_rate_window() -> None:
    config = policy(lead_time=10, rate_window=10)
    first = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 0.0, PolicyState())
    second = decide(one_queue(QueueDepth(5, 0)), Supply(0, 0), config, 10.0, first.state)
    # One interval as long as the window weighs 1 - 1/e; its rate is 0.5 units/s.
    rate = 0.5 * (1 - math.exp(-1))
    assert dict(second.terms)["rate"] == pytest.approx(rate)
    assert second.target == math.ceil(5 + rate * 10) == 9


def test_lead_time_opens_for_the_work_arriving_while_sessions_start() -> None:
    config = policy(lead_time=5, rate_window=0.001)
    first = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 0.0, PolicyState())
    second = decide(one_queue(QueueDepth(2, 0)), Supply(0, 0), config, 2.0, first.state)
    assert dict(second.terms) == {"work": 2, "rate": pytest.approx(1.0), "prewarm": 0, "lead": 7}
    assert second.target == 7


def test_without_seconds_per_unit_a_draining_queue_is_no_negative_rate() -> None:
    config = policy(lead_time=5, rate_window=0.001, scale_down_delay=0)
    first = decide(one_queue(QueueDepth(9, 0)), Supply(9, 0), config, 0.0, PolicyState())
    second = decide(one_queue(QueueDepth(3, 0)), Supply(9, 0), config, 1.0, first.state)
    assert dict(second.terms)["rate"] == 0.0
    assert (second.target, second.close) == (3, 6)


def test_prewarming_stops_at_idle_so_the_scaler_reaches_zero() -> None:
    config = policy(seconds_per_unit=60, rate_window=600, scale_down_delay=5)
    state, supply = PolicyState(), Supply(0, 0)
    reads = [(0.0, QueueDepth(0, 0)), (1.0, QueueDepth(0, 10)), (30.0, QueueDepth(0, 10))]
    for now, depth in [*reads, (31.0, QueueDepth(0, 0))]:
        decision = decide(one_queue(depth), supply, config, now, state)
        state, supply = decision.state, Supply(after(supply, decision).total, 0)
    assert state.rate is not None and state.rate.rate > 0
    idle = decide(one_queue(QueueDepth(0, 0)), supply, config, 36.0, state)
    assert (idle.target, idle.close) == (0, supply.open)


def test_a_clock_stepping_back_restarts_the_rate_interval() -> None:
    config = policy(seconds_per_unit=10, rate_window=0.001)
    first = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, 100.0, PolicyState())
    second = decide(one_queue(QueueDepth(4, 0)), Supply(0, 0), config, 101.0, first.state)
    stepped = decide(one_queue(QueueDepth(50, 0)), Supply(4, 0), config, 50.0, second.state)
    assert stepped.state.rate is not None
    assert stepped.state.rate.rate == second.state.rate.rate and stepped.state.rate.at == 50.0


# ---- drain time ---------------------------------------------------------------------------------


def test_drain_time_shares_a_backlog_among_fewer_sessions() -> None:
    # 40 units at 60 s each, each session taking on 5 s more: ceil(40 x 60 / 65) = 37 sessions.
    config = policy(seconds_per_unit=60, drain_time=5, max_sessions=50)
    decision = decide(one_queue(QueueDepth(40, 0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (decision.target, decision.open) == (37, 20)  # max_opens_per_tick 20
    assert dict(decision.terms) == {"work": 40, "drain": 37, "rate": 0.0, "prewarm": 0, "lead": 0}
    assert "(backlog shared: drain_time 5s)" in decision.reason


def test_drain_time_leaves_small_backlogs_one_session_per_unit() -> None:
    config = policy(seconds_per_unit=60, drain_time=5)
    targets = [decide(one_queue(QueueDepth(n, 0)), Supply(0, 0), config, 0.0, PolicyState()).target for n in (1, 12, 13)]
    assert targets == [1, 12, 12]  # 12 x 60 / 65 = 11.08 rounds up; 13 x 60 / 65 = 12
    # Exact arithmetic: 6 x 0.1 / 0.2 is 3 sessions (float division gives 3.0000000000000004).
    fine = policy(seconds_per_unit=0.1, drain_time=0.1)
    assert decide(one_queue(QueueDepth(6, 0)), Supply(0, 0), fine, 0.0, PolicyState()).target == 3


def test_drain_time_never_leaves_in_flight_units_without_sessions() -> None:
    config = policy(seconds_per_unit=60, drain_time=60, max_sessions=50)
    # Half of 40 units would be 20 sessions, but 30 units are running on theirs.
    assert decide(one_queue(QueueDepth(10, 30)), Supply(30, 0), config, 0.0, PolicyState()).target == 30
    paired = policy(seconds_per_unit=60, drain_time=60, max_sessions=50, work_per_session=2)
    assert decide(one_queue(QueueDepth(10, 30)), Supply(15, 0), paired, 0.0, PolicyState()).target == 15


def test_drain_time_opens_nothing_more_while_a_shared_backlog_runs() -> None:
    config = policy(seconds_per_unit=60, drain_time=60, scale_down_delay=0)
    # 8 units, 4 sessions; once 4 run and 4 wait, the 4 sessions stay and nothing more opens.
    first = decide(one_queue(QueueDepth(8, 0)), Supply(0, 0), config, 0.0, PolicyState())
    running = decide(one_queue(QueueDepth(4, 4)), Supply(4, 0), config, 60.0, first.state)
    assert (first.target, running.target, running.open, running.close) == (4, 4, 0, 0)


# ---- several queues -----------------------------------------------------------------------------


def test_weights_count_each_source_units_that_many_times() -> None:
    sources = [SourceDepth("urgent", QueueDepth(2, 1), weight=2), SourceDepth("batch", QueueDepth(2, 0))]
    decision = decide(sources, Supply(0, 0), policy(), 0.0, PolicyState())
    assert decision.target == 8
    assert decision.reason == "scale up: 5 units waiting+in flight -> 8 sessions"


def test_a_light_weight_never_leaves_in_flight_work_without_sessions() -> None:
    sources = [SourceDepth("batch", QueueDepth(2, 4), weight=0.5)]
    decision = decide(sources, Supply(4, 0), policy(scale_down_delay=0), 0.0, PolicyState())
    assert (decision.target, decision.close) == (4, 0)


def test_a_reserve_holds_sessions_of_the_cap_back_for_its_source() -> None:
    config = policy(max_sessions=10)

    def target(urgent: int, batch: int, batch_in_flight: int = 0) -> Decision:
        sources = [
            SourceDepth("urgent", QueueDepth(urgent, 0), reserve=3),
            SourceDepth("batch", QueueDepth(batch, batch_in_flight)),
        ]
        return decide(sources, Supply(0, 0), config, 0.0, PolicyState())

    idle_urgent = target(0, 20)
    assert idle_urgent.target == 7
    assert "(reserve: 3 sessions held back)" in idle_urgent.reason
    assert dict(idle_urgent.terms)["held_back"] == 3
    assert target(1, 20).target == 8
    assert target(5, 20).target == 10
    assert target(2, 0).target == 2  # a reserve never limits its own source
    assert target(0, 3).target == 3  # nor anything below the cap
    # Reserves stop new sessions only: running work keeps its sessions.
    assert target(0, 0, batch_in_flight=9).target == 9


def test_a_reserve_is_held_back_from_the_budget_too() -> None:
    config = policy(max_cost_per_hour=5.0, price_per_session_hour=1.0)
    sources = [SourceDepth("urgent", QueueDepth(0, 0), reserve=2), SourceDepth("batch", QueueDepth(9, 0))]
    assert decide(sources, Supply(0, 0), config, 0.0, PolicyState()).target == 3


def test_an_unreadable_source_stops_scaling_down_but_not_up() -> None:
    config = policy(scale_down_delay=0)
    broken = SourceDepth("b", None)
    held = decide([SourceDepth("a", QueueDepth(1, 0)), broken], Supply(5, 0), config, 0.0, PolicyState())
    assert (held.target, held.close) == (5, 0)
    assert "not scaling down: b unreadable" in held.reason
    up = decide([SourceDepth("a", QueueDepth(8, 0)), broken], Supply(5, 0), config, 1.0, held.state)
    assert (up.target, up.open) == (8, 3)
    assert up.state.failing_since is None


def test_every_source_unreadable_is_a_failed_read() -> None:
    config = policy(error_hold=0, fallback_sessions=1)
    sources = [SourceDepth("a", None), SourceDepth("b", None)]
    decision = decide(sources, Supply(4, 0), config, 0.0, PolicyState())
    assert (decision.target, decision.close) == (1, 3)
    assert decision.reason.startswith("read failed")
    assert decision.as_log()["depth"] is None


# ---- queue age ------------------------------------------------------------------------------------


def test_old_waiting_work_gets_sessions_beyond_the_open_ones() -> None:
    config = policy(max_wait=60)
    # 4 open sessions and 3 units in flight would be enough by depth; the oldest unit says not.
    stuck = decide(one_queue(QueueDepth(2, 3, oldest_age=90.0)), Supply(4, 0), config, 0.0, PolicyState())
    assert (stuck.target, stuck.open) == (6, 2)
    assert dict(stuck.terms)["age"] == 6
    assert "oldest waited 90s > max_wait 60s" in stuck.reason
    # The sessions requested count: no second request while they start.
    starting = decide(one_queue(QueueDepth(2, 3, oldest_age=91.0)), Supply(4, 2), config, 1.0, stuck.state)
    assert starting.open == 0
    fresh = decide(one_queue(QueueDepth(2, 3, oldest_age=30.0)), Supply(4, 0), config, 0.0, PolicyState())
    unknown = decide(one_queue(QueueDepth(2, 3)), Supply(4, 0), config, 0.0, PolicyState())
    assert fresh.target == unknown.target == 5
    # While old work waits, nothing opening is cancelled.
    kept = decide(one_queue(QueueDepth(1, 0, oldest_age=61.0)), Supply(0, 3), config, 0.0, PolicyState())
    assert (kept.target, kept.cancel) == (3, 0)


def test_old_work_wakes_a_scaler_below_activation() -> None:
    config = policy(activation=5, max_wait=60)
    decision = decide(one_queue(QueueDepth(1, 0, oldest_age=61.0)), Supply(0, 0), config, 0.0, PolicyState())
    assert (decision.target, decision.open) == (1, 1)


# ---- boot grace ---------------------------------------------------------------------------------------


def test_boot_grace_protects_young_sessions_from_closing() -> None:
    config = policy(boot_grace=60, scale_down_delay=0)
    supply = Supply(open=3, opening=1, ages=(5.0, 500.0, 59.9))
    decision = decide(one_queue(QueueDepth(0, 0)), supply, config, 0.0, PolicyState())
    assert (decision.target, decision.cancel, decision.close) == (0, 1, 1)
    assert decision.close_min_age == 60
    assert decision.reason.endswith("(boot grace: 2 sessions too young to close)")
    unknown = decide(one_queue(QueueDepth(0, 0)), Supply(3, 1), config, 0.0, PolicyState())
    assert unknown.close == 3


def test_supply_ages_must_match_the_open_sessions() -> None:
    with pytest.raises(ValueError, match="ages: expected one per open session"):
        Supply(open=2, opening=0, ages=(1.0,))


# ---- the decision log -----------------------------------------------------------------------------


def test_a_decision_logs_its_inputs_steps_and_reason() -> None:
    config = policy(buffer_sessions=1)
    decision = decide(one_queue(QueueDepth(3, 1, oldest_age=2.5)), Supply(1, 1), config, 7.0, PolicyState())
    assert decision.as_log() == {
        "t": 7.0,
        "depth": {"waiting": 3, "in_flight": 1, "total": 4, "oldest_age": 2.5},
        "sources": [],
        "sessions": {"open": 1, "opening": 1},
        "target": 5,
        "to_open": 3,
        "to_cancel": 0,
        "to_close": 0,
        "reason": "scale up: 4 units waiting+in flight -> 5 sessions",
        "mode": "act",
        "terms": {"work": 4, "buffer": 1},
    }


def test_a_decision_log_lists_each_source() -> None:
    sources = [SourceDepth("a", QueueDepth(1, 0), weight=2.0, reserve=1), SourceDepth("b", None)]
    entry = decide(sources, Supply(0, 0), policy(), 0.0, PolicyState()).as_log()
    assert entry["depth"] == {"waiting": 1, "in_flight": 0, "total": 1, "oldest_age": None}
    assert entry["sources"] == [
        {"name": "a", "weight": 2.0, "reserve": 1,
         "waiting": 1, "in_flight": 0, "total": 1, "oldest_age": None},
        {"name": "b", "weight": 1.0, "reserve": 0},
    ]


# ---- the issue-8 settings ---------------------------------------------------------------------------


def test_every_new_setting_is_off_by_default() -> None:
    config = policy()
    assert (config.mode, config.buffer_sessions, config.seconds_per_unit, config.lead_time) == ("act", 0, None, 0)
    assert (config.max_wait, config.boot_grace, config.estimates_rate) == (None, 0, False)
    assert config.drain_time is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rate_window": "5m"}, "rate_window: only used with seconds_per_unit or lead_time"),
        ({"mode": "dry"}, "mode"),
        ({"seconds_per_unit": 0}, "seconds_per_unit"),
        ({"max_wait": "0s"}, "max_wait"),
        ({"buffer_sessions": -1}, "buffer_sessions"),
        ({"lead_time": "-1s"}, "lead_time"),
        ({"drain_time": "5s"}, "drain_time: needs seconds_per_unit"),
        ({"seconds_per_unit": 60, "drain_time": 0}, "drain_time"),
        ({"prewarm_safety": 0.5}, "prewarm_safety: needs seconds_per_unit"),
        ({"seconds_per_unit": 60, "prewarm_safety": -1}, "prewarm_safety"),
    ],
)
def test_bad_settings_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        policy(**fields)


def test_durations_are_accepted_with_units() -> None:
    config = policy(seconds_per_unit="1m", lead_time="30s", rate_window="10m", max_wait="2m", boot_grace="90s")
    assert (config.seconds_per_unit, config.lead_time, config.rate_window) == (60, 30, 600)
    assert policy(seconds_per_unit="1m", drain_time="5s").drain_time == 5
    assert (config.max_wait, config.boot_grace, config.estimates_rate) == (120, 90, True)


def test_close_order_is_the_youngest_first_past_boot_grace() -> None:
    opened = {"oldest": 0.0, "old": 40.0, "young": 90.0, "youngest": 99.0}  # oldest to youngest
    decision = Decision(target=1, open=0, cancel=0, close=2, reason="", state=PolicyState(), close_min_age=5.0)
    assert close_order(opened, opened.__getitem__, decision, now=100.0) == ["young", "old"]
    assert close_order(opened, opened.__getitem__, replace(decision, close=9), now=100.0) == ["young", "old", "oldest"]
    assert close_order(opened, opened.__getitem__, replace(decision, close_min_age=0.0), now=100.0) == ["youngest", "young"]
