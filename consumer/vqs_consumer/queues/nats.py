"""A NATS JetStream pull consumer: fetch, in-progress heartbeats, ack / nak / term.

URL (as the controller's): `nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]?stream=STREAM&consumer=CONSUMER`
(`tls://` for TLS). The consumer must exist, be durable, pull-based and use explicit acks.

In flight (what the controller counts) is the consumer's num_ack_pending. The lease is the
consumer's `ack_wait`: heartbeats (`+WPI`) restart it, and a dead worker's message is redelivered
when it runs out. Attempts are the message's delivery count. Dead letters, results and progress
go to subjects; dead letters and results must be stored by some stream. Cancel: a message on the
`cancel` subject whose body is a unit id. A unit handed back at shutdown is published again (to the
end of the stream) and the original terminated.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import nats
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy
from nats.js.errors import NotFoundError

from vqs_consumer.queues import Delivery, QueueError, QueueOptions, QueueSetupError, QueueURLError, describe, query_params, split_url

log = logging.getLogger(__name__)

KIND = "NATS"
_PARAMS = {"stream": "stream=STREAM", "consumer": "consumer=CONSUMER"}
#: Longest pull request; a take never waits longer, so a stop is noticed within it.
MAX_WAIT = 5.0
#: A take that must not wait still gives the server this long to answer the pull.
NO_WAIT = 0.25
#: Unit ids remembered from the cancel subject.
CANCELS_KEPT = 1000

T = TypeVar("T")


def from_url(url: str, options: QueueOptions) -> NatsQueue:
    parts, display = split_url(url, KIND)
    params = query_params(parts, display, KIND, _PARAMS)

    def bad(problem: str) -> QueueURLError:
        return QueueURLError(
            f"{KIND} source URL {display!r}: {problem}; accepted: "
            "nats|tls://[USER:PASSWORD@]HOST:PORT?stream=STREAM&consumer=CONSUMER"
        )

    if not parts.hostname:
        raise bad("no host")
    if parts.path not in ("", "/"):
        raise bad(f"unexpected path {parts.path!r}")
    missing = [name for name in _PARAMS if name not in params]
    if missing:
        raise bad(" and ".join(f"{name}=" for name in missing) + (" is" if len(missing) == 1 else " are") + " required")
    auth: dict[str, str] = {}
    if parts.password is not None:
        auth = {"user": unquote(parts.username or ""), "password": unquote(parts.password)}
    elif parts.username:
        auth = {"token": unquote(parts.username)}
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    # Credentials go to nats-py as options, never inside the server URL it may print in errors.
    server = f"{parts.scheme.lower()}://{host}:{parts.port or 4222}"
    return NatsQueue(display, options, server, auth, params["stream"][0], params["consumer"][0])


class NatsQueue:
    native_delay = True

    def __init__(
        self, display_url: str, options: QueueOptions, server: str, auth: dict[str, str], stream: str, consumer: str
    ) -> None:
        self.display_url = display_url
        self.options = options
        self.stream = stream
        self.consumer = consumer
        self.lease = options.lease
        self._server = server
        self._auth = auth
        self._nc: Any = None
        self._js: Any = None
        self._sub: Any = None
        self._cancels: deque[str] = deque(maxlen=CANCELS_KEPT)
        #: (message id, step) published by an operation not yet finished.
        self._done: set[tuple[str, str]] = set()

    async def call(self, what: Callable[[], Awaitable[T]], wait: float = 0.0) -> T:
        """`what()` within the timeout, failures as QueueError."""
        try:
            async with asyncio.timeout(self.options.timeout + wait):
                return await what()
        except TimeoutError:
            raise QueueError(f"{self.display_url}: no answer within {self.options.timeout + wait:g}s") from None
        except QueueError:
            raise
        except (NatsError, OSError) as exc:
            raise QueueError(f"{self.display_url}: {describe(exc)}") from exc

    async def open(self) -> None:
        if not self.options.dead_letter:
            raise QueueSetupError(f"{self.display_url}: NATS needs a dead-letter subject (--dead-letter SUBJECT) that a stream stores")
        timeout = self.options.timeout
        # nats-py reconnects on its own (with jitter); every call here is bounded by `call`.
        self._nc = await self.call(
            lambda: nats.connect(
                self._server, name=f"vqs-consumer {self.options.name}", connect_timeout=timeout,
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=2, error_cb=self._on_error,
                **self._auth,
            )
        )  # fmt: skip
        self._js = self._nc.jetstream(timeout=timeout)
        try:
            info = await self.call(lambda: self._js.consumer_info(self.stream, self.consumer, timeout=timeout))
        except QueueError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise QueueSetupError(f"{self.display_url}: stream {self.stream!r} has no consumer {self.consumer!r}") from None
            raise
        config = info.config
        if config.deliver_subject or config.ack_policy != AckPolicy.EXPLICIT:
            raise QueueSetupError(f"{self.display_url}: consumer {self.consumer!r} must be a pull consumer with explicit acks")
        if config.ack_wait:
            # The server's lease; heartbeats go out at a third of it.
            self.lease = float(config.ack_wait)
        for subject in (self.options.dead_letter, self.options.results):
            if subject:
                await self._stored(subject)
        self._sub = await self.call(lambda: self._js.pull_subscribe_bind(self.consumer, stream=self.stream))
        if self.options.cancel:
            await self.call(lambda: self._nc.subscribe(self.options.cancel, cb=self._on_cancel))

    async def _stored(self, subject: str) -> None:
        try:
            await self.call(lambda: self._js.find_stream_name_by_subject(subject))
        except QueueError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                raise QueueSetupError(f"{self.display_url}: no stream stores subject {subject!r}") from None
            raise

    async def _on_cancel(self, msg: Any) -> None:
        self._cancels.append(msg.data.decode(errors="replace").strip())

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS connection error: %s", describe(exc))

    async def take(self, wait: float) -> Delivery | None:
        wait = min(wait, MAX_WAIT) or NO_WAIT

        async def fetch() -> Any:
            try:
                return (await self._sub.fetch(1, timeout=wait))[0]
            except NatsTimeout:
                return None

        msg = await self.call(fetch, wait)
        if msg is None:
            return None
        meta = msg.metadata
        return Delivery(str(meta.sequence.stream), msg.data, int(meta.num_delivered), msg)

    async def extend(self, delivery: Delivery) -> bool:
        await self.call(delivery.handle.in_progress)
        return True

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.call(lambda: self._js.publish(subject, data, headers=headers))

    async def ack(self, delivery: Delivery, record: bytes | None) -> None:
        if self.options.results and record is not None:
            await self._once(delivery, "result", lambda: self._publish(self.options.results or "", record))
        # A confirmed ack: once it returns the unit is no longer in flight.
        await self.call(lambda: delivery.handle.ack_sync(timeout=self.options.timeout))
        self._done.discard((delivery.message_id, "result"))

    async def retry(self, delivery: Delivery, delay: float) -> None:
        await self.call(lambda: delivery.handle.nak(delay=delay))

    async def hand_back(self, delivery: Delivery, started: bool) -> None:
        msg = delivery.handle
        if not started:
            await self.call(msg.nak)  # redelivered at once, ahead of newer messages
            return
        # A nak'd message stays in num_ack_pending (in flight) until redelivered: a copy goes back
        # as waiting work instead, and the original is terminated. Without its Nats-Msg-Id, or the
        # stream's duplicate window would drop the copy.
        headers = {name: value for name, value in (msg.headers or {}).items() if name != "Nats-Msg-Id"}
        await self._once(delivery, "copy", lambda: self._publish(msg.subject, msg.data, headers or None))
        await self.call(msg.term)
        self._done.discard((delivery.message_id, "copy"))

    async def dead_letter(self, delivery: Delivery, reason: str, record: bytes | None) -> None:
        assert self.options.dead_letter is not None
        headers = {"Vqs-Error": " ".join(reason.split())[:1000], "Vqs-Attempts": str(delivery.attempt),
                   "Vqs-Sequence": delivery.message_id}  # fmt: skip
        dead_letter = self.options.dead_letter
        await self._once(delivery, "dead", lambda: self._publish(dead_letter, delivery.handle.data, headers))
        if self.options.results and record is not None:
            await self._once(delivery, "result", lambda: self._publish(self.options.results or "", record))
        await self.call(delivery.handle.term)
        self._done.difference_update({(delivery.message_id, "dead"), (delivery.message_id, "result")})

    async def _once(self, delivery: Delivery, step: str, publish: Callable[[], Awaitable[None]]) -> None:
        """A publish that a retry of the whole operation (after a failed term) does not repeat."""
        if (delivery.message_id, step) not in self._done:
            await publish()
            self._done.add((delivery.message_id, step))

    async def publish_progress(self, event: bytes) -> None:
        if self.options.progress:
            await self.call(lambda: self._nc.publish(self.options.progress, event))

    async def cancelled(self, delivery: Delivery, unit_id: str) -> bool:
        return unit_id in self._cancels

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                async with asyncio.timeout(self.options.timeout):
                    await nc.close()
            except Exception:  # the connection is being thrown away; nothing to recover
                pass
