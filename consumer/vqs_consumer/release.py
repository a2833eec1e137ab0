"""Ending this worker's session through the null PyWorker's control server."""

from __future__ import annotations

import asyncio
import logging
import urllib.request

from vqs_consumer.backoff import retrying
from vqs_consumer.metrics import Metrics

log = logging.getLogger(__name__)


class Releaser:
    """`POST http://127.0.0.1:PORT/release`, retried: a missed release holds a GPU until the lease ends."""

    def __init__(self, port: int | None, metrics: Metrics, *, timeout: float, give_up_after: float) -> None:
        self.url = f"http://127.0.0.1:{port}/release" if port else None
        # Never through an HTTP proxy from the environment: the control server is on this machine.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.metrics = metrics
        self.timeout = timeout
        self.give_up_after = give_up_after

    async def release(self) -> bool:
        if self.url is None:  # no null worker beside this consumer (a local run)
            return True
        ok = await retrying(self._post, "session release", give_up_after=self.give_up_after, retry_on=(OSError,))
        self.metrics.releases.labels("ok" if ok else "failed").inc()
        if ok:
            log.info("session released")
        return ok

    async def _post(self) -> None:
        await asyncio.to_thread(self._post_blocking)

    def _post_blocking(self) -> None:
        request = urllib.request.Request(self.url or "", data=b"", method="POST")
        # The opener raises HTTPError (an OSError) on any non-2xx answer, so those are retried too.
        with self._opener.open(request, timeout=self.timeout) as response:
            response.read()
