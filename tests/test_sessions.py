"""SessionPool against a fake endpoint, a real FileLedger and a fake clock: no sleeps, no network."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from controller import sessions as sessions_module
from controller.ledger import FileLedger
from controller.metrics import Metrics
from controller.policy import Decision, PolicyState
from controller.sessions import BEHIND_SHARE, SessionPool
from controller.vast import GrantedSession, SessionGone, VastError

LEASE = 60.0


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeEndpoint:
    """Sessions as a worker keeps them; `faults[op]` lists the errors its next calls raise."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.expires: dict[str, float] = {}
        self.calls: list[tuple[str, str, float]] = []  # (op, session id, when)
        self.faults: dict[str, list[BaseException]] = {}
        self.hold_opens: asyncio.Event | None = None  # set: opens wait for it
        self.hold_visits: asyncio.Event | None = None
        self._ids = iter(range(1, 10**6))

    def _fault(self, op: str, session_id: str) -> None:
        self.calls.append((op, session_id, self.clock()))
        queued = self.faults.get(op)
        if queued:
            raise queued.pop(0)

    async def open_session(self, *, lifetime: float, **_: Any) -> GrantedSession:
        if self.hold_opens is not None:
            await self.hold_opens.wait()
        self._fault("open", "")
        session_id = f"s{next(self._ids)}"
        self.expires[session_id] = self.clock() + lifetime
        auth = {"url": "http://worker", "signature": "secret-signature"}
        return GrantedSession(session_id, auth, self.expires[session_id], lifetime)

    async def keep_alive(self, session: GrantedSession) -> None:
        if self.hold_visits is not None:
            await self.hold_visits.wait()
        self._fault("renew", session.session_id)
        if self.expires.get(session.session_id, 0) <= self.clock():
            raise SessionGone(session.session_id)
        self.expires[session.session_id] += session.lifetime

    async def get_session(self, session: GrantedSession) -> float:
        self._fault("check", session.session_id)
        if self.expires.get(session.session_id, 0) <= self.clock():
            raise SessionGone(session.session_id)
        return self.expires[session.session_id]

    async def close_session(self, session: GrantedSession) -> bool:
        self._fault("close", session.session_id)
        return self.expires.pop(session.session_id, None) is not None

    def ops(self, op: str, session_id: str | None = None) -> list[float]:
        return [t for o, sid, t in self.calls if o == op and session_id in (None, sid)]


def decision(open: int = 0, cancel: int = 0, close: int = 0, close_min_age: float = 0.0) -> Decision:
    return Decision(target=0, open=open, cancel=cancel, close=close, reason="test", state=PolicyState(),
                    close_min_age=close_min_age)  # fmt: skip


@pytest.fixture(autouse=True)
def no_jitter(monkeypatch):
    """Every backoff at its upper bound, and recorded: retries are predictable and free of sleeps."""
    attempts: list[int] = []

    def at_cap(attempt: int, *, base: float = 0.5, cap: float = 15.0) -> float:
        attempts.append(attempt)
        return min(cap, base * 2**attempt)

    monkeypatch.setattr(sessions_module, "backoff", at_cap)
    real_sleep = asyncio.sleep
    monkeypatch.setattr(sessions_module.asyncio, "sleep", lambda _seconds: real_sleep(0))
    return attempts


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def endpoint(clock) -> FakeEndpoint:
    return FakeEndpoint(clock)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def ledger_dir(tmp_path):
    return tmp_path / "state"


@pytest.fixture
def pool(endpoint, metrics, ledger_dir, clock) -> SessionPool:
    return make_pool(endpoint, metrics, ledger_dir, clock)


def make_pool(endpoint, metrics, ledger_dir, clock, **options: Any) -> SessionPool:
    options = {"on_close_route": "http://controller/callback", **options}
    return SessionPool("jobs", endpoint, FileLedger(ledger_dir, "jobs"), metrics, lease_seconds=LEASE,
                       session_cost=100, open_timeout=60, max_concurrent_opens=16, clock=clock, **options)  # fmt: skip


async def settle(pool: SessionPool, *, rounds: int = 20) -> None:
    """Let every task the pool started run to completion (ledger writes run in a thread)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
    while pool._background or pool._opening:
        await asyncio.sleep(0.001)


async def advance(pool: SessionPool, clock: Clock, seconds: float) -> None:
    """Move the clock on tick by tick, letting each tick's visits finish."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now = min(end, clock.now + pool.tick_seconds)
        pool.tick()
        await settle(pool)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"scaler": "jobs", **labels}) or 0.0


async def stored(pool: SessionPool, ledger_dir) -> set[str]:
    """What the ledger holds once the next tick has written the changes (closes, renewals)."""
    pool.tick()
    await settle(pool)
    await pool._ledger.flush()  # the tick's write runs in a thread that settle() does not track
    return {r.session_id for r in FileLedger(ledger_dir, "jobs").load()}


async def test_a_session_counts_as_open_only_once_its_record_is_stored(pool, endpoint, ledger_dir, monkeypatch):
    written = threading.Event()
    real_write = FileLedger.write

    def slow_write(self, changes):
        written.wait(5)
        real_write(self, changes)

    monkeypatch.setattr(FileLedger, "write", slow_write)
    pool.apply(decision(open=1))
    for _ in range(50):
        await asyncio.sleep(0.001)
    assert endpoint.expires, "granted"
    assert (pool.supply.open, pool.supply.opening) == (0, 1), "granted, not yet stored: still opening"
    written.set()
    await settle(pool)
    assert (pool.supply.open, pool.supply.opening) == (1, 0)
    assert {r.session_id for r in FileLedger(ledger_dir, "jobs").load()} == set(endpoint.expires), "stored at once"


async def test_a_granted_session_moves_from_opening_to_open_in_one_step(pool, endpoint):
    pool.apply(decision(open=3))
    seen = set()
    while pool.supply.open < 3:
        supply = pool.supply
        seen.add((supply.open, supply.opening))
        await asyncio.sleep(0)
    assert all(open + opening == 3 for open, opening in seen), f"counted twice or lost: {sorted(seen)}"


async def test_renewals_keep_the_remaining_lease_within_half_and_one_and_a_half_leases(pool, endpoint, clock):
    pool.apply(decision(open=2))
    await settle(pool)
    clock.now += 7  # a second session granted later
    pool.apply(decision(open=1))
    await settle(pool)
    remaining: list[float] = []
    for _ in range(int(5 * LEASE / pool.tick_seconds)):
        await advance(pool, clock, pool.tick_seconds)
        remaining += [expires - clock.now for expires in endpoint.expires.values()]
    assert len(endpoint.expires) == 3 and len(endpoint.ops("renew")) >= 3 * 4
    assert 0.5 * LEASE - pool.tick_seconds <= min(remaining) and max(remaining) <= 1.5 * LEASE
    assert len(endpoint.ops("check")) == 0, "with close callbacks a session is visited only to renew it"


async def test_without_callbacks_each_session_is_also_checked_for_a_release(endpoint, metrics, ledger_dir, clock):
    pool = make_pool(endpoint, metrics, ledger_dir, clock, on_close_route=None)
    pool.apply(decision(open=1))
    await settle(pool)
    (session_id,) = endpoint.expires
    endpoint.expires[session_id] = clock.now  # the consumer released it
    await advance(pool, clock, 0.4 * LEASE + 1)
    assert pool.supply.open == 0 and len(endpoint.ops("check")) == 1
    assert sample(metrics, "vqs_sessions_closed_total", reason="released") == 1


async def test_the_youngest_sessions_past_boot_grace_are_closed_first(pool, endpoint, clock, ledger_dir):
    for _ in range(3):
        pool.apply(decision(open=1))
        await settle(pool)
        clock.now += 10
    oldest, middle, youngest = endpoint.expires  # granted 30, 20 and 10 s ago
    pool.apply(decision(close=1, close_min_age=15))
    await settle(pool)
    assert set(endpoint.expires) == {oldest, youngest}, "the youngest is within boot grace; the next is closed"
    assert await stored(pool, ledger_dir) == {oldest, youngest}


async def test_cancel_drops_a_request_and_leaves_open_sessions_alone(pool, endpoint, metrics):
    pool.apply(decision(open=1))
    await settle(pool)
    endpoint.hold_opens = asyncio.Event()
    pool.apply(decision(open=1))
    await asyncio.sleep(0)
    assert (pool.supply.open, pool.supply.opening) == (1, 1)
    pool.apply(decision(cancel=1))
    endpoint.hold_opens.set()
    await settle(pool)
    assert (pool.supply.open, pool.supply.opening) == (1, 0) and len(endpoint.expires) == 1
    assert sample(metrics, "vqs_sessions_closed_total", reason="cancelled") == 1


async def test_a_failing_renewal_backs_off_per_session_and_keeps_its_cause(pool, endpoint, clock, metrics, caplog):
    pool.apply(decision(open=2))
    await settle(pool)
    failing, healthy = endpoint.expires
    endpoint.faults["renew"] = []
    original = endpoint.keep_alive

    async def keep_alive(session):
        if session.session_id == failing and endpoint.clock() < 1000 + LEASE - 5:
            endpoint.calls.append(("renew", failing, endpoint.clock()))
            raise VastError("server_error", "Vast answered HTTP 503", 503)
        await original(session)

    endpoint.keep_alive = keep_alive
    with caplog.at_level(logging.WARNING, logger="controller.sessions"):
        await advance(pool, clock, LEASE)
    tries = endpoint.ops("renew", failing)
    gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
    assert 3 <= len(tries) < LEASE / 2 / pool.tick_seconds, "retried, but not on every tick"
    assert gaps[1] > gaps[0], f"the gaps grow: {gaps}"
    assert len(endpoint.ops("renew", healthy)) == 1
    assert pool.supply.open == 2 and endpoint.expires[failing] > clock.now, "renewed before its lease ran out"
    assert sample(metrics, "vqs_vast_errors_total", op="renew", reason="http_503") == len(tries) - 1
    said = [r for r in caplog.records if getattr(r, "reason", None) == "http_503"]
    assert len(said) == 1 and "503" in said[0].error, "said once per streak, with its cause"


async def test_a_crashed_workers_session_is_lost_not_released(pool, endpoint, clock, metrics):
    pool.apply(decision(open=1))
    await settle(pool)
    endpoint.faults["renew"] = [VastError("unavailable", "Vast unreachable: connection refused",
                                          reason="connection_refused") for _ in range(100)]  # fmt: skip
    await advance(pool, clock, 1.5 * LEASE)
    assert pool.supply.open == 0
    assert sample(metrics, "vqs_sessions_closed_total", reason="lost") == 1
    assert sample(metrics, "vqs_sessions_closed_total", reason="released") == 0


async def test_a_close_backs_off_and_does_not_give_up_after_three_tries(pool, endpoint, metrics, no_jitter, ledger_dir):
    pool.apply(decision(open=1))
    await settle(pool)
    endpoint.faults["close"] = [VastError("timeout", "timed out waiting for Vast", reason="timeout") for _ in range(5)]
    no_jitter.clear()
    pool.apply(decision(close=1))
    await settle(pool)
    assert len(endpoint.ops("close")) == 6 and not endpoint.expires
    assert no_jitter == [0, 1, 2, 3, 4], "one growing backoff per retry"
    assert sample(metrics, "vqs_sessions_closed_total", reason="closed") == 1
    assert sample(metrics, "vqs_vast_errors_total", op="close", reason="timeout") == 5
    assert await stored(pool, ledger_dir) == set()


async def test_renewals_behind_stop_the_opens_until_they_catch_up(pool, endpoint, clock, metrics, caplog):
    pool.apply(decision(open=2))
    await settle(pool)
    endpoint.hold_visits = asyncio.Event()
    with caplog.at_level(logging.INFO, logger="controller.sessions"):
        clock.now += LEASE / 2  # both renewals due; they hang
        pool.tick()
        await asyncio.sleep(0)
        assert not pool.behind
        clock.now += BEHIND_SHARE * LEASE + 1
        pool.tick()
        assert pool.behind and sample(metrics, "vqs_renewals_behind") == 1
        pool.apply(decision(open=3))
        assert pool.supply.opening == 0, "no opens while renewals are behind"
        pool.tick()  # still behind: said once
        endpoint.hold_visits.set()
        await settle(pool)
        pool.tick()
    assert not pool.behind and sample(metrics, "vqs_renewals_behind") == 0
    assert len(endpoint.expires) == 2 and all(e - clock.now > LEASE for e in endpoint.expires.values())
    lines = [r.getMessage() for r in caplog.records if "renewals" in r.getMessage()]
    assert len(lines) == 2, lines
    pool.apply(decision(open=1))
    assert pool.supply.opening == 1


async def test_adopt_keeps_live_sessions_and_forgets_the_rest(pool, endpoint, metrics, ledger_dir, clock):
    pool.apply(decision(open=3))
    await settle(pool)
    await pool.shutdown(release=False)
    gone = next(iter(endpoint.expires))
    del endpoint.expires[gone]
    restarted = make_pool(endpoint, metrics, ledger_dir, clock)
    assert await restarted.adopt() == 2
    assert await stored(restarted, ledger_dir) == set(endpoint.expires)
    await advance(restarted, clock, LEASE)
    assert len(endpoint.ops("renew")) == 2, "adopted sessions are renewed"


async def test_shutdown_with_release_closes_every_session(pool, endpoint, ledger_dir):
    pool.apply(decision(open=3))
    await settle(pool)
    await pool.shutdown(release=True)
    assert not endpoint.expires and await stored(pool, ledger_dir) == set()


async def test_a_cancelled_open_whose_cancel_the_client_turned_into_an_error_is_not_tried_again(pool, endpoint):
    # On Python 3.11 a client library can swallow a cancel (asyncio.wait_for) and fail instead:
    # the retry loop must still end, or a dropped request opens a session later.
    tries = 0

    async def open_swallowing_the_cancel(**_: Any) -> GrantedSession:
        nonlocal tries
        tries += 1
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            raise VastError("timeout", "the call was cut short") from None
        raise AssertionError("unreachable")

    endpoint.open_session = open_swallowing_the_cancel
    pool.apply(decision(open=1))
    await asyncio.sleep(0)
    pool.apply(decision(cancel=1))
    await settle(pool)
    for _ in range(20):  # room for a retry that should not come
        await asyncio.sleep(0)
    assert tries == 1 and pool.supply.opening == 0
