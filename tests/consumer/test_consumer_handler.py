"""The handler side without a queue: payload typing, signatures, threads, unit ids, backoff."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from vqs_consumer import Context, FatalError, handler
from vqs_consumer.backoff import backoff
from vqs_consumer.queues import Delivery
from vqs_consumer.runner import unit_id_of


class Job(BaseModel):
    id: str
    seconds: float


def test_a_model_payload_comes_from_json_or_from_stream_fields() -> None:
    @handler
    async def work(job: Job) -> None: ...

    assert work.decode(b'{"id": "a", "seconds": 1.5}') == Job(id="a", seconds=1.5)
    assert work.decode({"id": "a", "seconds": "1.5"}) == Job(id="a", seconds=1.5)  # stream values are strings
    assert not work.wants_context


def test_a_payload_that_does_not_fit_is_fatal_and_names_the_type() -> None:
    work = handler(lambda job: None)
    typed = handler(_typed)
    with pytest.raises(FatalError, match="not a valid Job"):
        typed.decode(b'{"id": "a"}')
    with pytest.raises(FatalError, match="not a valid"):
        work.decode(b"not json")
    assert work.decode(b'{"any": [1, 2]}') == {"any": [1, 2]}  # no annotation: any JSON


def _typed(job: Job, ctx: Context) -> None: ...


def test_raw_payloads() -> None:
    assert handler(_raw_bytes).decode(b"\x00\xff") == b"\x00\xff"
    assert handler(_raw_text).decode("héllo".encode()) == "héllo"


def _raw_bytes(body: bytes) -> None: ...


def _raw_text(body: str) -> None: ...


def test_a_handler_takes_a_payload_and_maybe_a_context() -> None:
    with pytest.raises(TypeError, match=r"must take \(payload\) or \(payload, ctx\)"):
        handler(lambda: None)
    with pytest.raises(TypeError, match="must take"):
        handler(lambda a, b, c: None)
    with pytest.raises(TypeError, match="must be a function"):
        handler("render")  # type: ignore[arg-type]
    decorated = handler(_typed)
    assert decorated.wants_context
    assert handler(decorated) is decorated  # decorating twice is harmless


async def test_a_plain_function_runs_in_a_thread_so_the_loop_keeps_beating() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    def slow(job: dict[str, Any], ctx: Context) -> str:
        time.sleep(0.3)
        return threading.current_thread().name

    ticker = asyncio.create_task(tick())
    name = await handler(slow)({}, Context("u", 1, "w"))
    ticker.cancel()
    assert name == "vqs-consumer-unit"
    assert ticks >= 10


async def test_errors_from_a_thread_reach_the_runner() -> None:
    def fails(job: Any) -> None:
        raise FatalError("bad input")

    with pytest.raises(FatalError, match="bad input"):
        await handler(fails)({}, Context("u", 1, "w"))


def test_progress_and_cancel_on_the_context() -> None:
    events: list[dict[str, Any]] = []
    ctx = Context("u1", 2, "w", _on_progress=events.append)
    ctx.progress(0.5, "half", step=3)
    assert events[0] | {"t": 0} == {"id": "u1", "worker": "w", "progress": 0.5, "message": "half", "step": 3, "t": 0}
    ctx.raise_if_cancelled()
    ctx.cancel_event.set()
    assert ctx.cancelled
    with pytest.raises(Exception, match="u1 was cancelled"):
        ctx.raise_if_cancelled()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": "job-1", "seconds": "1"}, "job-1"),
        (b'{"id": 42}', "42"),
        (b'{"id": true}', "m-1"),
        (b'{"name": "x"}', "m-1"),
        (b"[1, 2]", "m-1"),
        (b"\xff not json", "m-1"),
    ],
)
def test_a_unit_is_known_by_its_payload_id_else_the_queues(body: Any, expected: str) -> None:
    assert unit_id_of(Delivery("m-1", body, 1)) == expected


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    for attempt in range(1, 12):
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        delays = [backoff(attempt, 2.0, 60.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
