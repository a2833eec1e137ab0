"""ScalerLoop driven tick by tick with a scripted source, a recording pool and a fake clock."""

from __future__ import annotations

import logging

import pytest

from controller.config import PolicyConfig
from controller.loop import MISSING_REPEAT_SECONDS, ScalerLoop
from controller.metrics import Metrics
from controller.policy import Decision, Supply
from controller.sources import QueueDepth


class ScriptedSource:
    display_url = "redis://127.0.0.1:6379/0?stream=jobs&group=workers"

    def __init__(self, depth: QueueDepth):
        self.next = depth

    async def depth(self) -> QueueDepth:
        return self.next

    async def close(self) -> None:
        pass


class RecordingPool:
    def __init__(self) -> None:
        self.applied: list[Decision] = []

    @property
    def supply(self) -> Supply:
        return Supply(open=0, opening=0)

    def apply(self, decision: Decision) -> None:
        self.applied.append(decision)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def missing_gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("vqs_source_missing", {"scaler": "s", "source": "s"})


async def test_a_missing_stream_reads_as_zero_and_is_said_once_per_change_or_repeat_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = "stream 'jobs' does not exist"
    source, pool, clock, metrics = ScriptedSource(QueueDepth(0, 0, missing=missing)), RecordingPool(), Clock(), Metrics()
    loop = ScalerLoop("s", source, pool, PolicyConfig(), 1.0, metrics, clock=clock)

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
