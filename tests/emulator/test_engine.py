"""The scaling engine on its own, driven with explicit timestamps (no clock, no sleeping)."""

from __future__ import annotations

from collections import deque

import pytest

from controller.emulator.config import build_config
from controller.emulator.engine import (
    ERROR_LINGER_SECONDS,
    GRANT_SECONDS,
    Action,
    Engine,
    Ids,
    Ready,
    SessionInfo,
    Waiting,
)  # fmt: skip
from controller.emulator.testing import RECOMMENDED_ENDPOINT


def make(*, needs_report: bool = False, max_sessions: int = 1, stuck=lambda: False, flavor="sessions",
         lenient=None, report_interval=1.0, **endpoint) -> Engine:  # fmt: skip
    """An engine with the recommended endpoint parameters (overridden by `endpoint`), seeded."""
    settings = {
        "cold_start_seconds": 3.0, "resume_seconds": 1.0, "price_per_hour": 3.6, "storage_price_per_hour": 0.36,
        "inactive_destroy_seconds": 60.0, "worker_flavor": flavor, "seed": 1, "resume_failure": 0.0,
        "report_interval": report_interval, "lenient": lenient, **RECOMMENDED_ENDPOINT, **endpoint,
    }  # fmt: skip
    config = build_config(**settings)
    return Engine(config.endpoints[0], config, ids=Ids(), events=deque(), needs_report=needs_report,
                  max_sessions=max_sessions, stuck=stuck)  # fmt: skip


def open_session(engine: Engine, worker_id: int, request_idx: int, now: float, cost: float = 100) -> str:
    session_id = f"s{request_idx}"
    engine.open_session(worker_id, SessionInfo(session_id, request_idx, cost, 60, now + 60, now), now)
    return session_id


def ready_worker(engine: Engine, now: float = 0.0) -> int:
    """A route waits and polls on; the worker it creates loads at now + 3.5 and reports it."""
    engine.route(now, 0, 100)
    (start,) = engine.tick(now + 0.5)
    engine.route(now + 3.0, 0, 100)
    engine.tick(now + 3.5)
    assert engine.workers[start.worker_id].state == "ready"
    return start.worker_id


def session_on_ready_worker(engine: Engine, now: float = 0.0) -> tuple[int, str]:
    """ready_worker, then the waiting client's next poll is granted it and opens a session."""
    worker_id = ready_worker(engine, now)
    grant = engine.route(now + 4.0, 0, 100)
    assert isinstance(grant, Ready) and grant.worker.id == worker_id and not engine.waiting
    return worker_id, open_session(engine, worker_id, grant.request_idx, now + 4.0)


def ready_workers(engine: Engine, n: int) -> list[int]:
    for _ in range(n):
        engine.route(0.0, 0, 100)
    starts = engine.tick(0.5)
    for _ in range(n):
        engine.route(3.0, 0, 100)  # the clients poll on
    engine.tick(3.5)
    return [a.worker_id for a in starts]


def test_one_session_is_one_worker_at_target_util_1_and_two_at_0_9():
    engine = make()
    assert engine.route(0.0, 0, 100) == Waiting(1)
    assert engine.targets(0.4) == (0, 0), "a route counts only once routes waited target_queue_time"
    assert engine.targets(0.5) == (1, 1)
    assert make(target_util=0.9).targets(0.0) == (0, 0)
    tight = make(target_util=0.9)
    tight.route(0.0, 0, 100)
    assert tight.targets(1.0) == (2, 2)


@pytest.mark.parametrize(
    ("params", "routes", "expected"),
    [
        ({"min_load": 250}, 0, (3, 3)),
        ({"cold_workers": 5}, 1, (1, 5)),
        ({"cold_mult": 2.0}, 1, (1, 2)),
        ({"min_cold_load": 300}, 0, (0, 3)),
        ({"max_workers": 2, "cold_workers": 5}, 3, (2, 2)),
    ],
)
def test_min_load_cold_workers_cold_mult_and_max_workers_bound_the_targets(params, routes, expected):
    engine = make(**params)
    for _ in range(routes):
        engine.route(0.0, 0, 100)
    assert engine.targets(1.0) == expected


def test_vast_defaults_keep_an_active_worker_and_five_in_all():
    config = build_config(seed=1)
    engine = Engine(config.endpoints[0], config, ids=Ids(), events=deque())
    params = config.endpoints[0]
    assert (params.min_load, params.target_util, params.cold_mult, params.cold_workers) == (1, 0.9, 3, 5)
    assert (params.max_queue_time, params.target_queue_time, params.inactivity_timeout) == (30, 10, None)
    assert engine.targets(0.0) == (1, 5), "min_load 1: one active worker; min workers 5"


@pytest.mark.parametrize(
    ("timeout", "active"),
    [(None, [1, 1, 1]), (-1, [1, 1, 1]), (0, [0, 0, 0]), (10, [0, 1, 0])],
)
def test_inactivity_timeout_is_one_endpoint_timer_for_scaling_to_zero(timeout, active):
    """Never had demand / idle 5 s after demand / idle 10 s after demand."""
    engine = make(inactivity_timeout=timeout)
    seen = [engine.targets(0.0)[0]]
    worker_id, session_id = session_on_ready_worker(engine, 1.0)
    engine.tick(8.0)  # the last tick with demand
    engine.close_session(worker_id, session_id, 8.5, "end")
    engine.tick(9.0)
    seen += [engine.targets(13.0)[0], engine.targets(18.0)[0]]
    assert seen == active


def test_readiness_is_seen_at_the_worker_librarys_next_report():
    engine = make(report_interval=10.0)
    engine.route(0.0, 0, 100)
    (start,) = engine.tick(0.5)  # loaded at 3.5; reports at 1.5, 11.5, ...
    engine.route(11.0, 0, 100)  # the client polls on
    engine.tick(11.4)
    assert engine.workers[start.worker_id].state == "loading"
    engine.tick(11.5)
    assert engine.workers[start.worker_id].state == "ready"
    early = make(report_interval=10.0, lenient={"early_readiness": True})
    early.route(0.0, 0, 100)
    (start,) = early.tick(0.5)
    early.route(3.0, 0, 100)
    early.tick(3.5)
    assert early.workers[start.worker_id].state == "ready"


def test_a_route_waits_for_a_cold_worker_and_anonymous_polls_take_its_place():
    engine = make()
    assert engine.route(0.0, 0, 100) == Waiting(1)
    assert engine.tick(0.0) == []
    assert engine.tick(0.5) == [Action("start", 1001)]
    assert engine.route(3.4, 0, 100) == Waiting(1), "a poll (request_idx 0) takes the waiting route's place"
    assert engine.route(3.41, 0, 100) == Waiting(3), "polled 10 ms ago: another client, another route"
    engine.waiting.pop(3)
    assert engine.tick(3.4) == [], "still one worker"
    engine.tick(3.5)
    ready = engine.route(3.6, 0, 100)
    assert isinstance(ready, Ready) and (ready.worker.id, ready.request_idx) == (1001, 4)
    assert engine.waiting == {}, "the granted poll took the waiting route with it"
    assert engine.route(3.6, 0, 100) == Waiting(5), "a second 100 would queue 2 s on it > max_queue_time 1"
    assert engine.tick(4.2) == [Action("start", 1002)]


def test_a_repoll_of_a_granted_request_decides_again_under_the_same_idx():
    engine = make()
    worker_id = ready_worker(engine)
    first = engine.route(4.0, 0, 100)
    again = engine.route(5.0, first.request_idx, 100)
    assert isinstance(again, Ready) and again.request_idx == first.request_idx
    assert again.worker.id == worker_id and list(engine.workers[worker_id].grants) == [first.request_idx]


def test_routing_ignores_max_sessions_so_a_full_worker_refuses_and_the_route_is_demand():
    engine = make(max_queue_time=30.0)  # Vast's default: a busy worker still takes routes
    worker_id = ready_worker(engine)
    open_session(engine, worker_id, engine.route(4.0, 0, 100).request_idx, 4.0)
    second = engine.route(5.0, 0, 100)
    assert isinstance(second, Ready) and second.worker.id == worker_id, "(100 + 100) / 100 = 2 s <= 30 s"
    engine.rejected(worker_id, [second.request_idx], 5.1)  # its /session/create answered 429
    assert engine.workers[worker_id].grants == {} and second.request_idx in engine.waiting
    assert [a.kind for a in engine.tick(7.0)] == ["start"], "the refused route waits and counts"
    assert engine.targets(7.0) == (2, 2)

    lenient = make(max_queue_time=30.0, lenient={"route_skips_full_workers": True})
    worker_id = ready_worker(lenient)
    open_session(lenient, worker_id, lenient.route(4.0, 0, 100).request_idx, 4.0)
    assert isinstance(lenient.route(5.0, 0, 100), Waiting), "lenient: the full worker is skipped"


def test_max_queue_time_limits_the_load_one_worker_takes():
    engine = make(max_sessions=4)
    worker_id = ready_worker(engine)
    grants = [engine.route(4.0, 0, 25) for _ in range(4)]
    assert all(isinstance(g, Ready) and g.worker.id == worker_id for g in grants), "4 x 25 = 1 s of queue"
    assert isinstance(engine.route(4.0, 0, 25), Waiting), "a fifth would queue 1.25 s"
    roomy = make(max_queue_time=2.0)
    ready_worker(roomy)
    assert isinstance(roomy.route(4.0, 0, 100), Ready) and isinstance(roomy.route(4.0, 0, 100), Ready)


def test_placement_is_random_among_the_least_loaded_and_seeded():
    def placements(seed: int, **lenient) -> list[int]:
        engine = make(lenient=lenient or None)
        engine.rng.seed(seed)
        workers = ready_workers(engine, 4)
        for i, worker_id in enumerate(workers):
            engine.workers[worker_id].last_busy = 10.0 - i  # the last one has been idle longest
        picks = []
        for _ in range(3):
            ready = engine.route(5.0, 0, 100)
            picks.append(ready.worker.id)
            engine.requests_done(ready.worker.id, [ready.request_idx], 5.0)
        return picks

    assert placements(1) == placements(1), "seeded: the same choices again"
    assert len({tuple(placements(seed)) for seed in range(20)}) > 1, "random among the free workers"
    assert placements(1, placement_idle_longest=True) == [1004, 1004, 1004]


def test_scale_to_zero_with_billing_that_adds_up():
    engine = make()
    worker_id = ready_worker(engine)  # loading 0.5..3.5
    grant = engine.route(3.5, 1, 100)
    assert isinstance(grant, Ready)
    session_id = open_session(engine, worker_id, 1, 4.0)
    assert engine.tick(9.0) == []
    engine.close_session(worker_id, session_id, 10.0, "end")
    assert engine.tick(18.9) == [], "the endpoint idle 9.9 s < inactivity_timeout 10"
    assert engine.tick(19.0) == [Action("stop", worker_id)]
    assert engine.worker_views()[0]["state"] == "stopped"
    assert engine.tick(78.9) == []
    assert engine.tick(79.0) == [Action("destroy", worker_id)]
    assert engine.workers == {}
    billing = engine.billing(200.0)
    assert billing["loading_seconds"] == pytest.approx(3.0)
    assert billing["ready_seconds"] == pytest.approx(15.5)
    assert billing["inactive_seconds"] == pytest.approx(60.0)
    # 3.6/h = 0.001/s for ready+loading; storage 0.36/h = 0.0001/s
    assert billing["cost"] == pytest.approx(18.5 * 0.001 + 60.0 * 0.0001)
    log = [(e["t"], e["event"], e["session_id"]) for e in engine.events]
    assert log == [(4.0, "create", "s1"), (10.0, "end", "s1")]


def test_billing_counts_the_current_state_up_to_now():
    engine = make()
    worker_id = ready_worker(engine)
    open_session(engine, worker_id, 1, 4.0)
    assert engine.billing(10.0)["ready_seconds"] == pytest.approx(6.5)
    assert engine.billing(10.0)["loading_seconds"] == pytest.approx(3.0)


def test_stopped_workers_resume_before_new_ones_are_created():
    engine = make()
    worker_id = ready_worker(engine)
    session_id = open_session(engine, worker_id, engine.route(3.5, 1, 100).request_idx, 3.5)
    engine.close_session(worker_id, session_id, 4.0, "end")
    assert engine.tick(14.0) == [Action("stop", worker_id)]
    assert isinstance(engine.route(30.0, 0, 100), Waiting)
    assert engine.tick(30.5) == [Action("resume", worker_id)]
    engine.tick(31.4)
    assert engine.workers[worker_id].state == "loading", "resume_seconds = 1"
    engine.tick(31.5)
    assert isinstance(engine.route(31.5, 0, 100), Ready)


def test_an_idle_worker_stops_a_report_after_its_session_ends_or_later_when_lenient():
    for lenient, stops_at in ((None, 9.0), ({"worker_idle_seconds": 5.0}, 13.0)):
        engine = make(inactivity_timeout=0, lenient=lenient)
        worker_id, session_id = session_on_ready_worker(engine)
        engine.tick(7.9)
        engine.close_session(worker_id, session_id, 8.0, "end")
        assert engine.tick(stops_at - 0.1) == [], lenient
        assert engine.tick(stops_at) == [Action("stop", worker_id)], lenient


def test_a_resume_can_fail_and_a_new_worker_cold_starts_instead():
    engine = make(resume_failure=1.0)
    worker_id, session_id = session_on_ready_worker(engine)
    engine.tick(8.0)
    engine.close_session(worker_id, session_id, 8.0, "end")
    assert engine.tick(18.0) == [Action("stop", worker_id)]
    engine.route(30.0, 0, 100)
    assert engine.tick(30.5) == [Action("destroy", worker_id), Action("start", worker_id + 1)]
    assert engine.resume_failures == 1
    assert engine.workers[worker_id + 1].boot_until == 33.5, "a cold start, not a resume"


def test_cold_workers_boot_then_stop_and_are_kept():
    engine = make(cold_workers=2)
    assert [a.kind for a in engine.tick(0.0)] == ["start", "start"]
    assert engine.tick(3.0) == [], "ready now"
    assert [a.kind for a in engine.tick(4.0)] == ["stop", "stop"], "seen idle a report later: not needed active"
    assert engine.tick(500.0) == []
    assert [w["state"] for w in engine.worker_views()] == ["stopped", "stopped"]


def test_a_stuck_cold_start_never_becomes_ready():
    engine = make(stuck=lambda: True)
    engine.route(0.0, 0, 100)
    engine.tick(0.5)
    engine.tick(1000.0)
    assert [w["state"] for w in engine.worker_views()] == ["loading"]


def test_process_workers_are_ready_only_once_they_report_it():
    engine = make(needs_report=True)
    engine.route(0.0, 0, 100)
    (start,) = engine.tick(0.5)
    worker = engine.workers[start.worker_id]
    worker.url = "http://127.0.0.1:1"
    engine.tick(10.0)
    assert worker.state == "loading"
    assert not engine.worker_reported(worker.id, 10.0, loaded=True, url="http://127.0.0.1:2"), "an old process"
    assert engine.worker_reported(worker.id, 10.0, loaded=True, url=worker.url)
    engine.tick(10.1)
    assert worker.state == "ready"


def test_an_errored_worker_loses_its_sessions_and_is_destroyed():
    engine = make()
    worker_id = ready_worker(engine)
    open_session(engine, worker_id, 1, 4.0)
    assert engine.worker_reported(worker_id, 5.0, loaded=True, error="model died")
    assert engine.workers[worker_id].state == "error" and not engine.workers[worker_id].sessions
    assert engine.events[-1] == {"t": 5.0, "event": "end", "endpoint": "demo", "worker_id": worker_id,
                                 "session_id": "s1", "request_idx": 1, "reason": "crash"}  # fmt: skip
    assert Action("destroy", worker_id) not in engine.tick(5.0 + ERROR_LINGER_SECONDS - 0.1)
    assert Action("destroy", worker_id) in engine.tick(5.0 + ERROR_LINGER_SECONDS)


def test_an_unused_grant_expires_and_a_reservation_holds_until_deleted():
    engine = make(flavor="reserve")
    worker_id = ready_worker(engine)
    engine.route(4.0, 1, 100)
    engine.tick(4.0 + GRANT_SECONDS)
    assert engine.workers[worker_id].grants == {}, "never used: dropped"

    held = engine.route(20.0, 0, 100)
    engine.requests_working(worker_id, [held.request_idx], 20.5)
    engine.tick(20.0 + GRANT_SECONDS * 3)
    assert list(engine.workers[worker_id].grants) == [held.request_idx], "in progress: kept"
    engine.requests_done(worker_id, [held.request_idx], 70.0)
    assert engine.workers[worker_id].grants == {}
    assert [(e["event"], e["kind"], e["request_idx"]) for e in engine.events] == [
        ("create", "reservation", held.request_idx), ("end", "reservation", held.request_idx)]  # fmt: skip
    assert held.request_idx in engine.deleted
