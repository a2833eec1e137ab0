"""Capped exponential backoff with jitter, and a retry loop built on it."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before try `attempt + 1`: half fixed, half random, so retries spread but never bunch at 0."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


async def retrying(
    operation: Callable[[], Awaitable[object]],
    what: str,
    *,
    give_up_after: float,
    base: float = 0.2,
    cap: float = 5.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
) -> bool:
    """Run `operation` until it succeeds (True) or `give_up_after` seconds have passed (False)."""
    deadline = time.monotonic() + give_up_after
    attempt = 0
    while True:
        attempt += 1
        try:
            await operation()
            return True
        except retry_on as exc:
            delay = backoff(attempt, base, cap)
            if time.monotonic() + delay > deadline:
                log.error("%s failed %d times; giving up: %s", what, attempt, exc)
                return False
            log.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, attempt, delay, exc)
            await asyncio.sleep(delay)
