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


def make(*, needs_report: bool = False, max_sessions: int = 1, stuck=lambda: False, flavor="sessions",
         **endpoint) -> Engine:  # fmt: skip
    config = build_config(
        cold_start_seconds=3.0, resume_seconds=1.0, price_per_hour=3.6, storage_price_per_hour=0.36,
        inactive_destroy_seconds=60.0, worker_flavor=flavor, **endpoint,
    )  # fmt: skip
    return Engine(config.endpoints[0], config, ids=Ids(), events=deque(), needs_report=needs_report,
                  max_sessions=max_sessions, stuck=stuck)  # fmt: skip


def open_session(engine: Engine, worker_id: int, request_idx: int, now: float, cost: float = 100) -> str:
    session_id = f"s{request_idx}"
    engine.open_session(worker_id, SessionInfo(session_id, request_idx, cost, 60, now + 60, now), now)
    return session_id


def ready_worker(engine: Engine, now: float = 0.0) -> int:
    """Route once (request_idx 1, left waiting) and boot the worker it creates (ready at now + 3.5)."""
    engine.route(now, 0, 100)
    (start,) = engine.tick(now + 0.5)
    engine.tick(now + 3.5)
    return start.worker_id


def test_one_session_is_one_worker_at_target_util_1_and_two_at_0_9():
    engine = make()
    assert engine.route(0.0, 0, 100) == Waiting(1)
    assert engine.targets(0.4) == (0, 0), "a route counts only once older than target_queue_time"
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


def test_a_route_waits_for_a_cold_worker_then_routes_spread_one_per_worker():
    engine = make()
    assert engine.route(0.0, 0, 100) == Waiting(1)
    assert engine.tick(0.0) == []
    assert engine.tick(0.5) == [Action("start", 1001)]
    assert engine.route(3.4, 1, 100) == Waiting(1), "still loading: the same request_idx waits on"
    assert engine.tick(3.4) == []
    engine.tick(3.5)
    ready = engine.route(3.6, 1, 100)
    assert isinstance(ready, Ready) and (ready.worker.id, ready.request_idx) == (1001, 1)
    assert engine.route(3.6, 0, 100) == Waiting(2), "max_sessions=1: the granted worker is full"
    assert engine.tick(4.2) == [Action("start", 1002)]


def test_a_repoll_of_a_granted_request_decides_again_under_the_same_idx():
    engine = make()
    worker_id = ready_worker(engine)
    first = engine.route(4.0, 0, 100)
    again = engine.route(5.0, first.request_idx, 100)
    assert isinstance(again, Ready) and again.request_idx == first.request_idx
    assert again.worker.id == worker_id and list(engine.workers[worker_id].grants) == [first.request_idx]


def test_max_queue_time_limits_the_load_one_worker_takes():
    engine = make(max_sessions=4)
    worker_id = ready_worker(engine)
    engine.route(4.0, 1, 25)  # the first route, now granted on re-poll
    grants = [engine.route(4.0, 0, 25) for _ in range(3)]
    assert all(isinstance(g, Ready) and g.worker.id == worker_id for g in grants), "4 x 25 = 1 s of queue"
    assert isinstance(engine.route(4.0, 0, 25), Waiting), "max_sessions=4 reached"

    heavy = make(max_sessions=4)
    ready_worker(heavy)
    assert isinstance(heavy.route(4.0, 1, 100), Ready)
    assert isinstance(heavy.route(4.0, 0, 100), Waiting), "a second 100 would queue 2 s > max_queue_time 1"
    roomy = make(max_sessions=4, max_queue_time=2.0)
    ready_worker(roomy)
    assert isinstance(roomy.route(4.0, 1, 100), Ready) and isinstance(roomy.route(4.0, 0, 100), Ready)


def test_scale_to_zero_with_billing_that_adds_up():
    engine = make()
    worker_id = ready_worker(engine)  # loading 0.5..3.5
    grant = engine.route(3.5, 1, 100)
    assert isinstance(grant, Ready)
    session_id = open_session(engine, worker_id, 1, 4.0)
    assert engine.tick(9.0) == []
    engine.close_session(worker_id, session_id, 10.0, "end")
    assert engine.tick(19.9) == [], "idle 9.9 s < inactivity_timeout 10"
    assert engine.tick(20.0) == [Action("stop", worker_id)]
    assert engine.worker_views()[0]["state"] == "stopped"
    assert engine.tick(79.9) == []
    assert engine.tick(80.0) == [Action("destroy", worker_id)]
    assert engine.workers == {}
    billing = engine.billing(200.0)
    assert billing["loading_seconds"] == pytest.approx(3.0)
    assert billing["ready_seconds"] == pytest.approx(16.5)
    assert billing["inactive_seconds"] == pytest.approx(60.0)
    # 3.6/h = 0.001/s for ready+loading; storage 0.36/h = 0.0001/s
    assert billing["cost"] == pytest.approx(19.5 * 0.001 + 60.0 * 0.0001)
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


def test_cold_workers_boot_idle_out_to_stopped_and_are_kept():
    engine = make(cold_workers=2)
    assert [a.kind for a in engine.tick(0.0)] == ["start", "start"]
    engine.tick(3.0)
    assert [w["state"] for w in engine.worker_views()] == ["idle", "idle"]
    assert [a.kind for a in engine.tick(13.0)] == ["stop", "stop"]
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
