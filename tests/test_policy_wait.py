"""The wait target: measured start-ups, late units from depth readings, the learned price, the
spares it buys, and the recurring-load forecast (controller/policy_wait.py, policy_startup.py,
policy_season.py), with hypothesis properties of decide() under a wait target."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller import policy_season, policy_wait
from controller.config import PolicyConfig, WaitTarget
from controller.policy import Learned, PolicyState, Supply, decide, one_queue
from controller.policy_startup import StartupState, observe
from controller.policy_wait import WaitState
from controller.sources import QueueDepth

P95_10 = WaitTarget(quantile=0.95, seconds=10)
DAY = 86400.0


# ---- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", [{"p95": "10s"}, "p95 10s", "p95: 10s", {"quantile": 0.95, "seconds": 10}])
def test_a_wait_target_is_written_as_a_quantile_and_a_duration(form: object) -> None:
    assert PolicyConfig(wait_target=form).wait_target == P95_10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"wait_target": "p95"}, "expected a quantile and a duration, e.g. {p95: 15s}"),
        ({"wait_target": {"x95": "10s"}}, "got key 'x95'"),
        ({"wait_target": {"p0": "10s"}}, "p0: the percentile must be between 0 and 100"),
        ({"wait_target": "p95 0s"}, "seconds"),
        ({"forecast_period": "168h"}, "forecast_period: only used with wait_target"),
        ({"wait_window": "2h"}, "wait_window: only used with wait_target"),
        ({"wait_target": "p95 10s", "forecast_step": 7}, "forecast_step: must divide forecast_period (86400s)"),
        ({"wait_target": "p95 10s", "forecast_max_cost_per_hour": 3}, "price_per_session_hour: required"),
    ],
)
def test_wait_target_settings_say_what_is_wrong(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{")):
        PolicyConfig(**fields)


# ---- measured start-ups ---------------------------------------------------------------------------


def test_startups_split_into_warm_grants_resumes_and_cold_starts() -> None:
    state = observe(StartupState(), [0.2, 31, 29, 30, 200, 185, 0.5, 28])
    assert state.measured == 8 and 0 < state.warm_share < 0.1
    assert 28 < state.resume < 31 and 185 < state.cold < 240
    assert 0.2 < state.cold_share < 0.6
    resumes_only = observe(state, [30.0] * 60)
    assert resumes_only.cold_share < 0.01 and resumes_only.lead < 40  # the lead follows the endpoint


def test_startup_estimates_follow_an_endpoint_slower_than_the_priors() -> None:
    state = observe(StartupState(), [90.0, 600.0] * 30)
    assert state.resume == pytest.approx(90, rel=0.05) and state.cold == pytest.approx(600, rel=0.05)
    assert state.lead >= 600


# ---- late units from depth readings ---------------------------------------------------------------


def late_units(readings: list[tuple[float, int, int]], oldest: list[float | None] | None = None) -> float:
    """How many units the readings show as newly late, summed (the EWMA's input)."""
    state, total = WaitState(), 0.0
    for index, (at, waiting, in_flight) in enumerate(readings):
        before = state
        age = None if oldest is None else oldest[index]
        state, _ = policy_wait.update(state, at, waiting, in_flight, age, P95_10, 3600, 1.0, startup=0.0)
        if before.at is not None:
            dt = at - before.at
            rate = -math.expm1(-dt / 3600)
            total += (state.late - before.late * (1 - rate)) / rate * dt
    return total


def test_units_still_waiting_past_the_target_are_counted_late_once() -> None:
    # 3 units arrive at t=1 and wait; one starts at t=6, the other two wait until t=20.
    readings = [(0.0, 0, 0), (1.0, 3, 0)] + [(t, 3 if t < 6 else 2, 0 if t < 6 else 1) for t in range(2, 20)]
    readings += [(20.0, 0, 3), (21.0, 0, 3)]
    assert late_units(readings) == pytest.approx(2)


def test_units_served_within_the_target_are_not_late() -> None:
    readings = [(0.0, 0, 0), (1.0, 3, 0)] + [(float(t), 3, 0) for t in range(2, 8)] + [(8.0, 0, 3), (30.0, 0, 3)]
    assert late_units(readings) == 0


def test_a_source_that_reports_a_young_oldest_unit_has_none_late() -> None:
    readings = [(0.0, 0, 0), (1.0, 3, 0)] + [(float(t), 3, 0) for t in range(2, 14)]
    assert late_units(readings) == pytest.approx(3)
    assert late_units(readings, [None] * 2 + [0.5] * 12) == 0  # the queue says its units are fresh


def test_the_price_rises_with_late_units_and_falls_when_all_are_on_time() -> None:
    def stream(state: WaitState, start: int, end: int, wait: int) -> WaitState:
        """A unit at every even second, waiting `wait` (odd) seconds, then 2 s in flight: it
        completes at an odd second, so no arrival hides a completion in the depth readings."""
        for t in range(start, end):
            arrivals = range(max(0, t - wait - 3) // 2 * 2, t + 1, 2)
            waiting = sum(a <= t < a + wait for a in arrivals)
            in_flight = sum(a + wait <= t < a + wait + 2 for a in arrivals)
            state, _ = policy_wait.update(state, float(t), waiting, in_flight, None, P95_10, 600, 1.0, startup=0.0)
        return state

    late = stream(WaitState(), 0, 1200, wait=15)
    assert late.price > policy_wait.PRICE_START and late.late_share > 0.05
    on_time = stream(late, 1200, 2400, wait=1)
    assert on_time.price < late.price
    quiet = on_time
    for t in range(2400, 3600):  # nothing arrives: nothing to learn from
        quiet, _ = policy_wait.update(quiet, float(t), 0, 0, None, P95_10, 600, 1.0, startup=0.0)
    assert quiet.price == on_time.price


def test_a_late_unit_of_a_quiet_hour_moves_the_price_as_little_as_one_of_a_busy_hour() -> None:
    # An hour with a unit a minute, on a day that averages ten a minute: the price is one for the
    # whole day's quantile, so its step is sized to the day's units, not to the quiet hour's.
    def after_a_late_unit(daily: float) -> float:
        state = WaitState(at=0.0, since=-86400.0, total=1.0, seen=1 / 60, daily=daily, recent=((-30.0, 1.0),))
        state, _ = policy_wait.update(state, 1.0, 1, 0, None, P95_10, 3600, 1.0, startup=0.0)
        return math.log(state.price / policy_wait.PRICE_START)

    quiet_day, busy_day = after_a_late_unit(1 / 60), after_a_late_unit(10 / 60)
    assert quiet_day > 5 * busy_day > 0  # ten times the units: a tenth of the step


def test_units_late_within_a_startup_of_the_first_unit_do_not_raise_the_price() -> None:
    # A unit every 2 s from `traffic` on, each waiting 15 s (late for a 10 s target): before the
    # first unit there was nothing to size a pool from, and one sized from it is ready a start-up
    # later, so no price could have saved the units before then.
    def price_after(state: WaitState, traffic: int, end: int, startup: float) -> float:
        for t in range(0, end):
            arrivals = range(traffic, t + 1, 2)
            waiting = sum(a <= t < a + 15 for a in arrivals)
            in_flight = sum(a + 15 <= t < a + 17 for a in arrivals)
            state, _ = policy_wait.update(state, float(t), waiting, in_flight, None, P95_10, 600, 1.0, startup)
        return state.price

    assert price_after(WaitState(), 2, 150, startup=240.0) < policy_wait.PRICE_START  # only units on time counted
    assert price_after(WaitState(), 2, 150, startup=0.0) > policy_wait.PRICE_START
    assert price_after(WaitState(), 2, 400, startup=240.0) > policy_wait.PRICE_START  # later ones count
    # A scaler started an hour before its traffic: the same.
    assert price_after(WaitState(), 3600, 3750, startup=240.0) < policy_wait.PRICE_START
    # After a restart the learned state goes on: late units count at once.
    restored = WaitState.from_json(WaitState(seen=0.5, daily=0.5).as_json())
    assert price_after(restored, 2, 150, startup=240.0) > policy_wait.PRICE_START


def test_a_day_of_few_units_aims_at_a_lower_late_share_than_a_busy_one() -> None:
    # One late unit in 25 (4%, under the 5% a p95 allows): with a few hundred units a day that is
    # too close to 5% for the day's p95 to hold, with ten thousand it leaves room.
    def price_step(per_day: float) -> float:
        daily = per_day / 86400
        state = WaitState(at=0.0, since=-30 * 86400.0, total=25.0, seen=daily, daily=daily, recent=((-30.0, 25.0),))
        state, arrived = policy_wait.update(state, 1.0, 26, 24, None, P95_10, 3600, 1.0, startup=0.0)
        assert arrived == 25 and state.late > 0
        return state.price / policy_wait.PRICE_START

    assert price_step(360) > 1 > price_step(10_000)


def test_a_late_unit_raises_the_price_at_most_as_much_as_a_window_on_time_lowers_it() -> None:
    # A day of 360 units aims at under 2% late: a late unit is worth 50 and more units on time.
    # Taken whole from a window's step, its rise (about 60,000 x) was cut off at PRICE_MAX, and a
    # late share over the aim was what was left of the control.
    daily = 360 / 86400
    state = WaitState(at=0.0, since=-30 * 86400.0, total=1.0, seen=daily, daily=daily, recent=((-30.0, 1.0),))
    after, _ = policy_wait.update(state, 1.0, 1, 0, None, P95_10, 3600, 1.0, startup=0.0)
    assert after.aim is not None and after.aim < 0.02
    assert 1 < after.price / state.price <= policy_wait.STEP**2 * 1.0001


def test_late_units_no_pool_could_have_saved_spend_the_days_allowance() -> None:
    # 5 units late at the start of a day of 3,600: the rest of the day may have 5 fewer late.
    def aim_after(unsaved: float) -> float:
        daily = 3600 / 86400
        state = WaitState(at=0.0, since=-30 * 86400.0, total=0.0, seen=daily, daily=daily, unsaved=unsaved)
        state, _ = policy_wait.update(state, 1.0, 1, 0, None, P95_10, 3600, 1.0, startup=0.0)
        assert state.aim is not None
        return state.aim

    assert aim_after(0.0) - aim_after(5 / 86400) == pytest.approx(5 / 3600, rel=0.01)


def test_after_a_restart_a_late_unit_moves_the_price_as_much_as_before_it() -> None:
    # The restored averages are whole: read as a fresh hour's, they made a late unit's step
    # about 29 times smaller for hours after every restart.
    running = WaitState(at=0.0, since=-30 * 86400.0, total=1.0, seen=1 / 60, daily=1 / 60, recent=((-30.0, 1.0),))
    restored, _ = policy_wait.update(WaitState.from_json(running.as_json()), 0.0, 1, 0, None, P95_10, 3600, 1.0, 0.0)
    restored = replace(restored, recent=running.recent)  # the late unit, as the running one saw it

    def step(state: WaitState) -> float:
        after, _ = policy_wait.update(state, 1.0, 1, 0, None, P95_10, 3600, 1.0, startup=0.0)
        return math.log(after.price / state.price)

    assert step(running) > 0 and step(restored) == pytest.approx(step(running), rel=0.01)


def test_the_pool_grows_with_the_price_and_the_rate_and_is_empty_without_arrivals() -> None:
    startup = StartupState()

    def count(rate: float, price: float) -> int:
        return policy_wait.pool(WaitState(rate=rate, price=price), P95_10, startup, 1.0, 100)

    assert count(0.0, 1e5) == 0
    assert count(0.1, 100) <= count(0.1, 1000) <= count(0.1, 10000)
    assert count(0.01, 1000) <= count(0.1, 1000) <= count(1.0, 1000)
    # At a high price the pool holds more than the load (60 units at 1 unit/s of 60 s): spares.
    assert count(1.0, 1e4) > 60
    # A long target needs none: every start-up lands within it.
    assert policy_wait.pool(WaitState(rate=1.0, price=1e5), WaitTarget(quantile=0.95, seconds=3600), startup, 1.0, 100) == 0


def test_the_late_chance_falls_with_each_session_of_the_pool_to_zero() -> None:
    values = [policy_wait.late_chance(0.2, 60, 10, 1, StartupState(), n) for n in range(60)]
    assert values[0] == pytest.approx(1.0) and values[-1] < 1e-6
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_a_unit_that_finds_the_pool_full_waits_a_start_up_however_many_grants_were_warm() -> None:
    # Grants at once are the pool taking back a worker its own unit just released: they do not
    # make a unit that finds no free session any likelier to find a ready worker.
    resumes = observe(StartupState(), [30.0] * 50)
    mostly_warm = observe(resumes, [0.5] * 200)
    assert mostly_warm.warm_share > 0.9
    empty_pool = [policy_wait.late_chance(1 / 240, 30, 10, 1, state, 0) for state in (resumes, mostly_warm)]
    assert empty_pool == [pytest.approx(1.0), pytest.approx(1.0)]


def test_completions_within_the_target_serve_a_unit_that_finds_the_pool_full() -> None:
    # The same load (12 units in the system on average): short units complete within the target
    # often enough that a full pool of them makes a unit late less often than one of long units.
    short = policy_wait.late_chance(1.0, 12, 10, 1, StartupState(), 12)
    long = policy_wait.late_chance(0.05, 240, 10, 1, StartupState(), 12)
    assert short < long / 2


# ---- the recurring-load profile --------------------------------------------------------------------


def feed(profile: policy_season.Profile | None, start: float, end: float, batch_at: float, size: int,
         period: float = 3600, step: float = 10) -> policy_season.Profile | None:  # fmt: skip
    """Readings every second; `size` units arrive at `batch_at` past every period start."""
    t = start
    while t < end:
        arrived = size if size and t % period == batch_at else 0
        profile = policy_season.update(profile, t, arrived, period, step)
        t += 1
    return profile


def test_the_profile_forecasts_a_batch_after_one_period_and_not_before() -> None:
    profile = feed(None, 0, 3000, batch_at=1000, size=30)
    assert policy_season.expected(profile, 4600, 4600, 60) == 0  # not a whole period seen yet
    profile = feed(profile, 3000, 4590, batch_at=1000, size=30)
    assert policy_season.expected(profile, 4600, 4600, 60) == pytest.approx(30)  # bin 4600 = 3600 + 1000
    assert policy_season.expected(profile, 4400, 4530, 60) == 0
    assert policy_season.expected(profile, 4400, 4610, 60) == pytest.approx(30)  # the most over a span


def test_a_forecast_whose_batches_stop_loses_its_weight_within_a_period() -> None:
    profile = feed(None, 0, 4 * 3600, batch_at=1000, size=30)
    assert profile is not None and profile.weight == pytest.approx(1)
    profile = feed(profile, 4 * 3600, 5 * 3600, batch_at=1000, size=0)  # the batch stops
    assert profile is not None and profile.weight < 0.8
    profile = feed(profile, 5 * 3600, 8 * 3600, batch_at=1000, size=0)
    assert policy_season.expected(profile, 8 * 3600 + 1000, 8 * 3600 + 1000, 60) < 5


def test_the_learned_state_survives_json() -> None:
    profile = feed(None, 0, 7200, batch_at=1000, size=30)
    learned = Learned(observe(StartupState(), [31, 180]), WaitState(rate=0.1, price=1234.0, at=5.0), profile)
    again = Learned.from_json(json.loads(json.dumps(learned.as_json())))
    assert again.startup == learned.startup and again.profile == profile and profile is not None
    assert again.wait is not None and (again.wait.price, again.wait.rate, again.wait.at) == (1234.0, 0.1, None)


# ---- decide() with a wait target ---------------------------------------------------------------------


def test_without_a_wait_target_startups_are_measured_but_decide_the_same() -> None:
    config = PolicyConfig(max_sessions=10)
    plain = decide(one_queue(QueueDepth(3, 0)), Supply(0, 0), config, 0.0, PolicyState())
    measured = decide(one_queue(QueueDepth(3, 0)), Supply(0, 0, startups=(31.0,)), config, 0.0, PolicyState())
    assert (plain.target, plain.open, plain.reason) == (measured.target, measured.open, measured.reason)
    assert measured.state.learned.startup.measured == 1 and plain.state.learned == Learned()


def test_late_units_buy_spares_and_none_are_kept_once_the_stream_stops() -> None:
    config = PolicyConfig(max_sessions=50, wait_target="p95 10s", forecast=False)
    state = PolicyState()
    for second in range(3600):  # a unit every 5 s that waits 15 s, then 22 s in flight
        arrivals = range(max(0, second - 40) // 5 * 5, second + 1, 5)
        waiting = sum(a <= second < a + 15 for a in arrivals)
        in_flight = sum(a + 15 <= second < a + 37 for a in arrivals)
        decision = decide(one_queue(QueueDepth(waiting, in_flight)), Supply(waiting + in_flight, 0), config, float(second), state)
        state = decision.state
    assert state.learned.wait is not None and state.learned.wait.late_share > 0.5
    assert dict(decision.terms)["spares"] >= 1 and decision.target > waiting + in_flight
    for second in range(3600, 3600 + 4 * 3600, 10):
        decision = decide(one_queue(QueueDepth(0, 0)), Supply(0, 0), config, float(second), state)
        state = decision.state
    assert decision.target == 0


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[float, int, int]]:
    steps = draw(st.lists(st.tuples(st.floats(0.1, 30), st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=40))
    t, out = 0.0, []
    for dt, waiting, in_flight in steps:
        t += dt
        out.append((t, waiting, in_flight))
    return out


@settings(max_examples=60, deadline=None)
@given(
    history=histories(),
    max_sessions=st.integers(1, 30),
    quantile=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
    seconds=st.sampled_from([1.0, 10.0, 30.0, 300.0]),
    budget=st.none() | st.integers(1, 20),
)
def test_a_wait_target_never_breaks_the_caps_and_never_strands_work(
    history: list[tuple[float, int, int]], max_sessions: int, quantile: float, seconds: float, budget: int | None
) -> None:
    config = PolicyConfig(
        max_sessions=max_sessions, wait_target={"quantile": quantile, "seconds": seconds},
        max_cost_per_hour=budget, price_per_session_hour=1 if budget else None,
    )  # fmt: skip
    upper = min(max_sessions, budget or max_sessions)
    state, supply = PolicyState(), Supply(0, 0)
    for at, waiting, in_flight in history:
        decision = decide(one_queue(QueueDepth(waiting, in_flight)), supply, config, at, state)
        state = decision.state
        assert 0 <= decision.target <= upper
        assert decision.target >= min(upper, waiting + in_flight, supply.total)  # never below the work it has
        assert state.learned.wait is not None and policy_wait.PRICE_MIN <= state.learned.wait.price <= policy_wait.PRICE_MAX
        supply = Supply(decision.target, 0)


@settings(max_examples=60, deadline=None)
@given(rate=st.floats(0.0001, 5), low=st.floats(10, 1e4), factor=st.floats(1, 100), seconds=st.floats(1, 120))
def test_more_price_never_buys_a_smaller_pool(rate: float, low: float, factor: float, seconds: float) -> None:
    target, startup = WaitTarget(quantile=0.95, seconds=seconds), StartupState()
    cheap = policy_wait.pool(WaitState(rate=rate, price=low), target, startup, 1.0, 200)
    dear = policy_wait.pool(WaitState(rate=rate, price=min(low * factor, policy_wait.PRICE_MAX)), target, startup, 1.0, 200)
    assert dear >= cheap


def test_a_forecast_whose_pattern_stops_stops_costing_within_one_period() -> None:
    period, batch_at = 600.0, 300.0
    config = PolicyConfig(max_sessions=30, wait_target="p95 10s", forecast_period=period)
    state, sessions = PolicyState(), 0

    def play(start: float, end: float, batches: bool) -> list[int]:
        nonlocal state, sessions
        forecast_sessions = []
        for second in range(int(start), int(end)):
            since = second % period - batch_at
            in_flight = 12 if batches and 0 <= since < 20 else 0
            decision = decide(one_queue(QueueDepth(0, in_flight)), Supply(sessions, 0), config, float(second), state)
            state, sessions = decision.state, decision.target
            forecast_sessions.append(int(dict(decision.terms).get("ahead", 0)))
        return forecast_sessions

    play(0, 3 * period, batches=True)
    learning_cost = play(3 * period, 4 * period, batches=False)  # the first missed batch: pre-warmed
    assert max(learning_cost) >= 10
    after = play(4 * period, 5 * period, batches=False)
    assert max(after) == 0  # no longer pre-warmed (the pool for the rate seen is another matter)
