"""What the policy learns survives a restart: the state store (file or Redis) and the scaler loop
that restores it, with a recurring batch whose forecast is used at once after the restart."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from controller.config import PolicyConfig
from controller.decisions import DecisionLog
from controller.loop import NamedSource, ScalerLoop
from controller.memory import FileMemory, LearnedStateError, RedisMemory
from controller.metrics import Metrics
from controller.policy import Decision, Learned, Supply
from controller.policy_startup import StartupState, observe
from controller.sources import QueueDepth

PERIOD, BATCH_AT, BATCH = 600.0, 300.0, 12  # a batch of 12 units at second 300 of every 10 minutes


class Batches:
    """A queue whose units arrive in a batch once a period and are served within 20 s."""

    display_url = "test://batches"

    def __init__(self, clock: list[float]):
        self.clock = clock

    async def depth(self) -> QueueDepth:
        since = self.clock[0] % PERIOD - BATCH_AT
        return QueueDepth(0, BATCH if 0 <= since < 20 else 0)

    async def close(self) -> None:
        return None


class Pool:
    """Holds whatever the decisions ask for, granted at once."""

    def __init__(self) -> None:
        self.sessions = 0

    @property
    def supply(self) -> Supply:
        return Supply(self.sessions, 0)

    def apply(self, decision: Decision) -> None:
        self.sessions += decision.open - decision.cancel - decision.close


def scaler(memory: object, clock: list[float]) -> ScalerLoop:
    config = PolicyConfig(max_sessions=30, wait_target="p95 10s", forecast_period=PERIOD)
    return ScalerLoop("batches", [NamedSource("batches", Batches(clock))], Pool(), config, 1.0, Metrics(), decisions=DecisionLog(),
                      clock=lambda: clock[0], memory=memory)  # type: ignore[arg-type]  # fmt: skip


async def test_the_learned_profile_survives_a_restart_and_forecasts_at_once(tmp_path: Path) -> None:
    clock = [0.0]
    first = scaler(FileMemory(tmp_path, "batches"), clock)
    await first.recall()
    while clock[0] < 2 * PERIOD:  # two periods: the batch is learned
        await first.tick()
        clock[0] += 1
    await first.close()
    assert first.state.learned.profile is not None and first.state.learned.profile.ready

    clock[0] = 2 * PERIOD + BATCH_AT - 40  # the restart, shortly before the next batch
    second = scaler(FileMemory(tmp_path, "batches"), clock)
    await second.recall()
    assert second.state.learned.profile == first.state.learned.profile
    decisions = []
    while clock[0] < 2 * PERIOD + BATCH_AT:
        decisions.append(await second.tick())
        clock[0] += 1
    # Pre-warmed for the batch one start-up ahead, before any unit of it arrived.
    assert max(d.target for d in decisions) >= BATCH
    assert all(dict(d.terms)["work"] == 0 for d in decisions)

    forgetful = scaler(None, clock)
    clock[0] = 2 * PERIOD + BATCH_AT - 40
    fresh = [await forgetful.tick() for _ in range(39)]
    assert max(d.target for d in fresh) < BATCH  # without the store it would have to learn again


def test_an_unreadable_record_is_reported_not_fatal(tmp_path: Path) -> None:
    memory = FileMemory(tmp_path, "alpha")
    assert memory.load() is None
    memory.path.write_text('{"version": 1, "learned": {"startup": 7}}')
    with pytest.raises(LearnedStateError, match=r"alpha.learned.json is unreadable \(TypeError\); learning afresh"):
        memory.load()


def test_the_file_is_private_and_round_trips(tmp_path: Path) -> None:
    memory = FileMemory(tmp_path / "state", "alpha")
    learned = Learned(observe(StartupState(), [31.0, 190.0]))
    memory.save(learned)
    assert memory.load() == learned
    assert memory.path.stat().st_mode & 0o777 == 0o600


def test_redis_keeps_it_beside_the_ledger(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    memory = RedisMemory(f"{redis_url}?prefix={prefix}", "alpha")
    try:
        assert memory.load() is None
        learned = Learned(observe(StartupState(), [31.0, 190.0]))
        memory.save(learned)
        assert memory.key == f"{prefix}:alpha:learned"
        assert RedisMemory(f"{redis_url}?prefix={prefix}", "alpha").load() == learned
    finally:
        memory._client.delete(memory.key)
        memory.close()


def test_an_unreachable_redis_names_the_key_and_hides_the_password() -> None:
    memory = RedisMemory("redis://:hunter2@127.0.0.1:1/0", "alpha", timeout=0.2)
    where = r"vast-queue-scaler:alpha:learned on redis://:\*\*\*@"
    with pytest.raises(LearnedStateError, match=r"cannot read learned state " + where) as caught:
        memory.load()
    assert "hunter2" not in str(caught.value)
