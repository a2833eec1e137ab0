"""Metrics and the HTTP server, against a real server on a free port and a real HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from controller import __version__
from controller.config import PolicyConfig
from controller.demo.observe import Samples, metric_samples
from controller.metrics import Metrics
from controller.policy import Decision, PolicyState, Supply, decide, one_queue
from controller.server import MetricsServer
from controller.sources import QueueDepth

TIMEOUT = aiohttp.ClientTimeout(total=10)


def decision(target: int, open: int = 0, cancel: int = 0, close: int = 0) -> Decision:
    return Decision(target, open, cancel, close, "test", PolicyState())


class Ready:
    """A readiness answer the test can flip."""

    def __init__(self) -> None:
        self.ready = False

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"not_ready": [] if self.ready else ["alpha"]}


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, MetricsServer, Ready, str]]:
    metrics, ready = Metrics(), Ready()

    async def hello(_: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    server = MetricsServer(metrics, "127.0.0.1", 0, readiness=ready, routes=[web.post("/hello", hello)])
    await server.start()
    try:
        yield metrics, server, ready, f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def scrape(base: str) -> Samples:
    """GET /metrics and parse it with prometheus_client's parser: {(sample, labels): value}."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return metric_samples(await response.text())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_report_exactly_what_was_recorded(served: tuple) -> None:
    metrics, _, _, base = served
    metrics.record_read("alpha", QueueDepth(7, 2), 0.03, 1_700_000_000.0)
    metrics.record_read("alpha", None, 5.0, 1_700_000_009.0)
    metrics.record_decision("alpha", decision(9, open=3))
    metrics.record_decision("alpha", decision(4, cancel=1, close=1))
    metrics.record_decision("alpha", decision(4, cancel=2))
    metrics.record_decision("alpha", decision(4))
    pool = [Supply(open=5, opening=1)]
    metrics.watch_supply("alpha", lambda: pool[0])
    pool[0] = Supply(open=4, opening=0)  # read at scrape time, not when watched
    metrics.record_loop("alpha", 0.2)
    metrics.set_paused("alpha", True)
    metrics.session_opened("alpha", 95.0)
    metrics.session_opened("alpha", 0.04)
    metrics.session_closed("alpha", "released")
    metrics.session_closed("alpha", "released")
    metrics.session_closed("alpha", "shutdown")
    metrics.session_open_failed("alpha", "rate_limited")
    metrics.keepalive("alpha", "ok")
    metrics.keepalive("alpha", "gone")
    metrics.ledger_written("alpha")
    metrics.sessions_adopted("alpha", 3)
    metrics.session_seconds("alpha", 12.5)
    metrics.session_seconds("alpha", -3.0)  # a clock stepping back must not make the counter fail

    s = await scrape(base)
    a = {"scaler": "alpha"}
    assert value(s, "vqs_build_info", version=__version__) == 1
    assert value(s, "vqs_queue_waiting", **a) == 7
    assert value(s, "vqs_queue_in_flight", **a) == 2  # the failed read kept the last good values
    assert value(s, "vqs_last_successful_read_timestamp_seconds", **a) == 1_700_000_000.0
    assert value(s, "vqs_source_read_errors_total", **a) == 1
    assert value(s, "vqs_source_read_duration_seconds_count", **a) == 2
    assert value(s, "vqs_source_read_duration_seconds_sum", **a) == pytest.approx(5.03)
    assert value(s, "vqs_source_read_duration_seconds_bucket", le="0.05", **a) == 1
    assert value(s, "vqs_target_sessions", **a) == 4
    assert value(s, "vqs_sessions_open", **a) == 4
    assert value(s, "vqs_sessions_opening", **a) == 0
    assert value(s, "vqs_decisions_total", action="scale_up", **a) == 1
    assert value(s, "vqs_decisions_total", action="scale_down", **a) == 2
    assert value(s, "vqs_decisions_total", action="none", **a) == 1
    assert value(s, "vqs_loop_duration_seconds_count", **a) == 1
    assert value(s, "vqs_paused", **a) == 1
    assert value(s, "vqs_sessions_opened_total", **a) == 2
    assert value(s, "vqs_session_open_duration_seconds_bucket", le="0.05", **a) == 1
    assert value(s, "vqs_session_open_duration_seconds_bucket", le="60.0", **a) == 1
    assert value(s, "vqs_session_open_duration_seconds_bucket", le="120.0", **a) == 2
    assert value(s, "vqs_session_open_duration_seconds_sum", **a) == pytest.approx(95.04)
    assert value(s, "vqs_sessions_closed_total", reason="released", **a) == 2
    assert value(s, "vqs_sessions_closed_total", reason="shutdown", **a) == 1
    assert value(s, "vqs_sessions_closed_total", reason="expired", **a) == 0
    assert value(s, "vqs_session_open_failures_total", reason="rate_limited", **a) == 1
    assert value(s, "vqs_keepalives_total", result="ok", **a) == 1
    assert value(s, "vqs_keepalives_total", result="gone", **a) == 1
    assert value(s, "vqs_keepalives_total", result="error", **a) == 0
    assert value(s, "vqs_ledger_writes_total", **a) == 1
    assert value(s, "vqs_sessions_adopted_total", **a) == 3
    assert value(s, "vqs_session_seconds_total", **a) == 12.5


async def test_measured_startups_reach_the_policy_and_what_it_learns_is_exported(served: tuple) -> None:
    metrics, _, _, base = served
    for seconds in (0.2, 31.0, 29.0, 190.0):
        metrics.session_opened("alpha", seconds)
    startups = metrics.take_startups("alpha")
    assert startups == (0.2, 31.0, 29.0, 190.0) and metrics.take_startups("alpha") == ()
    config = PolicyConfig(max_sessions=10, wait_target="p95 10s")
    made = decide(one_queue(QueueDepth(2, 1)), Supply(1, 0, startups=startups), config, 0.0, PolicyState())
    made = decide(one_queue(QueueDepth(1, 3)), Supply(3, 0), config, 1.0, made.state)
    metrics.record_decision("alpha", made)
    s = await scrape(base)
    learned = made.state.learned
    assert value(s, "vqs_startup_seconds", kind="resume", scaler="alpha") == pytest.approx(learned.startup.resume)
    assert 29 < learned.startup.resume < 31 and 190 < learned.startup.cold < 240
    assert value(s, "vqs_startup_share", kind="warm", scaler="alpha") == pytest.approx(learned.startup.warm_share)
    assert value(s, "vqs_startup_lead_seconds", scaler="alpha") == learned.startup.lead
    assert learned.wait is not None
    assert value(s, "vqs_wait_price_seconds", scaler="alpha") == pytest.approx(learned.wait.price)
    assert learned.wait.aim is not None and 0.0125 <= learned.wait.aim < 0.05
    assert value(s, "vqs_wait_late_share_aim", scaler="alpha") == pytest.approx(learned.wait.aim)
    assert value(s, "vqs_wait_late_share_allowed", scaler="alpha") == pytest.approx(0.05)
    assert value(s, "vqs_wait_spare_sessions", scaler="alpha") == dict(made.terms)["spares"]
    assert value(s, "vqs_forecast_weight", scaler="alpha") == 1.0


async def test_scalers_are_labelled_apart_and_start_at_zero(served: tuple) -> None:
    metrics, _, _, base = served
    metrics.ledger_written("alpha")
    metrics.set_paused("beta", False)
    s = await scrape(base)
    assert value(s, "vqs_ledger_writes_total", scaler="alpha") == 1
    assert value(s, "vqs_ledger_writes_total", scaler="beta") == 0
    assert value(s, "vqs_paused", scaler="beta") == 0
    for scaler in ("alpha", "beta"):
        for action in ("scale_up", "scale_down", "none"):
            assert value(s, "vqs_decisions_total", action=action, scaler=scaler) == 0
        assert value(s, "vqs_source_read_errors_total", scaler=scaler) == 0
    assert not any(labels and dict(labels).get("scaler") == "gamma" for _, labels in s)


async def test_open_latency_buckets_cover_fast_grants_to_ten_minute_cold_starts(served: tuple) -> None:
    metrics, _, _, base = served
    metrics.session_opened("alpha", 599.0)
    s = await scrape(base)
    bounds = sorted(
        float(dict(labels)["le"])
        for name, labels in s
        if name == "vqs_session_open_duration_seconds_bucket" and dict(labels)["le"] != "+Inf"
    )
    assert bounds[0] == 0.05 and bounds[-1] == 600.0
    assert value(s, "vqs_session_open_duration_seconds_bucket", le="450.0", scaler="alpha") == 0
    assert value(s, "vqs_session_open_duration_seconds_bucket", le="600.0", scaler="alpha") == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # the global registry would refuse the second
    first.ledger_written("alpha")
    assert first.registry.get_sample_value("vqs_ledger_writes_total", {"scaler": "alpha"}) == 1
    assert second.registry.get_sample_value("vqs_ledger_writes_total", {"scaler": "alpha"}) is None
    assert REGISTRY.get_sample_value("vqs_ledger_writes_total", {"scaler": "alpha"}) is None


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(served: tuple) -> None:
    metrics, _, _, base = served
    metrics.ledger_written("alpha")
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with http.get(f"{base}/metrics", headers=headers) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            text = await response.text()
    assert 'vqs_ledger_writes_total{scaler="alpha"} 1.0' in text
    assert text.endswith("# EOF\n")


async def test_health_readiness_and_extra_routes(served: tuple) -> None:
    _, _, ready, base = served
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(f"{base}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"ok": True})
        async with http.get(f"{base}/readyz") as response:
            assert (response.status, await response.json()) == (503, {"ready": False, "not_ready": ["alpha"]})
        ready.ready = True
        async with http.get(f"{base}/readyz") as response:
            assert (response.status, await response.json()) == (200, {"ready": True, "not_ready": []})
        ready.ready = False
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
        async with http.post(f"{base}/hello") as response:
            assert (response.status, await response.json()) == (200, {"hello": "world"})
        async with http.get(f"{base}/nowhere") as response:
            assert response.status == 404


async def test_a_taken_port_fails_start_and_stop_frees_it(served: tuple) -> None:
    metrics, server, ready, base = served
    assert isinstance(server.port, int) and server.port > 0
    rival = MetricsServer(metrics, "127.0.0.1", server.port, readiness=ready)
    with pytest.raises(OSError):
        await rival.start()
    await server.stop()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{base}/healthz")
    again = MetricsServer(metrics, "127.0.0.1", server.port, readiness=ready)
    await again.start()
    try:
        assert again.port == server.port
        samples = await scrape(f"http://127.0.0.1:{again.port}")
        assert value(samples, "vqs_build_info", version=__version__) == 1
    finally:
        await again.stop()
