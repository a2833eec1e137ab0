"""Ending a task whose cancel a library swallowed.

On Python 3.11, `asyncio.wait_for` returns the awaited call's result when a cancel lands just as
the call completes, and drops the cancel (fixed in 3.12). Libraries use it inside their calls
(redis-py does whenever a socket timeout is set), so a long-running loop can be cancelled, go on,
and hold a shutdown for ever. The task still counts the request (`Task.cancelling()`), so every
such loop asks at each turn.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise CancelledError when this task was asked to stop and something swallowed it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
