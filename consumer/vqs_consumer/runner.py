"""The consume loop: take a unit, work, finish it, take the next one *before* releasing the session.

Session hygiene: after a unit, a waiting unit is taken at once (the session stays on this busy
worker); only when none waits is the session released, once per busy-to-idle transition, retried
until it succeeds. On stop (SIGTERM) no new unit is taken; the unit at hand gets `grace` seconds to
finish, else it is handed back as waiting work; then the session is released if this worker was busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vqs_consumer.backoff import backoff, retrying
from vqs_consumer.handler import Cancelled, Context, FatalError, Handler, RetryableError, handler, jsonable
from vqs_consumer.health import Monitor
from vqs_consumer.queues import Delivery, Queue, QueueError, QueueOptions, QueueSetupError, describe, from_url
from vqs_consumer.release import Releaser
from vqs_consumer.settings import Settings

log = logging.getLogger("vqs_consumer")

#: Progress events kept for publishing while the queue is slow; older ones are dropped.
PROGRESS_KEPT = 100
#: A progress call renews the lease at most this often (the heartbeat does in any case).
PROGRESS_GAP = 1.0


class Outcome(enum.Enum):
    DONE = "done"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    HANDED_BACK = "handed_back"


class Runner:
    """Runs one handler over one queue until `stop()`."""

    def __init__(
        self, settings: Settings, function: Any, *, queue: Queue | None = None, monitor: Monitor | None = None
    ) -> None:
        self.settings = settings
        self.handler: Handler = handler(function)
        #: /health and /metrics; the CLI starts it before the handler loads (see `Monitor`).
        self.monitor = monitor or Monitor(settings)
        self.metrics, self.health = self.monitor.metrics, self.monitor.health
        self._checked = asyncio.Event()
        self.health.on_first_check = self._on_first_check
        self._loop: asyncio.AbstractEventLoop | None = None
        options = QueueOptions(
            name=settings.name, lease=settings.lease, timeout=settings.timeout, dead_letter=settings.dead_letter,
            results=settings.results, progress=settings.progress, cancel=settings.cancel,
        )  # fmt: skip
        self.queue: Queue = queue or from_url(settings.source, options)
        self.releaser = Releaser(
            settings.control_port or None, self.metrics, timeout=settings.timeout, give_up_after=settings.release_for
        )
        self._stopping = asyncio.Event()
        self._stop_deadline = float("inf")
        self._take_failures = 0

    def stop(self) -> None:
        """Finish (or hand back) the unit at hand, release, and return from `run()`."""
        if not self._stopping.is_set():
            log.info("stopping: no new units; the one at hand has %.0fs to finish", self.settings.grace)
            self._stop_deadline = time.monotonic() + self.settings.grace
            self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _on_first_check(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._checked.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.monitor.start()
        ticker = asyncio.create_task(self._tick())
        try:
            if await self._open() and await self._until_ready():
                await self._consume()
        finally:
            ticker.cancel()
            with contextlib.suppress(QueueError):
                await self.queue.close()
            self.monitor.stop()

    async def _tick(self) -> None:
        while True:
            self.health.beat_loop()
            await asyncio.sleep(1.0)

    async def _open(self) -> bool:
        """Open the queue, retrying while it is unreachable; False when stopped first."""
        attempt = 0
        while not self.stopping:
            attempt += 1
            try:
                await self.queue.open()
                log.info("consuming %s as %s", self.queue.display_url, self.settings.name)
                self.health.step("idle")
                return True
            except QueueSetupError:
                raise
            except QueueError as exc:
                self.metrics.queue_errors.labels("open").inc()
                log.warning("cannot open the queue yet: %s", exc)
                self.health.step()
                await self._pause(backoff(attempt, 1.0, 30.0))
        return False

    async def _until_ready(self) -> bool:
        """Before the first unit: the worker's first health check, then `ready_settle`; False when stopped first."""
        if self.settings.health_port:
            url = f"http://{self.settings.health_host}:{self.settings.health_port}/health"
            log.info("waiting for the worker's first health check of %s (its BACKEND_HEALTH_URL)", url)
            self.health.step("waiting for the worker")
            began = time.monotonic()
            warn_at = began + self.settings.stuck_after
            while not self.health.checked and not self.stopping:
                await _wait(self._checked, 1.0)
                self.health.step()
                if time.monotonic() >= warn_at:
                    warn_at += 600
                    log.warning(
                        "no health check from the worker in %.0fs: is its BACKEND_HEALTH_URL %s?", time.monotonic() - began, url
                    )
            if self.health.checked:
                log.info("the worker checked /health: it is ready; the first unit in %gs", self.settings.ready_settle)
        self.health.step("settling")
        await self._pause(self.settings.ready_settle)
        self.health.step("idle")
        return not self.stopping

    async def _consume(self) -> None:
        busy = False  # this worker has worked since its last release
        delivery: Delivery | None = None
        while not self.stopping:
            if delivery is None:
                delivery = await self._take(self.settings.wait)
                self.health.step()
                if delivery is None:
                    continue
                if self.stopping:  # arrived with the stop: never started, so it goes straight back
                    break
            busy = True
            await self._process(delivery)
            delivery = None
            if self.stopping:
                break
            # The next unit before the release: the session then stays on this busy worker.
            delivery = await self._take(0)
            if delivery is None:
                await self._release()
                busy = False
                self.health.step("settling")
                await self._pause(self.settings.release_settle)  # Vast stops a session-less worker now, idle
                self.health.step("idle")
        if delivery is not None:
            await self._settle(delivery, _Finish(Outcome.HANDED_BACK, self.queue.hand_back, (delivery, False)))
        if busy:
            await self._release()

    async def _take(self, wait: float) -> Delivery | None:
        """The next unit, else None: none came, or the queue failed (a failed blocking take backs off)."""
        try:
            delivery = await self.queue.take(wait)
        except QueueSetupError:
            raise
        except QueueError as exc:
            self._take_failures += 1
            self.metrics.queue_errors.labels("take").inc()
            log.warning("take failed: %s", exc)
            if wait:
                await self._pause(backoff(self._take_failures, 0.5, 10.0))
            return None
        self._take_failures = 0
        return delivery

    async def _release(self) -> None:
        self.health.step("releasing")
        await self.releaser.release()
        self.health.step("idle")

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by a stop."""
        await _wait(self._stopping, seconds)

    # One unit

    async def _process(self, delivery: Delivery) -> None:
        self.health.step("working")
        self.metrics.busy.set(1)
        try:
            await self._work_on(delivery)
        finally:
            self.metrics.busy.set(0)

    async def _work_on(self, delivery: Delivery) -> None:
        unit_id = unit_id_of(delivery)
        started = time.time()
        record = _Record(unit_id, self.settings.name, delivery.attempt, started)
        if delivery.attempt > self.settings.max_attempts:
            reason = f"delivered {delivery.attempt} times, more than max_attempts {self.settings.max_attempts}"
            await self._settle(delivery, self._dead_letter(delivery, reason, record))
            return
        try:
            payload = self.handler.decode(delivery.body)
        except FatalError as exc:
            await self._settle(delivery, self._dead_letter(delivery, str(exc), record))
            return
        progress: deque[dict[str, Any]] = deque(maxlen=PROGRESS_KEPT)
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_progress(event: dict[str, Any]) -> None:
            progress.append(event)
            loop.call_soon_threadsafe(wake.set)

        ctx = Context(unit_id, delivery.attempt, self.settings.name, _on_progress=on_progress)
        done = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(delivery, ctx, progress, wake, done))
        try:
            work = asyncio.create_task(self._call_handler(payload, ctx))
            if await self._finished(work):
                self.metrics.unit_seconds.observe(time.time() - started)
                finish = self._verdict(delivery, work, record)
                if finish.hold:
                    await self._pause(finish.hold)  # the heartbeat keeps the unit ours meanwhile
            else:
                finish = _Finish(Outcome.HANDED_BACK, self.queue.hand_back, (delivery, True))
        finally:
            # Stopped before the unit is settled: a renewal racing an ack would look like a lost lease.
            # The flag ends the loop: redis-py may swallow a cancel that lands inside a command.
            done.set()
            wake.set()
            heartbeat.cancel()
            await asyncio.wait({heartbeat}, timeout=self.settings.timeout + 1)
        await self._settle(delivery, finish)

    async def _call_handler(self, payload: Any, ctx: Context) -> Any:
        if self.settings.unit_timeout is None:
            return await self.handler(payload, ctx)
        try:
            async with asyncio.timeout(self.settings.unit_timeout):
                return await self.handler(payload, ctx)
        except TimeoutError:
            raise RetryableError(f"the unit took longer than unit_timeout ({self.settings.unit_timeout:g}s)") from None

    async def _finished(self, work: asyncio.Task[Any]) -> bool:
        """Wait for the handler; False when a stop's grace ran out first (the handler is then cancelled)."""
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not work.done():
            await asyncio.wait({work}, timeout=max(0.0, self._stop_deadline - time.monotonic()))
        if work.done():
            return True
        log.warning("the unit did not finish within the %.0fs grace period; handing it back", self.settings.grace)
        work.cancel()
        # A handler that ignores cancellation (or runs in a thread) is abandoned, not waited for.
        await asyncio.wait({work}, timeout=1.0)
        return False

    def _verdict(self, delivery: Delivery, work: asyncio.Task[Any], record: _Record) -> _Finish:
        """How a unit whose handler returned (or raised) is finished."""
        error = RetryableError("the handler was cancelled") if work.cancelled() else work.exception()
        if error is None:
            try:
                result = jsonable(work.result())
            except (TypeError, ValueError) as exc:  # pydantic's serialization error is a ValueError
                return self._dead_letter(delivery, f"the handler's result is not JSON data: {describe(exc)}", record)
            return _Finish(Outcome.DONE, self.queue.ack, (delivery, record.done("done", result=result)))
        if isinstance(error, Cancelled):
            log.info("unit %s cancelled", record.unit_id)
            return _Finish(Outcome.CANCELLED, self.queue.ack, (delivery, record.done("cancelled")))
        if isinstance(error, FatalError):
            return self._dead_letter(delivery, f"fatal: {error}", record)
        if delivery.attempt >= self.settings.max_attempts:
            return self._dead_letter(delivery, f"failed {delivery.attempt} times; last: {describe(error)}", record)
        if isinstance(error, RetryableError) and error.delay is not None:
            delay = error.delay
        else:
            delay = backoff(delivery.attempt, self.settings.retry_base, self.settings.retry_cap)
        log.warning("unit %s failed (attempt %d), retrying in %.1fs: %s", record.unit_id, delivery.attempt, delay, describe(error))
        if self.queue.native_delay:
            return _Finish(Outcome.RETRIED, self.queue.retry, (delivery, delay))
        return _Finish(Outcome.RETRIED, self.queue.retry, (delivery, 0.0), hold=delay)

    def _dead_letter(self, delivery: Delivery, reason: str, record: _Record) -> _Finish:
        log.error("unit %s dead-lettered: %s", record.unit_id, reason)
        return _Finish(Outcome.DEAD_LETTERED, self.queue.dead_letter, (delivery, reason, record.done("failed", error=reason)))

    async def _settle(self, delivery: Delivery, finish: _Finish) -> None:
        """Finish the unit, retried; if that never succeeds its lease runs out and the unit is redone."""

        async def attempt() -> None:
            await finish.operation(*finish.args)

        what = f"{finish.outcome.value} of unit {delivery.message_id}"
        if await retrying(attempt, what, give_up_after=self.queue.lease, retry_on=(QueueError,)):
            self.metrics.units.labels(finish.outcome.value).inc()
        else:
            self.metrics.queue_errors.labels(finish.outcome.value).inc()

    async def _heartbeat(
        self, delivery: Delivery, ctx: Context, progress: deque[dict[str, Any]], wake: asyncio.Event, done: asyncio.Event
    ) -> None:
        """Renew the lease every third of it (and on progress), publish progress, look for a cancel; until `done`."""
        interval = self.queue.lease / 3
        renewed = time.monotonic()
        lost = False
        while True:
            await _wait(wake, interval - (time.monotonic() - renewed))
            wake.clear()
            if done.is_set():
                return
            self.health.step()  # the loop is alive; an unreachable queue is not a stuck worker
            try:
                while progress:
                    await self.queue.publish_progress(json.dumps(progress.popleft()).encode())
                if time.monotonic() - renewed >= min(interval, PROGRESS_GAP):
                    renewed = time.monotonic()
                    if not await self.queue.extend(delivery) and not lost:
                        lost = True
                        self.metrics.leases_lost.inc()
                        log.warning("unit %s was taken over by another worker (lease lost)", ctx.unit_id)
                    if await self.queue.cancelled(delivery, ctx.unit_id):
                        ctx.cancel_event.set()
            except QueueError as exc:
                self.metrics.queue_errors.labels("heartbeat").inc()
                log.warning("heartbeat for unit %s failed: %s", ctx.unit_id, exc)


@dataclass(frozen=True, slots=True)
class _Finish:
    """How a unit leaves this worker: the queue operation and its arguments, after holding it `hold` seconds."""

    outcome: Outcome
    operation: Callable[..., Awaitable[None]]
    args: tuple[Any, ...]
    hold: float = 0.0


class _Record:
    """The results destination's record of a unit."""

    def __init__(self, unit_id: str, worker: str, attempt: int, started: float) -> None:
        self.unit_id, self.worker, self.attempt, self.started = unit_id, worker, attempt, started

    def done(self, status: str, **extra: Any) -> bytes:
        record = {
            "id": self.unit_id, "status": status, "worker": self.worker, "attempt": self.attempt,
            "started_at": self.started, "finished_at": time.time(), **extra,
        }  # fmt: skip
        return json.dumps(record).encode()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass.

    Not `wait_for`: on Python 3.11 a cancel arriving as it times out is swallowed, and the task lives on.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()


def unit_id_of(delivery: Delivery) -> str:
    """The payload's own `id` when it has one (so producers can match results and cancels), else the queue's id."""
    body: Any = delivery.body
    if isinstance(body, bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return delivery.message_id
    if isinstance(body, dict) and isinstance(body.get("id"), (str, int)) and not isinstance(body.get("id"), bool):
        return str(body["id"])
    return delivery.message_id
