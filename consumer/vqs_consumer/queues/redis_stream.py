"""A Redis stream read through a consumer group.

In flight (what the controller counts) is the group's pending entries list. A worker owns an entry
while it keeps the entry's idle time below the lease (`XCLAIM ... JUSTID` heartbeats); an entry idle
longer is a dead worker's, and any worker takes it over with `XAUTOCLAIM`. A retry resets the idle
time so that the entry becomes claimable after the delay (at most one lease).
"""

from __future__ import annotations

from typing import Any

from vqs_consumer.queues import Delivery, QueueError, QueueOptions, QueueSetupError
from vqs_consumer.queues.redis import MAX_WAIT, RedisQueue

#: Renew an entry only while this consumer still owns it: after a takeover the new owner keeps it.
_EXTEND = """
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


class RedisStreamQueue(RedisQueue):
    def __init__(
        self, display_url: str, connection: dict[str, Any], options: QueueOptions, stream: str, group: str
    ) -> None:
        super().__init__(display_url, connection, options, stream)
        self.stream = stream
        self.group = group
        self.name = options.name
        self.dead = options.dead_letter or f"{stream}:dead"
        self.lease_ms = int(options.lease * 1000)
        self._extend = self.client.register_script(_EXTEND)

    async def open(self) -> None:
        # A missing group is made at the stream's start, so entries added before it are not skipped.
        try:
            await self.call(lambda: self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except QueueError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, wait: float) -> Delivery | None:
        wait = min(wait, MAX_WAIT)
        # A dead worker's entries first: they have waited longest.
        _, claimed, *_ = await self.call(
            lambda: self.client.xautoclaim(self.stream, self.group, self.name, self.lease_ms, "0-0", count=1)
        )
        if claimed:
            entry_id, fields = claimed[0]
            pending = await self.call(
                lambda: self.client.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
            )
            delivered = int(pending[0]["times_delivered"]) if pending else 1
            return Delivery(entry_id, fields, delivered, entry_id)
        # BLOCK 0 would wait forever: no wait means no BLOCK at all.
        block = int(wait * 1000) or None
        try:
            reply = await self.call(
                lambda: self.client.xreadgroup(self.group, self.name, {self.stream: ">"}, count=1, block=block), wait
            )
        except QueueError as exc:
            if "NOGROUP" in str(exc):
                raise QueueSetupError(f"{self.display_url}: stream {self.stream!r} has no group {self.group!r}") from None
            raise
        if not reply:
            return None
        entry_id, fields = reply[0][1][0]
        return Delivery(entry_id, fields, 1, entry_id)

    async def extend(self, delivery: Delivery) -> bool:
        keys, args = [self.stream], [self.group, self.name, delivery.message_id]
        return bool(await self.call(lambda: self._extend(keys=keys, args=args)))

    async def ack(self, delivery: Delivery, record: bytes | None) -> None:
        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                self.add_result(pipe, record)
                pipe.xack(self.stream, self.group, delivery.message_id)
                await pipe.execute()

        await self.call(run)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        # Idle time lease - delay: XAUTOCLAIM (min idle = lease) takes it in `delay` seconds.
        idle = max(0, self.lease_ms - int(delay * 1000))
        await self.call(
            lambda: self.client.xclaim(
                self.stream, self.group, self.name, 0, [delivery.message_id], idle=idle, justid=True
            )
        )

    async def hand_back(self, delivery: Delivery, started: bool) -> None:
        if not started and not await self._nothing_waits():
            # Idle for a whole lease: the next take anywhere claims it before the entries waiting,
            # and the delivery that never ran is not counted.
            await self.call(
                lambda: self.client.xclaim(
                    self.stream, self.group, self.name, 0, [delivery.message_id], idle=self.lease_ms,
                    retrycount=delivery.attempt - 1, justid=True,
                )
            )  # fmt: skip
            return

        # A delivered entry cannot become undelivered again: a copy goes to the stream (first in
        # line when nothing waits, and handed at once to a worker blocked in a read), the original is acked.
        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.stream, _fields(delivery))
                pipe.xack(self.stream, self.group, delivery.message_id)
                await pipe.execute()

        await self.call(run)

    async def _nothing_waits(self) -> bool:
        groups = await self.call(lambda: self.client.xinfo_groups(self.stream))
        return any(group["name"] == self.group and group.get("lag") == 0 for group in groups)

    async def dead_letter(self, delivery: Delivery, reason: str, record: bytes | None) -> None:
        dead = {
            **_fields(delivery),
            "vqs_error": reason,
            "vqs_attempts": str(delivery.attempt),
            "vqs_entry_id": delivery.message_id,
        }

        async def run() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.xadd(self.dead, dead)
                self.add_result(pipe, record)
                pipe.xack(self.stream, self.group, delivery.message_id)
                await pipe.execute()

        await self.call(run)


def _fields(delivery: Delivery) -> dict[str, str]:
    assert isinstance(delivery.body, dict)
    return delivery.body
