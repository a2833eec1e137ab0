"""Redis sources: a list with processing lists (reliable-queue pattern), or a stream's consumer group.

URLs: `redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]?list=KEY[&processing=KEY|GLOB...]`
and `redis[s]://...?stream=KEY&group=GROUP`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from controller.backoff import backoff
from controller.cancellation import raise_if_cancelled
from controller.sources import QueueDepth, SourceError, SourceURLError, describe, query_params, split_url

log = logging.getLogger(__name__)

KIND = "Redis"
_PARAMS = {
    "list": "list=KEY",
    "processing": "processing=KEY|GLOB (repeatable, with list)",
    "stream": "stream=KEY",
    "group": "group=GROUP (with stream)",
}
#: A processing glob matching more lists than this is an error: summing a sample would under-count.
MAX_PROCESSING_KEYS = 1000
#: When Redis cannot tell a group's lag, at most this many undelivered entries are counted one by one.
MAX_COUNTED_ENTRIES = 10_000
_PAGE = 1000
_GLOB_CHARS = frozenset("*?[")
#: Seconds a watch waits for a notification before redis-py health-checks the idle connection.
_WATCH_IDLE = 30.0
_WATCH_BACKOFF_CAP = 30.0

T = TypeVar("T")


def from_url(url: str, *, timeout: float = 5.0) -> RedisListSource | RedisStreamSource:
    parts, display = split_url(url, KIND)
    params = query_params(parts, display, KIND, _PARAMS, repeatable=frozenset({"processing"}))

    def bad(problem: str) -> SourceURLError:
        return SourceURLError(
            f"{KIND} source URL {display!r}: {problem}; accepted: ?list=KEY[&processing=KEY|GLOB...] "
            "or ?stream=KEY&group=GROUP"
        )

    if not parts.hostname:
        raise bad("no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise bad(f"the path must be a database number such as /0, got /{path}")
    db = int(path or 0)
    one = {name: values[0] for name, values in params.items()}
    if ("list" in one) == ("stream" in one):
        raise bad("give exactly one of list= or stream=")
    connection = dict(
        host=parts.hostname,
        port=parts.port or 6379,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ssl=parts.scheme.lower() == "rediss",
    )
    if "list" in one:
        if "group" in one:
            raise bad("group= goes with stream=, not list=")
        return RedisListSource(display, connection, timeout, one["list"], params.get("processing", []))
    if "processing" in one:
        raise bad("processing= goes with list=, not stream=")
    if "group" not in one:
        raise bad("stream= needs group=")
    return RedisStreamSource(display, connection, timeout, one["stream"], one["group"])


class _RedisSource:
    def __init__(
        self,
        display_url: str,
        connection: dict[str, Any],
        timeout: float,
        watch_keys: list[str],
        watch_patterns: list[str],
    ) -> None:
        self.display_url = display_url
        self._watch_keys = watch_keys
        self._watch_patterns = watch_patterns
        self.timeout = timeout
        self.db: int = connection["db"]
        # One quick retry covers a pooled connection the server dropped; polling is the real retry.
        # The socket timeouts are a backstop: `timeout` bounds each whole read (see `_call`).
        self._client = Redis(
            **connection,
            socket_timeout=2 * timeout,
            socket_connect_timeout=2 * timeout,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries=1),
            health_check_interval=int(_WATCH_IDLE),
            decode_responses=True,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, read: Callable[[], Awaitable[T]]) -> T:
        """`read()` under the source timeout, any failure as a SourceError naming this source."""
        try:
            async with asyncio.timeout(self.timeout):
                return await read()
        except TimeoutError:
            raise SourceError(f"{self.display_url}: no answer within {self.timeout:g}s") from None
        except RedisError as exc:
            raise SourceError(f"{self.display_url}: {describe(exc)}") from exc
        except OSError as exc:  # e.g. a TLS handshake failure below redis-py
            raise SourceError(f"{self.display_url}: {describe(exc)}") from exc

    async def watch(self) -> AsyncIterator[None]:
        """Yield on every keyspace notification for the watched keys.

        Enabling `notify-keyspace-events` is the server owner's choice; without it nothing arrives
        and polling alone drives the controller. Lost connections are retried with capped backoff.
        """
        keys, patterns = self._watch_keys, self._watch_patterns
        prefix = f"__keyspace@{self.db}__:"
        await self._note_notification_config()
        failures = 0
        while True:
            pubsub: PubSub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.timeout):
                    if keys:
                        await pubsub.subscribe(*(prefix + key for key in keys))
                    if patterns:
                        await pubsub.psubscribe(*(prefix + pattern for pattern in patterns))
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_WATCH_IDLE)
                    raise_if_cancelled()
                    failures = 0
                    if message is not None:
                        yield None
            except (RedisError, OSError, TimeoutError) as exc:
                failures += 1
                delay = backoff(failures, cap=_WATCH_BACKOFF_CAP)
                log.warning(
                    "queue notifications interrupted; retrying",
                    extra={"source": self.display_url, "error": describe(exc), "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)
            finally:
                await pubsub.aclose()

    async def _note_notification_config(self) -> None:
        """Say once when the server has keyspace notifications off (CONFIG GET may be forbidden)."""
        try:
            async with asyncio.timeout(self.timeout):
                setting = (await self._client.config_get("notify-keyspace-events")).get("notify-keyspace-events", "")
        except (RedisError, OSError, TimeoutError):
            return
        if "K" not in setting:
            log.info(
                "Redis keyspace notifications are off (notify-keyspace-events); polling only",
                extra={"source": self.display_url},
            )


class RedisListSource(_RedisSource):
    """waiting = LLEN of the list; in_flight = summed LLEN of the processing lists."""

    def __init__(
        self, display_url: str, connection: dict[str, Any], timeout: float, key: str, processing: list[str]
    ) -> None:
        self.key = key
        self.processing = [p for p in processing if not _GLOB_CHARS & set(p)]
        self.patterns = [p for p in processing if _GLOB_CHARS & set(p)]
        super().__init__(display_url, connection, timeout, [key, *self.processing], self.patterns)

    async def depth(self) -> QueueDepth:
        return await self._call(self._depth)

    async def _depth(self) -> QueueDepth:
        keys = dict.fromkeys(self.processing)
        for pattern in self.patterns:
            keys.update(dict.fromkeys(await self._scan(pattern)))
        keys.pop(self.key, None)  # a glob may match the queue itself; it is waiting work, not in flight
        if not keys:
            # One command is atomic: no MULTI, which costs each poll half its CPU.
            return QueueDepth(waiting=await self._client.llen(self.key), in_flight=0)
        # MULTI: an LMOVE between the list and a processing list is never seen half-done.
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.llen(self.key)
            for key in keys:
                pipe.llen(key)
            counts = await pipe.execute()
        return QueueDepth(waiting=counts[0], in_flight=sum(counts[1:]))

    async def _scan(self, pattern: str) -> list[str]:
        found: list[str] = []
        async for key in self._client.scan_iter(match=pattern, count=_PAGE, _type="list"):
            found.append(key)
            if len(found) > MAX_PROCESSING_KEYS:
                raise SourceError(
                    f"{self.display_url}: processing pattern {pattern!r} matches more than "
                    f"{MAX_PROCESSING_KEYS} lists; use a narrower pattern"
                )
        return found


class RedisStreamSource(_RedisSource):
    """waiting = the group's undelivered entries; in_flight = its pending (delivered, unacked) entries."""

    def __init__(
        self, display_url: str, connection: dict[str, Any], timeout: float, stream: str, group: str
    ) -> None:
        super().__init__(display_url, connection, timeout, [stream], [])
        self.stream = stream
        self.group = group
        self._warned_cap = False

    async def depth(self) -> QueueDepth:
        return await self._call(self._depth)

    async def _depth(self) -> QueueDepth:
        # Nothing can be consumed through a group that does not exist yet: that reads as empty.
        try:
            groups = await self._client.xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return QueueDepth(0, 0, missing=f"stream {self.stream!r} does not exist")
            raise
        group = next((g for g in groups if g["name"] == self.group), None)
        if group is None:
            names = ", ".join(repr(g["name"]) for g in groups) or "none"
            return QueueDepth(0, 0, missing=f"stream {self.stream!r} has no consumer group {self.group!r} (groups: {names})")
        # XINFO's `pending` is the size of the group's pending entries list, as XPENDING's summary count.
        in_flight = int(group["pending"])
        last = group["last-delivered-id"]
        lag = group.get("lag")  # absent before Redis 7: counted like a nil lag
        if lag == 0:
            return QueueDepth(waiting=0, in_flight=in_flight)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.time()  # the server's clock: entry IDs carry its milliseconds, not ours
            pipe.xrange(self.stream, min=f"({last}", max="+", count=1 if lag is not None else _PAGE)
            if lag is None:
                pipe.xrange(self.stream, min="-", max="+", count=1)
                pipe.xlen(self.stream)
            (seconds, micros), page, *whole = await pipe.execute()
        now_ms = seconds * 1000 + micros / 1000
        oldest_age = max(0.0, (now_ms - _id_ms(page[0][0])) / 1000) if page else None
        if lag is None:
            # Entries were deleted after the group's position (XDEL, XGROUP SETID, ...), so Redis
            # cannot derive the lag: count what is left after that position.
            first, length = whole
            lag = length if page and first and page[0][0] == first[0][0] else await self._count_after(page)
        return QueueDepth(waiting=int(lag), in_flight=in_flight, oldest_age=oldest_age)

    async def _count_after(self, page: list[Any]) -> int:
        counted = len(page)
        while len(page) == _PAGE and counted < MAX_COUNTED_ENTRIES:
            page = await self._client.xrange(self.stream, min=f"({page[-1][0]}", max="+", count=_PAGE)
            counted += len(page)
        if len(page) == _PAGE and not self._warned_cap:
            # Enough to scale to any sensible maximum; counting further would read the whole stream.
            self._warned_cap = True
            log.warning(
                "stream group lag unknown to Redis; reporting a lower bound of undelivered entries",
                extra={"source": self.display_url, "counted": counted},
            )
        return counted


def _id_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])
