"""Redis queues: a stream read through a consumer group, or a list with one processing list per worker.

URLs (as the controller's): `redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]?stream=KEY&group=GROUP`
and `redis[s]://...?list=KEY&processing=PREFIX*`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from vqs_consumer.queues import QueueError, QueueOptions, QueueURLError, describe, query_params, split_url

KIND = "Redis"
_PARAMS = {
    "list": "list=KEY",
    "processing": "processing=PREFIX* (with list)",
    "stream": "stream=KEY",
    "group": "group=GROUP (with stream)",
}
_GLOB_CHARS = frozenset("*?[")
#: Longest blocking read; a take never waits longer, so a stop is noticed within it.
MAX_WAIT = 5.0

T = TypeVar("T")


def from_url(url: str, options: QueueOptions) -> Any:
    parts, display = split_url(url, KIND)
    params = query_params(parts, display, KIND, _PARAMS, repeatable=frozenset({"processing"}))

    def bad(problem: str) -> QueueURLError:
        return QueueURLError(
            f"{KIND} source URL {display!r}: {problem}; accepted: ?list=KEY&processing=PREFIX* or ?stream=KEY&group=GROUP"
        )

    if not parts.hostname:
        raise bad("no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise bad(f"the path must be a database number such as /0, got /{path}")
    one = {name: values[0] for name, values in params.items()}
    if ("list" in one) == ("stream" in one):
        raise bad("give exactly one of list= or stream=")
    connection = dict(
        host=parts.hostname,
        port=parts.port or 6379,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ssl=parts.scheme.lower() == "rediss",
    )
    if "list" in one:
        from vqs_consumer.queues.redis_list import RedisListQueue

        if "group" in one:
            raise bad("group= goes with stream=, not list=")
        processing = params.get("processing", [])
        # The controller counts in flight only through processing=; a worker's own list must match it.
        if len(processing) != 1 or not processing[0].endswith("*") or _GLOB_CHARS & set(processing[0][:-1]):
            raise bad(
                "the consumer needs one processing=PREFIX* (e.g. processing=KEY:processing:*) so that each worker's "
                "processing list PREFIX<name> is counted as in flight by the controller"
            )
        return RedisListQueue(display, connection, options, one["list"], processing[0][:-1])
    if "processing" in one:
        raise bad("processing= goes with list=, not stream=")
    if "group" not in one:
        raise bad("stream= needs group=")
    from vqs_consumer.queues.redis_stream import RedisStreamQueue

    return RedisStreamQueue(display, connection, options, one["stream"], one["group"])


class RedisQueue:
    """What both Redis kinds share: the client, the timeout wrapper, progress and cancel keys."""

    #: Retry delays are served by the queue itself (False: the runner holds the unit meanwhile).
    native_delay = True

    def __init__(self, display_url: str, connection: dict[str, Any], options: QueueOptions, key: str) -> None:
        self.display_url = display_url
        self.options = options
        self.lease = options.lease
        self.timeout = options.timeout
        self.results = options.results
        self.progress = options.progress
        self.cancel_prefix = options.cancel or f"{key}:cancel:"
        self.client = Redis(
            **connection,
            # Blocking reads hold the socket up to MAX_WAIT; `_call` bounds every command anyway.
            socket_timeout=MAX_WAIT + options.timeout,
            socket_connect_timeout=options.timeout,
            retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries=2),
            health_check_interval=30,
            decode_responses=True,
        )

    async def call(self, what: Callable[[], Awaitable[T]], wait: float = 0.0) -> T:
        """`what()` within the timeout (plus `wait` for a blocking read), failures as QueueError."""
        try:
            async with asyncio.timeout(self.timeout + wait):
                return await what()
        except TimeoutError:
            raise QueueError(f"{self.display_url}: no answer within {self.timeout + wait:g}s") from None
        except (RedisError, OSError) as exc:
            raise QueueError(f"{self.display_url}: {describe(exc)}") from exc

    async def publish_progress(self, event: bytes) -> None:
        if self.progress:
            await self.call(lambda: self.client.publish(self.progress, event))

    async def cancelled(self, delivery: Any, unit_id: str) -> bool:
        return bool(await self.call(lambda: self.client.exists(self.cancel_prefix + unit_id)))

    def add_result(self, pipe: Any, record: bytes | None) -> None:
        if self.results and record is not None:
            pipe.rpush(self.results, record)

    async def close(self) -> None:
        await self.client.aclose()
