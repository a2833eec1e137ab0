"""The trace simulator: cases with a known answer, the baselines' rules, determinism, output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import controller.policy
from controller.cli import main
from controller.config import PolicyConfig
from controller.simulation import Consumer, Model, Result, Trace, World, frontier, simulate
from controller.simulation import policies as sim_policies
from controller.simulation.bench import BASELINES, MODEL, POLICIES, TUNED, checks, ours, wait_checks
from controller.simulation.policies import KedaScaledJob, KedaScaledObject, KnownRate, Ours
from controller.simulation.traces import BUILT_IN, distribution, read_csv, write_csv

COLD, RESUME, IDLE = 180.0, 30.0, 10.0  # MODEL's cold start, resume and inactivity_timeout


def one_job(at: float = 0.0, service: float = 60.0) -> Trace:
    return Trace.of("one", [(at, service)])


def run(trace: Trace, policy: str, model: Model = MODEL) -> Result:
    return simulate(trace, POLICIES[policy].factory, model, policy)


def test_the_model_under_test_is_the_one_these_answers_assume() -> None:
    assert (MODEL.cold_start, MODEL.resume, MODEL.inactivity_timeout) == ("180", RESUME, IDLE)


def test_ours_runs_the_real_policy_function() -> None:
    assert sim_policies.decide is controller.policy.decide


@pytest.mark.parametrize("fields", [{}, TUNED, {"scale_down_delay": 60.0}])
def test_putting_off_quiet_readings_changes_nothing_without_a_wait_target(fields: dict[str, object]) -> None:
    # The defaults' readings are put off without a cap, the tuned row's up to 10 s: the steps
    # taken must be those of a loop that reads every second, to the last billed second.
    trace = BUILT_IN["bursts"]()
    every = simulate(trace, lambda m: Ours(PolicyConfig(max_sessions=m.max_workers, **fields), quiet=0), MODEL)
    put_off = simulate(trace, ours(**fields), MODEL)
    assert (put_off.cost, put_off.wait_p95, put_off.opens) == (every.cost, every.wait_p95, every.opens)


def test_quiet_readings_are_put_off() -> None:
    calls = 0

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return controller.policy.decide(*args, **kwargs)  # type: ignore[arg-type]

    trace = BUILT_IN["trickle"]()
    original, sim_policies.decide = sim_policies.decide, counting  # type: ignore[assignment]
    try:
        simulate(trace, ours(), MODEL)
    finally:
        sim_policies.decide = original
    # A reading each second a unit waits (for its session: a resume) and at each grant,
    # completion and release: about 30 a unit, against one a second over 6 hours.
    assert calls < 40 * len(trace.arrivals) < trace.arrivals[-1] / 5


# ---- known answers ------------------------------------------------------------------------------


def test_one_job_waits_one_cold_start_and_pays_start_work_and_idle_timeout() -> None:
    result = run(one_job(at=0.0, service=60.0), "ours")
    assert result.jobs == 1 and result.unfinished == 0
    assert result.wait_max == pytest.approx(COLD)
    assert result.cost == pytest.approx(COLD + 60 + IDLE)
    assert result.idle == pytest.approx(COLD + IDLE)
    assert (result.opens, result.interrupted) == (1, 0)


def test_a_job_between_polls_waits_for_the_next_poll_too() -> None:
    assert run(one_job(at=0.4), "ours").wait_max == pytest.approx(0.6 + COLD)  # 1 s polling
    assert run(one_job(at=1.0), "keda-scaledjob").wait_max == pytest.approx(29 + COLD)  # 30 s


def test_the_oracle_has_the_one_job_worker_ready_on_arrival_at_the_same_cost() -> None:
    result = run(one_job(at=0.0, service=60.0), "oracle")
    assert result.wait_max == 0.0
    assert result.cost == pytest.approx(COLD + 60 + IDLE)


def test_told_the_rate_ours_has_a_pool_ready_for_the_first_unit_learning_it_does_not() -> None:
    # Traffic from 10 minutes on: a perfect profile knows it is coming, a learned rate waits for it.
    trace = Trace.of("from-600", [(600.0 + 10 * k, 30.0) for k in range(30)], rate=lambda t: 0.1 if t >= 600 else 0.0)
    config = PolicyConfig(max_sessions=MODEL.max_workers, wait_target={"p95": "10s"})
    told = simulate(trace, lambda model: KnownRate(config, trace.rate), MODEL)  # type: ignore[arg-type]
    learned = simulate(trace, lambda model: Ours(config), MODEL)
    assert learned.wait_max == pytest.approx(COLD)
    assert told.wait_max < 10 and told.cost > learned.cost  # it pays for the pool


def test_keda_scaledobject_keeps_its_replica_for_the_cooldown() -> None:
    # Polls at 0, 30, ...: the last one that sees work is 210 (the job ends at 240); the first
    # poll 300 s after that scales to zero at 510, and the worker stops 10 s later.
    result = run(one_job(at=0.0, service=60.0), "keda-scaledobject")
    assert result.wait_max == pytest.approx(COLD)
    assert result.cost == pytest.approx(510 + IDLE)


def test_constant_sparse_load_cold_starts_once_then_resumes_each_time() -> None:
    trace = Trace.of("periodic", [(400.0 * k, 50.0) for k in range(5)])
    result = run(trace, "ours")
    assert (result.wait_p50, result.wait_max) == (pytest.approx(RESUME), pytest.approx(COLD))
    assert result.cost == pytest.approx((COLD + 50 + IDLE) + 4 * (RESUME + 50 + IDLE))


def test_constant_load_on_one_worker_keeps_every_job_one_cold_start_behind() -> None:
    # One job every 5 s, each 5 s of work, one worker: the backlog built during the cold start
    # never drains, and the worker chains jobs without releasing its session.
    trace = Trace.of("saturated", [(5.0 * k, 5.0) for k in range(100)])
    result = run(trace, "ours", Model(max_workers=1))
    assert result.wait_p50 == pytest.approx(COLD) and result.wait_max == pytest.approx(COLD)
    assert result.cost == pytest.approx(COLD + 100 * 5 + IDLE)
    assert result.opens == 1


def test_drain_time_lets_a_ready_worker_take_a_second_job_instead_of_a_13th_start() -> None:
    # 13 jobs at once, 60 s each; drain_time 5 s at 60 s a unit: ceil(13 x 60 / 65) = 12 sessions.
    # The 13th job runs on the first worker to finish, one job later; 12 starts are billed, not 13.
    # (A rate_window of an hour keeps pre-warming, which seconds_per_unit turns on, out of it.)
    trace = Trace.of("thirteen", [(0.0, 60.0)] * 13)
    result = simulate(trace, ours(seconds_per_unit=60, drain_time=5, rate_window=3600), MODEL)
    assert (result.opens, result.unfinished, result.interrupted) == (12, 0, 0)
    assert (result.wait_p50, result.wait_max) == (pytest.approx(COLD), pytest.approx(COLD + 60))
    assert result.cost == pytest.approx(12 * (COLD + 60 + IDLE) + 60)
    assert run(trace, "ours").cost == pytest.approx(13 * (COLD + 60 + IDLE))


@pytest.mark.parametrize("policy", list(POLICIES))
def test_zero_load_costs_nothing(policy: str) -> None:
    result = run(Trace.of("empty", []), policy)
    assert (result.jobs, result.cost, result.opens, result.wait_max) == (0, 0.0, 0, 0.0)


# ---- the world's rules --------------------------------------------------------------------------


class Script:
    """A policy variant is any object with `consumer` and `tick()`: here, a fixed script."""

    consumer = Consumer.REFERENCE

    def __init__(self, steps: dict[float, str]):
        self.steps = steps

    def tick(self, now: float, world: World) -> float:
        step = self.steps.get(now)
        if step == "open":
            world.open(1)
        elif step == "close":
            world.close_youngest(1)
        return 1.0


def test_closing_a_busy_session_interrupts_and_requeues_its_job() -> None:
    trace = one_job(at=0.0, service=100.0)
    world = World(trace, MODEL, Script.consumer)
    # Ready at 180, closed at 250 after 70 s of work, reopened at 255 on the still-idle worker:
    # the job starts over and the lost 70 s count as waiting.
    world.run(Script({0.0: "open", 250.0: "close", 255.0: "open"}))
    assert world.interrupted == 1
    assert world.finished_at == [pytest.approx(355.0)]
    assert world.billed_seconds == pytest.approx(355 + IDLE)


def test_keda_scaledobject_kills_busy_workers_where_ours_never_does() -> None:
    steady = BUILT_IN["steady"]()
    keda, ours_ = run(steady, "keda-scaledobject"), run(steady, "ours")
    assert keda.interrupted > 0 and keda.unfinished == 0
    assert ours_.interrupted == 0


def test_the_oracle_never_keeps_the_spike_waiting() -> None:
    assert run(BUILT_IN["spike"](), "oracle").wait_max == 0.0


def test_the_oracle_respects_the_endpoint_cap() -> None:
    # 500 jobs at once, 100 workers at most: 100 sessions, each serving five jobs in turn; the
    # oracle asks for none beyond the cap, so it costs what ours costs and waits less.
    burst = Trace.of("burst", [(600.0, 60.0)] * 500)
    oracle, ours_ = run(burst, "oracle"), run(burst, "ours")
    assert oracle.opens == 100 and oracle.unfinished == 0
    assert oracle.cost == pytest.approx(ours_.cost)
    assert oracle.wait_max == pytest.approx(4 * 60) and oracle.wait_max < ours_.wait_max


def test_results_after_the_learning_time_leave_out_its_jobs_and_its_cost() -> None:
    # A cold start for the job in the learning time; the later one resumes the stopped worker.
    trace = Trace.of("two", [(0.0, 60.0), (1000.0, 60.0)], learning=500.0)
    result = run(trace, "ours")
    assert (result.wait_max, result.p95_after) == (pytest.approx(COLD), pytest.approx(RESUME))
    assert result.cost_after == pytest.approx(RESUME + 60 + IDLE)
    assert result.cost == pytest.approx(COLD + 60 + IDLE + result.cost_after)
    plain = run(Trace.of("two", trace_jobs(trace)), "ours")
    assert (plain.p95_after, plain.cost_after) == (plain.wait_p95, plain.cost)


def trace_jobs(trace: Trace) -> list[tuple[float, float]]:
    return list(zip(trace.arrivals, trace.services, strict=True))


class FakeWorld:
    """Counts only: what a baseline reads, and what it asks for."""

    def __init__(self, waiting: int, in_flight: int, sessions: int = 0, opening: int = 0):
        self.waiting, self.in_flight = waiting, in_flight
        self.granted_at = {n: 0.0 for n in range(sessions)}
        self.sessions_opening = opening
        self.opened = 0

    @property
    def sessions_open(self) -> int:
        return len(self.granted_at)

    def open(self, count: int) -> None:
        self.opened += count
        start = max(self.granted_at, default=-1) + 1
        self.granted_at.update({start + n: 0.0 for n in range(count)})

    def cancel_youngest(self, count: int) -> None:
        self.sessions_opening -= count

    def close(self, sessions: list[int]) -> None:
        for session in sessions:
            del self.granted_at[session]


def hpa_replicas(work: list[tuple[float, int]], until: float) -> list[tuple[float, int]]:
    """Drive a ScaledObject with (from time, waiting) steps; (time, replicas) after each tick."""
    keda, world, now, seen = KedaScaledObject(max_replicas=100, seed=1), FakeWorld(0, 0), 0.0, []
    while now <= until:
        world.waiting = [units for start, units in work if start <= now][-1]
        delay = keda.tick(now, world)  # type: ignore[arg-type]
        seen.append((now, keda.replicas))
        now += delay
    return seen


def test_hpa_scales_up_by_at_most_double_or_four_per_sync() -> None:
    counts = [replicas for _, replicas in hpa_replicas([(0.0, 50)], until=90.0)]
    assert sorted(set(counts)) == [1, 5, 10, 20, 40, 50]


def test_hpa_holds_within_its_tolerance() -> None:
    # 21 units on 20 replicas is a ratio of 1.05: inside the 10% band, so the HPA does nothing.
    assert hpa_replicas([(0.0, 20), (100.0, 21)], until=200.0)[-1][1] == 20


def test_hpa_waits_out_its_stabilization_window_before_scaling_down() -> None:
    # The last sync that wanted 20 was at 97.5: the HPA keeps 20 until 300 s after it.
    seen = hpa_replicas([(0.0, 20), (100.0, 1)], until=500.0)
    assert {r for t, r in seen if 100 < t < 397.5} == {20}
    assert {r for t, r in seen if t >= 397.5} == {1}


def test_keda_cooldown_scales_to_zero_300_s_after_the_last_active_poll() -> None:
    seen = hpa_replicas([(0.0, 20), (100.0, 0)], until=500.0)
    assert {r for t, r in seen if 100 < t < 390} == {20}  # last active poll at 90
    assert {r for t, r in seen if t >= 390} == {0}


def test_scaledjob_default_subtracts_running_jobs_accurate_only_pending_ones() -> None:
    # 80 waiting, 30 Jobs still pending: default makes 80 - 30; near maxReplicaCount 100,
    # accurate makes 100 - 30 (KEDA's own arithmetic, and its excess jobs).
    default, accurate = FakeWorld(80, 0, opening=30), FakeWorld(80, 0, opening=30)
    KedaScaledJob("default", 100).tick(0.0, default)  # type: ignore[arg-type]
    KedaScaledJob("accurate", 100).tick(0.0, accurate)  # type: ignore[arg-type]
    assert (default.opened, accurate.opened) == (50, 70)


# ---- determinism and traces ---------------------------------------------------------------------


def test_same_seed_same_result_other_seed_other_result() -> None:
    steady = BUILT_IN["steady"]()
    spread = Model(cold_start="uniform:150:210", seed=3)
    first, again = simulate(steady, ours(), spread), simulate(steady, ours(), spread)
    assert first == again
    assert simulate(steady, ours(), Model(cold_start="uniform:150:210", seed=4)) != first
    assert BUILT_IN["diurnal"]() == BUILT_IN["diurnal"]()


@pytest.mark.parametrize("name", ["multi-day", "periodic-batch"])
def test_the_recurring_traces_repeat_daily_with_noise(name: str) -> None:
    trace = BUILT_IN[name]()
    assert trace == BUILT_IN[name]() and trace.learning == 24 * 3600
    days = [sum(1 for a in trace.arrivals if d * 86400 <= a < (d + 1) * 86400) for d in range(2)]
    assert days[0] != days[1] and abs(days[0] - days[1]) < 0.25 * days[0]


def test_the_periodic_batch_comes_at_minute_17_of_every_hour() -> None:
    trace = BUILT_IN["periodic-batch"]()
    minutes = [int(a % 3600 // 60) for a in trace.arrivals]
    per_hour_at_17 = minutes.count(17) / 48
    assert 24 <= per_hour_at_17 <= 37 and max(minutes.count(m) for m in range(60) if m != 17) < 48


def test_a_trace_survives_its_csv(tmp_path: Path) -> None:
    trace = BUILT_IN["bursts"]()
    write_csv(trace, tmp_path / "bursts.csv")
    again = read_csv(tmp_path / "bursts.csv")
    assert (again.arrivals, again.services) == (trace.arrivals, trace.services)


def test_a_csv_without_service_times_draws_them(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("seconds,jobs\n0,2\n30.5,1\n")
    trace = read_csv(path, service="uniform:10:20")
    assert trace.arrivals == (0.0, 0.0, 30.5)
    assert all(10 <= s <= 20 for s in trace.services)
    assert read_csv(path, service="uniform:10:20") == trace


def test_a_bad_csv_row_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("seconds,jobs\n0,1\nsoon,1\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: expected numbers"):
        read_csv(path)


def test_a_bad_distribution_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="uniform:LOW:HIGH"):
        distribution("gaussian:1:2", None)  # type: ignore[arg-type]


# ---- the benchmark and the command ---------------------------------------------------------------


def result(policy: str, p95: float, cost: float, trace: str = "steady") -> Result:
    return Result(trace, policy, 1, 0, p95, p95, p95, p95, cost, 0.0, 1, 0, 0.0, 1.0)


def test_checks_count_a_tie_as_no_win() -> None:
    tie_on_cost = [result("ours", 10, 100.2, "spike"), result("keda-scaledjob", 20, 100, "spike")]
    assert [c.passed for c in checks(tie_on_cost)] == [False]
    within_margin = [result("ours", 10.9, 50), result("keda-scaledobject", 10, 100)]
    assert [c.passed for c in checks(within_margin)] == [True]
    too_slow = [result("ours", 11.1, 50), result("keda-scaledobject", 10, 100)]
    assert [c.passed for c in checks(too_slow)] == [False]


def test_checks_apply_to_the_default_and_tuned_rows_only() -> None:
    rows = [result(name, 10, 100, "bursts") for name in POLICIES]
    found = checks(rows)
    assert {c.policy for c in found} == {"ours", "ours-tuned"}
    assert [c.against for c in found if c.policy == "ours-tuned"] == [*BASELINES, "oracle"]
    assert {name: POLICIES[name].target for name in POLICIES if POLICIES[name].kind == "wait"} == {
        "ours-wait-10": 10.0, "ours-wait-30": 30.0
    }


def test_wait_checks_learning_against_the_oracle_the_diurnal_corner_and_domination() -> None:
    rows = [
        scored_after("ours-wait-10", 4.0, 11, 3.0, 10.0, "periodic-batch"),
        scored_after("oracle", 0.5, 10, 0.0, 9.0, "periodic-batch"),
        scored_after("keda-scaledjob", 50.0, 9, 50.0, 9.0, "periodic-batch"),
        result("ours-wait-10", 9.0, 100, "diurnal"), result("keda-scaledobject", 13.0, 120, "diurnal"),
        result("ours", 30.0, 150, "diurnal"),
    ]
    found = {(c.trace, c.policy, c.against, c.rule.split(":")[0]): c.passed for c in wait_checks(rows)}
    # 3.0 <= 2 x 0 + 5, and 10.0 <= 1.15 x 9.0
    assert found[("periodic-batch", "ours-wait-10", "oracle", "after the first period")]
    assert found[("periodic-batch", "ours-wait-10", "keda-scaledjob", "not dominated (worse on both p95 and cost)")]
    assert found[("diurnal", "ours-wait-10", "keda-scaledobject", "better p95 and cost")]
    assert not found[("diurnal", "ours", "keda-scaledobject", "not dominated (worse on both p95 and cost)")]


def scored_after(policy: str, p95: float, cost: float, p95_after: float, cost_after: float, trace: str) -> Result:
    return replace(result(policy, p95, cost, trace), learning=3600.0, learned_p95=p95_after, learned_cost=cost_after)


def test_the_tuned_row_is_one_config_for_every_trace() -> None:
    # The same PolicyConfig whatever the trace: the factory sees only the endpoint model.
    controller = POLICIES["ours-tuned"].factory(MODEL)
    assert isinstance(controller, Ours)
    assert controller.config.model_dump(exclude_unset=True) == {"max_sessions": MODEL.max_workers, **TUNED}


def test_simulate_command_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chosen = ["ours", "ours-tuned", "ours-wait-10", "keda-scaledjob"]
    policies = [f"--policy={name}" for name in chosen]
    code = main(["simulate", "--trace", "spike", *policies, "--out", str(tmp_path)])
    assert code == 0
    report = (tmp_path / "results.md").read_text()
    assert "## spike" in report and "| KEDA ScaledJob default |" in report
    assert "| trace | against | rule | ours (defaults) | ours (tuned) |" in report
    assert "- **ours (defaults)**: 0 of 1 checks pass" in report  # a cost tie with ScaledJob
    assert "- **ours (tuned)**: 1 of 1 checks pass" in report  # beats it on p95 and cost
    assert "- **ours (wait_target p95 10 s)**: 1 of 1 checks pass" in report  # not dominated by ScaledJob
    assert (tmp_path / "results.png").stat().st_size > 0
    assert read_csv(tmp_path / "traces" / "spike.csv").arrivals == BUILT_IN["spike"]().arrivals
    assert "## spike" in capsys.readouterr().out


def test_simulate_command_takes_a_csv_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.csv"
    path.write_text("seconds,jobs,service_seconds\n0,3,60\n")
    assert main(["simulate", "--trace", str(path), "--policy", "ours"]) == 0
    assert "## mine" in capsys.readouterr().out


def test_simulate_command_rejects_an_unknown_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--trace", "spike", "--policy", "magic"]) == 2
    assert "unknown magic; expected one of ours," in capsys.readouterr().err


# ---- the frontier sweep --------------------------------------------------------------------------


def point(p95: float, cost_hours: float, **fields: object) -> frontier.Point:
    return frontier.Point(dict(fields), Result("t", "p", 1, 0, 0.0, p95, p95, p95, cost_hours * 3600, 0.0, 1, 0, 0.0, 1.0))


def test_the_pareto_front_drops_points_beaten_on_both_and_keeps_trade_offs() -> None:
    cheap, fast, beaten, twin = point(20, 1, n=2), point(5, 3, n=1), point(21, 2, n=0), point(20, 1, n=3)
    assert frontier.pareto([beaten, fast, cheap, twin]) == [cheap, twin, fast]
    assert [p.label for p in frontier.pareto([beaten, fast, cheap, twin])] == ["n 2", "n 3", "n 1"]
    assert point(1, 1).label == "defaults" and point(1, 1, wait_target={"seconds": 10}).label == "wait_target p95 10 s"


def sweep_of(fixed: list[frontier.Point], ours_10: frontier.Point, ours_30: frontier.Point) -> frontier.Sweep:
    waits = [replace(ours_10, fields={"wait_target": {"seconds": 10.0}}), replace(ours_30, fields={"wait_target": {"seconds": 30.0}})]
    return frontier.Sweep(Trace.of("t", []), fixed, waits, {})


def test_the_wait_row_must_meet_a_target_some_fixed_setting_meets_at_its_cost_or_near() -> None:
    fixed = [point(25, 1, n=0), point(9, 4, n=1), point(8, 5, n=2)]
    cheap_enough, too_dear, too_slow = point(9.5, 4.4), point(9.5, 4.5), point(10.5, 3)
    verdicts = frontier.verdicts([sweep_of(fixed, cheap_enough, point(20, 1))])
    by_target = {v.target: v for v in verdicts}
    assert by_target[10].required and by_target[10].meeting[0].label == "n 1" and by_target[10].passed
    assert by_target[30].passed and by_target[30].cost_ratio == 1.0  # 20 s at the cheapest setting's cost
    assert not frontier.verdicts([sweep_of(fixed, too_dear, point(20, 1))])[0].passed  # 4.5 > 1.10 x 4
    assert not frontier.verdicts([sweep_of(fixed, too_slow, point(20, 1))])[0].passed
    none_meets = frontier.verdicts([sweep_of([point(40, 1, n=0), point(35, 2, n=1)], too_slow, point(31, 1))])
    assert [(v.required, v.passed, v.closest.label) for v in none_meets] == [(False, True, "n 1"), (False, True, "n 1")]


def test_simulate_frontier_sweeps_every_trace_given_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "few.csv"
    path.write_text("seconds,jobs,service_seconds\n0,3,60\n400,2,30\n")
    assert main(["simulate", "--frontier", "--trace", str(path), "--out", str(tmp_path)]) == 0
    report = (tmp_path / "frontier.md").read_text()
    assert f"{len(frontier.GRID)} fixed settings and {len(frontier.TARGETS)} wait targets of ours on 1 traces" in report
    assert "| few | 10 |" in report and "| few | 30 |" in report
    assert "| defaults |" in report and "| buffer_sessions 1 |" in report and "| **wait_target p95 10 s** |" in report
    assert (tmp_path / "frontier.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--trace", "spike", "--policy", "ours"], "--frontier: runs its own grid"),
        (["--all"], "--frontier: sweeps every trace (or each --trace); drop --all"),
    ],
)
def test_simulate_frontier_rejects_what_it_cannot_sweep(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--frontier", *extra]) == 2
    assert message in capsys.readouterr().err


def test_simulate_scale_rejects_other_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--week", "--trace", "spike"]) == 2
    assert "--week: runs every policy on the week-long traces" in capsys.readouterr().err
