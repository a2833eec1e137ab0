"""Leader election: when several replicas run one config, exactly one of them acts.

Every elector has one shape (`LeaderElector`): `run()` campaigns until cancelled and releases the
lease on the way out; `is_leader` says whether this replica may act now; `check()` confirms it
with the lease's store right before acting; `fencing_token` (of the current or last term) grows
with every new term; `wait_leading()` / `wait_following()` return once this replica leads / follows.

A leader that cannot renew stops acting `lease * (1 - STEP_DOWN_MARGIN)` after its last
successful renewal *started*. The store can only expire the lease `lease` after it received that
renewal, so the old leader has stopped before any other replica can take over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from controller.backoff import backoff
from controller.cancellation import raise_if_cancelled

log = logging.getLogger(__name__)

#: Share of the lease a leader gives up: clock drift and the time between a check and the action.
STEP_DOWN_MARGIN = 0.2
#: Longest one store call may take (each is a single round trip).
MAX_CALL_SECONDS = 5.0
_BACKOFF_BASE = 0.1


class LeaderError(Exception):
    """Leader election cannot start (e.g. no Kubernetes credentials); the message says why."""


def default_identity() -> str:
    """HOSTNAME-PID: unique per process, and names the pod on Kubernetes."""
    return f"{socket.gethostname()}-{os.getpid()}"


class LeaderElector(Protocol):
    identity: str

    @property
    def is_leader(self) -> bool: ...

    @property
    def fencing_token(self) -> int: ...

    async def run(self) -> None: ...

    async def check(self) -> bool: ...

    async def wait_leading(self) -> None: ...

    async def wait_following(self) -> None: ...


class NoElection:
    """`kind: none`: the only replica, always the leader."""

    is_leader = True
    fencing_token = 0

    def __init__(self, identity: str | None = None):
        self.identity = identity or default_identity()

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def check(self) -> bool:
        return True

    async def wait_leading(self) -> None:
        return None

    async def wait_following(self) -> None:
        await asyncio.Event().wait()


@dataclass(frozen=True)
class Held:
    """The attempt holds the lease for this term's fencing token."""

    token: int


@dataclass(frozen=True)
class NotHeld:
    """Another replica holds the lease; it runs out in `retry_after` seconds if that is known."""

    retry_after: float | None = None


class LeaseElector:
    """The campaign shared by every lease store: acquire, renew, step down in time, release."""

    #: Errors of the store that mean "try again": never fatal to the campaign.
    transient_errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    def __init__(self, *, identity: str, lease_seconds: float, renew_every: float):
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.call_timeout = min(renew_every, MAX_CALL_SECONDS)
        self._token = 0
        self._valid_until = float("-inf")
        self._deadline: asyncio.TimerHandle | None = None
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()

    # -- what a store implements ----------------------------------------------------------------

    async def _attempt(self) -> Held | NotHeld:
        """Renew the lease if this replica holds it, else try to acquire it."""
        raise NotImplementedError

    async def _confirm(self) -> bool:
        """Whether the store still names this replica's lease."""
        raise NotImplementedError

    async def _release(self) -> None:
        """Give the lease up if this replica holds it (never someone else's)."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Free the store's connections."""

    # -- the interface ----------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set() and time.monotonic() < self._valid_until

    @property
    def fencing_token(self) -> int:
        return self._token

    async def wait_leading(self) -> None:
        await self._leading.wait()

    async def wait_following(self) -> None:
        await self._following.wait()

    async def check(self) -> bool:
        """Leader now, confirmed by the store; False when the store cannot say."""
        if not self.is_leader:
            return False
        try:
            async with asyncio.timeout(self.call_timeout):
                ours = await self._confirm()
        except self.transient_errors as exc:
            log.warning("cannot confirm leadership", extra={"identity": self.identity, "error": str(exc)})
            return False
        if not ours:
            self._step_down("another replica holds the lease")
        return self.is_leader

    async def run(self) -> None:
        """Campaign until cancelled, then step down and release the lease."""
        failures = 0
        try:
            while True:
                started = time.monotonic()
                try:
                    # Not wait_for: on Python 3.11 it drops a cancel that lands as the call
                    # completes, and this loop would then campaign on after shutdown.
                    async with asyncio.timeout(self.call_timeout):
                        outcome = await self._attempt()
                except self.transient_errors as exc:
                    # The deadline timer steps a leader down in time; until then keep trying.
                    failures += 1
                    log.warning(
                        "leader election store failed",
                        extra={"identity": self.identity, "failures": failures, "error": str(exc) or type(exc).__name__},
                    )
                    await asyncio.sleep(backoff(failures, base=_BACKOFF_BASE, cap=self.renew_every))
                    continue
                failures = 0
                raise_if_cancelled()  # the store call may have swallowed a shutdown's cancel
                await asyncio.sleep(self._settle(outcome, started))
        finally:
            self._step_down("shutting down", logging.INFO)
            try:
                async with asyncio.timeout(self.call_timeout):
                    await self._release()
            except (*self.transient_errors, asyncio.CancelledError) as exc:
                log.warning("could not release the lease; it expires by itself", extra={"error": str(exc)})
            await self._close()

    # -- transitions ----------------------------------------------------------------------------

    def _settle(self, outcome: Held | NotHeld, started: float) -> float:
        """Apply one attempt's outcome; return how long to wait before the next one."""
        if isinstance(outcome, Held):
            if outcome.token != self._token:
                # A new term: someone may have led in between, so whoever acts must start over.
                self._step_down("the lease changed hands")
            self._valid_until = started + self.lease_seconds * (1 - STEP_DOWN_MARGIN)
            if time.monotonic() >= self._valid_until:
                self._step_down("renewing the lease took too long")
                return 0.0
            self._arm_deadline()
            if not self._leading.is_set():
                self._token = outcome.token
                self._leading.set()
                self._following.clear()
                log.info("became the leader", extra={"identity": self.identity, "fencing_token": self._token})
            return self.renew_every
        self._step_down("another replica holds the lease")
        wait = self.renew_every if outcome.retry_after is None else min(self.renew_every, outcome.retry_after)
        return max(0.0, wait) + random.uniform(0, self.renew_every / 10)

    def _arm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(
            self._valid_until - time.monotonic(), self._step_down, "could not renew the lease in time"
        )

    def _step_down(self, reason: str, level: int = logging.WARNING) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._leading.is_set():
            self._leading.clear()
            self._following.set()
            log.log(level, "stopped leading", extra={"identity": self.identity, "reason": reason})


# -- Redis: SET NX PX, compare-and-extend, compare-and-delete -------------------------------------

# KEYS: lease, fencing counter; ARGV: our value, lease ms. The counter moves only here, so while a
# lease exists the counter holds its holder's token.
_ACQUIRE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
return {1, redis.call('INCR', KEYS[2])}
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return tonumber(redis.call('GET', KEYS[2]))
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class RedisElector(LeaseElector):
    """A lease on one Redis key; its fencing counter is `KEY:fence`."""

    transient_errors = (RedisError, OSError, TimeoutError)

    def __init__(self, url: str, key: str, *, identity: str, lease_seconds: float, renew_every: float):
        super().__init__(identity=identity, lease_seconds=lease_seconds, renew_every=renew_every)
        self.key = key
        self.fence_key = f"{key}:fence"
        self._lease_ms = max(1, round(self.lease_seconds * 1000))
        self._client = aioredis.from_url(
            url,
            socket_timeout=self.call_timeout,
            socket_connect_timeout=self.call_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release_script = self._client.register_script(_RELEASE)
        # Set before the acquire is sent: if its reply is lost, the next attempt renews with it.
        self._value: str | None = None

    async def _attempt(self) -> Held | NotHeld:
        if self._value is not None:
            token = await self._renew(keys=[self.key, self.fence_key], args=[self._value, self._lease_ms])
            if token:
                return Held(int(token))
        self._value = f"{self.identity}/{secrets.token_hex(8)}"
        acquired, number = await self._acquire(keys=[self.key, self.fence_key], args=[self._value, self._lease_ms])
        if acquired:
            return Held(int(number))
        self._value = None
        return NotHeld(retry_after=number / 1000 if number > 0 else None)

    async def _confirm(self) -> bool:
        value = await self._client.get(self.key)
        return self._value is not None and value == self._value.encode()

    async def _release(self) -> None:
        if self._value is not None:
            await self._release_script(keys=[self.key], args=[self._value])
            self._value = None

    async def _close(self) -> None:
        await self._client.aclose()
