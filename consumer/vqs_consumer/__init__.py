"""vqs-consumer: the queue consumer that runs beside Vast's null PyWorker.

    from vqs_consumer import Context, handler, run

    @handler
    async def render(job: Job, ctx: Context) -> dict: ...

    run("redis://queue:6379/0?stream=jobs&group=workers", render)
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from vqs_consumer.handler import Cancelled, Context, FatalError, Handler, RetryableError, handler
from vqs_consumer.runner import Runner
from vqs_consumer.settings import Settings

__all__ = ["Cancelled", "Context", "FatalError", "Handler", "RetryableError", "Runner", "Settings", "handler", "run", "serve"]


async def serve(runner: Runner) -> None:
    """Run until SIGTERM or SIGINT, which stop the runner gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    try:
        await runner.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run(source: str, function: Any, **settings: Any) -> None:
    """Consume `source` with `function` until SIGTERM; keyword arguments are `Settings` fields."""
    asyncio.run(serve(Runner(Settings(source=source, **settings), function)))
