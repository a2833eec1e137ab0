"""The runtime's promises, for every queue kind, with real `vqs-consumer` processes and real servers.

Depth is read with the controller's own source, so "in flight" is what the controller counts.
"""

from __future__ import annotations

from consumer_handlers import STARTED
from consumer_support import LEASE, job
from support import eventually


async def test_a_unit_whose_worker_is_killed_is_redone_by_another(queue, workers, control):
    unit = job(slow_on="first", slow_seconds=60, seconds=0.1)
    await queue.put(unit)
    first = await workers(queue, "first")
    await _working_on(first, unit)
    first.kill9()
    await first.exit_code()

    second = await workers(queue, "second")
    result = await queue.result_for(unit["id"], timeout=10 * LEASE)
    assert (result["status"], result["worker"], result["attempt"]) == ("done", "second", 2), second.output()
    await queue.drained()
    assert await queue.read_dead() == []


async def test_a_retryable_error_is_retried_then_dead_lettered(queue, workers):
    unit = job(fail="retryable")
    await queue.put(unit)
    worker = await workers(queue, "only", "--max-attempts", "3")
    result = await queue.result_for(unit["id"])
    assert (result["status"], result["attempt"]) == ("failed", 3), worker.output()
    assert "failed 3 times" in result["error"]
    dead = await eventually(queue.read_dead, 10, what="the dead letter")
    assert [d["id"] for d in dead] == [unit["id"]]
    await queue.drained()
    assert [r["id"] for r in await queue.results()] == [unit["id"]]  # one record, after the last attempt


async def test_a_fatal_error_is_dead_lettered_at_once(queue, workers):
    unit = job(fail="fatal")
    await queue.put(unit)
    worker = await workers(queue, "only", "--max-attempts", "5")
    result = await queue.result_for(unit["id"])
    assert (result["status"], result["attempt"]) == ("failed", 1), worker.output()
    assert result["error"] == "fatal: never"
    dead = await eventually(queue.read_dead, 10, what="the dead letter")
    assert [d["id"] for d in dead] == [unit["id"]]
    await queue.drained()


async def test_release_is_called_once_per_idle_transition(queue, workers, control):
    burst = [job(seconds=0.3) for _ in range(3)]
    for unit in burst:
        await queue.put(unit)
    worker = await workers(queue, "only")
    for unit in burst:
        await queue.result_for(unit["id"])
    await eventually(lambda: len(control.releases) >= 1, 10, what="the release after the burst")
    # The burst was worked back to back: no release between its units.
    assert len(control.releases) == 1

    # A failing control server: the release is retried until it lands, and still counts once.
    control.failures = 2
    late = job(seconds=0.1)
    await queue.put(late)
    await queue.result_for(late["id"])
    await eventually(lambda: len(control.releases) >= 2, 20, what="the release after the late unit")

    worker.terminate()  # idle now: stopping releases nothing more
    assert await worker.exit_code() == 0, worker.output()
    assert len(control.releases) == 2 and control.failures == 0, worker.output()


async def test_sigterm_mid_unit_lets_it_finish_within_the_grace_period(queue, workers, control):
    unit = job(seconds=2)
    await queue.put(unit)
    worker = await workers(queue, "only", "--grace", "20")
    await _working_on(worker, unit)
    worker.terminate()
    assert await worker.exit_code() == 0, worker.output()
    assert (await queue.result_for(unit["id"], timeout=10))["status"] == "done", worker.output()
    assert await queue.depth() == (0, 0), worker.output()
    assert len(control.releases) == 1, worker.output()


async def test_sigterm_mid_unit_hands_back_what_outlives_the_grace_period(queue, workers, control):
    unit = job(slow_on="first", slow_seconds=60, seconds=0.1)
    await queue.put(unit)
    worker = await workers(queue, "first", "--grace", "0.5")
    await _working_on(worker, unit)
    worker.terminate()
    assert await worker.exit_code() == 0, worker.output()
    # Nothing in flight: the unit waits for the next worker, which finishes it.
    await eventually(lambda: _depth_is(queue, (1, 0)), 10, what="the unit back as waiting work")
    assert len(control.releases) == 1
    assert await queue.results() == []
    await workers(queue, "second")
    assert (await queue.result_for(unit["id"]))["worker"] == "second"
    await queue.drained()


async def _working_on(worker, unit) -> None:
    """Until `worker`'s handler has started `unit`.

    The queue shows a unit in flight once it is taken, a moment before the runner holds it: a stop
    in that moment hands it back unstarted, which is right, but not what these tests stop.
    """
    await eventually(lambda: f"{STARTED} {unit['id']}" in worker.output(), 20, what=f"{worker.name} working on the unit")


async def _depth_is(queue, expected: tuple[int, int]) -> bool:
    return await queue.depth() == expected
