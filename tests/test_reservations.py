"""The reservation pool's retry loop (`reservation: reserve`), against a scripted endpoint.

The end-to-end run against the emulator's legacy worker is in tests/e2e/test_run_modes.py.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import pytest

from controller import reservations as reservations_module
from controller.metrics import Metrics
from controller.policy import Decision, PolicyState
from controller.reservations import ReservationPool
from controller.vast import ReservationTracker, VastError

Hold = Callable[[ReservationTracker], Awaitable[None]]


class ScriptedEndpoint:
    """`hold_reservation` runs the next script of `holds` (the last one again when they run out)."""

    def __init__(self, *holds: Hold):
        self.holds = list(holds)
        self.tries = 0

    async def hold_reservation(self, *, cost: float, duration: float, tracker: ReservationTracker) -> None:
        self.tries += 1
        await self.holds[min(self.tries, len(self.holds)) - 1](tracker)


async def refused(_: ReservationTracker) -> None:
    raise VastError("rejected", "reservation answered HTTP 503", 503)


async def held_then_dropped(tracker: ReservationTracker) -> None:
    tracker.status = ReservationTracker.HELD
    await asyncio.sleep(0)
    raise VastError("unreachable", "the worker went away")


async def held_until_cancelled(tracker: ReservationTracker) -> None:
    tracker.status = ReservationTracker.HELD
    await asyncio.Event().wait()


async def swallows_the_cancel(_: ReservationTracker) -> None:
    # On Python 3.11 a client library can swallow a cancel (asyncio.wait_for) and fail instead.
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise VastError("timeout", "the call was cut short") from None


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reservations_module, "backoff", lambda attempt: 0.0)


def reservations(endpoint: ScriptedEndpoint) -> ReservationPool:
    return ReservationPool("jobs", endpoint, Metrics(), duration=3600, session_cost=100,  # type: ignore[arg-type]
                           max_concurrent_opens=4)  # fmt: skip


def decision(open: int = 0, cancel: int = 0, close: int = 0) -> Decision:
    return Decision(target=0, open=open, cancel=cancel, close=close, reason="test", state=PolicyState())


async def turns(count: int = 20) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_reservation_no_worker_took_is_tried_again_until_one_holds_it() -> None:
    endpoint = ScriptedEndpoint(refused, refused, held_until_cancelled)
    pool = reservations(endpoint)
    pool.apply(decision(open=1))
    await turns()
    assert endpoint.tries == 3 and (pool.supply.open, pool.supply.opening) == (1, 0)
    pool.apply(decision(close=1))
    await turns()
    assert (pool.supply.open, pool.supply.opening) == (0, 0)


async def test_a_held_reservation_that_fails_ends_and_the_policy_decides_anew() -> None:
    endpoint = ScriptedEndpoint(held_then_dropped, held_until_cancelled)
    pool = reservations(endpoint)
    pool.apply(decision(open=1))
    await turns()
    assert endpoint.tries == 1 and (pool.supply.open, pool.supply.opening) == (0, 0)


async def test_a_cancelled_reservation_whose_cancel_the_client_turned_into_an_error_ends_quietly() -> None:
    # Neither tried again nor left behind as an error nobody read (asyncio logs those).
    unread: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: unread.append(context))
    endpoint = ScriptedEndpoint(swallows_the_cancel)
    pool = reservations(endpoint)
    pool.apply(decision(open=1))
    await turns(2)
    pool.apply(decision(cancel=1))
    await turns()
    gc.collect()  # an unread error is reported when its task is collected
    assert endpoint.tries == 1 and (pool.supply.open, pool.supply.opening) == (0, 0)
    assert unread == []
