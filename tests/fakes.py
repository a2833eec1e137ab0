"""In-memory stand-ins for a scaler's parts: a scripted queue, a pool that records, a clock you move."""

from __future__ import annotations

from controller.policy import Decision, Supply
from controller.sources import QueueDepth, SourceError


class ScriptedSource:
    display_url = "redis://127.0.0.1:6379/0?stream=jobs&group=workers"

    def __init__(self, depth: QueueDepth | None):
        self.next = depth  # None: the read fails

    async def depth(self) -> QueueDepth:
        if self.next is None:
            raise SourceError(f"{self.display_url}: no answer within 5s")
        return self.next

    async def close(self) -> None:
        pass


class RecordingPool:
    def __init__(self, open_: int = 0) -> None:
        self.applied: list[Decision] = []
        self.open = open_

    @property
    def supply(self) -> Supply:
        return Supply(open=self.open, opening=0, ages=(1000.0,) * self.open)

    def apply(self, decision: Decision) -> None:
        self.applied.append(decision)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now
