"""ScalerLoop driven tick by tick with a scripted source, a recording pool and a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from fakes import Clock, RecordingPool, ScriptedSource

from controller.config import PolicyConfig
from controller.decisions import DecisionLog
from controller.loop import MISSING_REPEAT_SECONDS, NamedSource, ScalerLoop
from controller.metrics import Metrics
from controller.sources import QueueDepth


def missing_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("vqs_source_missing", {"scaler": "s", "source": "s"})


async def test_a_missing_stream_reads_as_zero_and_is_said_once_per_change_or_repeat_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = "stream 'jobs' does not exist"
    source, pool, clock, metrics = ScriptedSource(QueueDepth(0, 0, missing=missing)), RecordingPool(), Clock(), Metrics()
    loop = ScalerLoop("s", [NamedSource("s", source)], pool, PolicyConfig(), 1.0, metrics, clock=clock)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.INFO, logger="controller.loop"):
        for _ in range(10):
            decision = await loop.tick()
            clock.now += 1
        assert decision.target == 0 and not pool.applied
        assert warnings() == [f"queue reads as empty: {missing}"]
        assert missing_gauge(metrics) == 1

        clock.now += MISSING_REPEAT_SECONDS
        await loop.tick()
        assert len(warnings()) == 2

        other = "stream 'jobs' has no consumer group 'workers' (groups: none)"
        source.next = QueueDepth(0, 0, missing=other)
        await loop.tick()
        await loop.tick()
        assert warnings()[2:] == [f"queue reads as empty: {other}"]

        source.next = QueueDepth(2, 0)
        decision = await loop.tick()
        assert decision.target == 2
        assert missing_gauge(metrics) == 0
        assert "queue found; reading it again" in [r.getMessage() for r in caplog.records]
        assert len(warnings()) == 3


async def test_advise_mode_decides_and_records_but_never_acts() -> None:
    pool, clock, log = RecordingPool(), Clock(), DecisionLog()
    loop = ScalerLoop("s", [NamedSource("s", ScriptedSource(QueueDepth(3, 0)))], pool, PolicyConfig(), 1.0, Metrics(),
                      decisions=log, clock=clock, mode="advise")  # fmt: skip
    for _ in range(30):
        decision = await loop.tick()
        clock.now += 1
    assert (decision.target, decision.open, decision.act) == (3, 3, False)
    assert pool.applied == []
    # Recorded once, not every tick: the same advice repeated is not news.
    assert [(d["to_open"], d["acted"], d["mode"]) for d in log.list()] == [(3, False, "advise")]


async def test_a_replica_that_fails_its_fencing_check_does_not_act() -> None:
    pool = RecordingPool()

    async def deposed() -> bool:
        return False

    loop = ScalerLoop("s", [NamedSource("s", ScriptedSource(QueueDepth(2, 0)))], pool, PolicyConfig(), 1.0, Metrics(), acting=deposed)
    decision = await loop.tick()
    assert decision.open == 2 and pool.applied == []


async def test_a_failed_read_holds_the_sessions_then_falls_back_after_error_hold() -> None:
    pool, clock = RecordingPool(open_=3), Clock()
    source = ScriptedSource(QueueDepth(3, 0))
    policy = PolicyConfig(error_hold=60, fallback_sessions=1)
    loop = ScalerLoop("s", [NamedSource("s", source)], pool, policy, 1.0, Metrics(), clock=clock)
    await loop.tick()
    source.next = None
    for _ in range(59):
        clock.now += 1
        decision = await loop.tick()
        assert (decision.target, decision.close) == (3, 0), decision.reason
    assert pool.applied == []
    clock.now += 2
    decision = await loop.tick()
    assert (decision.target, decision.close) == (1, 2)
    assert pool.applied == [decision]


class HangingSource(ScriptedSource):
    """A source whose close hangs until every source of its scaler has begun closing."""

    def __init__(self, started: list[str], name: str, count: int):
        super().__init__(QueueDepth(0, 0))
        self.started, self.name, self.count = started, name, count
        self.closed = False

    async def close(self) -> None:
        self.started.append(self.name)
        while len(self.started) < self.count:
            await asyncio.sleep(0.01)
        self.closed = True


async def test_sources_close_together_so_a_scaler_stops_within_one_close_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each close waits for the others to start: closed one after another, each would time out.
    monkeypatch.setattr("controller.loop.CLOSE_SECONDS", 1.0)
    started: list[str] = []
    sources = [HangingSource(started, f"q{i}", 3) for i in range(3)]
    loop = ScalerLoop("s", [NamedSource(s.name, s) for s in sources], RecordingPool(), PolicyConfig(), 1.0, Metrics())
    await loop.close()
    assert [s.closed for s in sources] == [True, True, True]


async def test_the_loop_owns_pause_and_mode_and_a_reload_resets_both() -> None:
    pool, clock = RecordingPool(), Clock()
    loop = ScalerLoop("s", [NamedSource("s", ScriptedSource(QueueDepth(3, 0)))], pool, PolicyConfig(), 1.0, Metrics(), clock=clock)

    loop.pause()
    decision = await loop.tick()
    assert (decision.reason, pool.applied) == ("paused", [])
    loop.pause(False)
    loop.set_mode("advise")
    decision = await loop.tick()
    assert (decision.open, decision.act, pool.applied) == (3, False, [])

    loop.reconfigure(PolicyConfig(max_opens_per_tick=2), 5.0)
    decision = await loop.tick()
    assert (decision.open, decision.act, loop.poll_interval) == (2, True, 5.0)
    assert pool.applied == [decision]
    assert loop.policy == PolicyConfig(max_opens_per_tick=2), "runtime control never rewrites the policy"


async def test_a_cancel_a_client_swallowed_or_that_lands_as_the_loop_wakes_still_stops_it() -> None:
    # Else the loop ticks on after shutdown and the shutdown waits for ever.
    async def swallows_a_cancel() -> bool:
        """The fencing check's Redis client returning from a cancelled call (redis-py on 3.11 can)."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        return False

    loop = ScalerLoop("s", [NamedSource("s", ScriptedSource(QueueDepth(2, 0)))], RecordingPool(), PolicyConfig(), 60.0, Metrics(),
                      acting=swallows_a_cancel)  # fmt: skip
    running = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)  # checking it may act
    running.cancel()
    done, _ = await asyncio.wait([running], timeout=2)
    assert done and running.cancelled(), "the loop went on after a swallowed cancel"

    # Python 3.11's asyncio.wait_for drops a cancel that lands just after what it waits on completed.
    loop = ScalerLoop("s", [NamedSource("s", ScriptedSource(QueueDepth(0, 0)))], RecordingPool(), PolicyConfig(), 60.0, Metrics())
    running = asyncio.create_task(loop.run())
    await asyncio.sleep(0.1)  # in its sleep between ticks
    loop.wake()
    await asyncio.sleep(0)  # the wake has happened; the loop has not yet resumed
    running.cancel()
    done, _ = await asyncio.wait([running], timeout=2)
    assert done and running.cancelled(), "the loop went on after it was cancelled"
