"""A Redis list with one processing list per worker (the reliable-queue pattern).

A unit moves atomically from the list into this worker's processing list `PREFIX<name>` (in
flight for the controller's `processing=PREFIX*`) and is removed from there when finished. While
a worker lives it keeps `KEY:alive:<name>` set for one lease; any worker moves the units of a
processing list whose owner's key has expired back to the head of the list. Redeliveries are
counted per item content in the hash `KEY:attempts`. A list has no delayed delivery, so the runner
holds a unit during its retry delay.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from vqs_consumer.queues import Delivery, QueueOptions
from vqs_consumer.queues.redis import MAX_WAIT, RedisQueue

#: Move a processing list's units back to the head of the queue, counting an attempt for each,
#: unless its owner is alive (ARGV[1] = "1" skips that check, for this worker's own list at start).
_RECOVER = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local moved = 0
while true do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT')
  if not item then return moved end
  redis.call('HINCRBY', KEYS[3], redis.sha1hex(item), 1)
  moved = moved + 1
end
"""
#: Processing lists looked at per recovery scan; more than this many workers is not this pattern's scale.
_SCAN_LIMIT = 1000


class RedisListQueue(RedisQueue):
    native_delay = False

    def __init__(
        self, display_url: str, connection: dict[str, Any], options: QueueOptions, key: str, prefix: str
    ) -> None:
        super().__init__(display_url, connection, options, key)
        self.key = key
        self.prefix = prefix
        self.processing = prefix + options.name
        self.attempts = f"{key}:attempts"
        self.dead = options.dead_letter or f"{key}:dead"
        self.lease_ms = int(options.lease * 1000)
        self._recover = self.client.register_script(_RECOVER)
        self._recovered_at = 0.0

    def _alive(self, name: str) -> str:
        return f"{self.key}:alive:{name}"

    async def open(self) -> None:
        # Units this worker's previous run took and never finished go back first.
        await self._move_back(self.processing, force=True)
        self._recovered_at = time.monotonic()

    async def _move_back(self, processing: str, *, force: bool = False) -> int:
        owner = self._alive(processing[len(self.prefix) :])
        keys = [processing, self.key, self.attempts, owner]
        return int(await self.call(lambda: self._recover(keys=keys, args=["1" if force else "0"])))

    async def _recover_dead(self) -> None:
        """Hand back the units of every processing list whose worker stopped renewing its key."""
        found: list[str] = []

        async def scan() -> None:
            async for key in self.client.scan_iter(match=_escape(self.prefix) + "*", count=1000, _type="list"):
                if key != self.processing:
                    found.append(key)
                if len(found) >= _SCAN_LIMIT:
                    return

        await self.call(scan)
        for processing in found:
            await self._move_back(processing)

    async def take(self, wait: float) -> Delivery | None:
        if time.monotonic() - self._recovered_at >= self.options.lease:
            self._recovered_at = time.monotonic()
            await self._recover_dead()
        wait = min(wait, MAX_WAIT)
        # Alive before taking: a unit never sits in a processing list whose owner looks dead.
        await self.call(lambda: self.client.set(self._alive(self.options.name), "1", px=self.lease_ms))
        if wait > 0:
            item = await self.call(lambda: self.client.blmove(self.key, self.processing, wait, "RIGHT", "LEFT"), wait)
        else:
            item = await self.call(lambda: self.client.lmove(self.key, self.processing, "RIGHT", "LEFT"))
        if item is None:
            return None
        digest = _digest(item)
        before = await self.call(lambda: self.client.hget(self.attempts, digest))
        return Delivery(digest, item.encode(), 1 + int(before or 0), item)

    async def extend(self, delivery: Delivery) -> bool:
        async def run() -> Any:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(self._alive(self.options.name), "1", px=self.lease_ms)
                pipe.lpos(self.processing, delivery.handle)
                return await pipe.execute()

        _, position = await self.call(run)
        return position is not None

    async def _finish(self, delivery: Delivery, record: bytes | None, dead: bool = False) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                if dead:
                    pipe.lpush(self.dead, delivery.handle)
                self.add_result(pipe, record)
                pipe.lrem(self.processing, 1, delivery.handle)
                pipe.hdel(self.attempts, delivery.message_id)
                await pipe.execute()

        await self.call(run)

    async def ack(self, delivery: Delivery, record: bytes | None) -> None:
        await self._finish(delivery, record)

    async def dead_letter(self, delivery: Delivery, reason: str, record: bytes | None) -> None:
        # The item goes to the dead list unchanged, so `LMOVE KEY:dead KEY` re-drives it; the reason is logged.
        await self._finish(delivery, record, dead=True)

    async def _back(self, delivery: Delivery, *, count: bool) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lrem(self.processing, 1, delivery.handle)
                pipe.rpush(self.key, delivery.handle)  # the head: the next unit any worker takes
                if count:
                    pipe.hincrby(self.attempts, delivery.message_id, 1)
                await pipe.execute()

        await self.call(run)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        await self._back(delivery, count=True)

    async def hand_back(self, delivery: Delivery, started: bool) -> None:
        await self._back(delivery, count=False)

    async def close(self) -> None:
        try:
            await self.call(lambda: self.client.delete(self._alive(self.options.name)))
        finally:
            await super().close()


def _digest(item: str) -> str:
    """The attempts hash's field for an item: what Lua's redis.sha1hex gives."""
    return hashlib.sha1(item.encode()).hexdigest()  # noqa: S324 - an identifier, not security


def _escape(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
