"""Leadership terms: scalers exist only while this replica leads.

Each term builds every scaler afresh, re-adopts the ledger's sessions and runs the scalers; when
leadership is lost it hands the sessions over (leased, for the next leader to adopt), and on
SIGTERM it shuts down within SHUTDOWN_BUDGET. Between terms, and on a follower, there are none.
What is asked of the running scalers from outside is answered here too: readiness (`/readyz`) and
a worker's report that a session closed (`callbacks.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from controller.backoff import backoff
from controller.config import ScalerConfig
from controller.endpoint_check import EndpointCheck
from controller.leader import LeaderElector
from controller.ledger import LedgerError
from controller.metrics import Metrics
from controller.scaler import Scaler

log = logging.getLogger(__name__)

#: SIGTERM to exit: Kubernetes waits 30 s by default; we promise 15.
SHUTDOWN_BUDGET = 12.0
#: At the start of a term, endpoint parameters fetched this recently (by the first open) are used.
START_CHECK_MAX_AGE = 60.0


class Terms:
    """Campaigns for leadership and, in each term won, runs every scaler `build` makes."""

    def __init__(
        self,
        configs: Sequence[ScalerConfig],
        elector: LeaderElector,
        metrics: Metrics,
        endpoints: EndpointCheck,
        build: Callable[[ScalerConfig], Scaler],
    ):
        self._configs = configs
        self._elector = elector
        self._metrics = metrics
        self._endpoints = endpoints
        self._build = build
        #: The scalers of the current term, by name; empty while following.
        self.scalers: dict[str, Scaler] = {}

    @property
    def leading(self) -> bool:
        return self._elector.is_leader

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, and lead each term won, until `stop`."""
        campaign = asyncio.create_task(self._elector.run(), name="leader-election")
        self._metrics.set_leader(False)
        try:
            while await _first(stop.wait(), self._elector.wait_leading()) == 1:
                await self._lead(stop)
        finally:
            # Cancelling the campaign releases the lease, so a follower takes over at once.
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """A follower is ready; a leader when every scaler read its queue within a few polls and
        Vast accepts its endpoint's calls (the key is not refused, the endpoint exists)."""
        if not self.leading:
            return True, {"role": "follower"}
        now = time.time()
        stale = {
            name
            for name, s in self.scalers.items()
            if s.loop.last_read_ok_at is None
            or now - s.loop.last_read_ok_at > max(10.0, 5 * s.config.poll_interval)
        }
        refused = {name: str(s.endpoint.problem) for name, s in self.scalers.items() if s.endpoint.problem is not None}
        details: dict[str, object] = {"role": "leader", "not_ready": sorted(stale | set(refused))}
        if refused:
            details["vast"] = refused
        return (bool(self.scalers) and not stale and not refused, details)

    def released(self, name: str, session_id: str) -> None:
        """A worker reported a closed session: forget it and let its scaler decide at once."""
        scaler = self.scalers.get(name)
        if scaler is not None and scaler.pool.released(session_id):
            scaler.loop.wake()

    async def _lead(self, stop: asyncio.Event) -> None:
        """One leadership term: adopt, run every scaler, hand over or shut down at the end."""
        log.info("leading", extra={"fencing_token": self._elector.fencing_token})
        self._metrics.set_leader(True)
        self.scalers = {sc.name: self._build(sc) for sc in self._configs}
        tasks = [
            asyncio.create_task(self._run_scaler(scaler), name=f"scaler-{name}")
            for name, scaler in self.scalers.items()
        ]
        stopping = False
        try:
            stopping = await _first(stop.wait(), self._elector.wait_following()) == 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._end_term(release=stopping)
            self.scalers = {}
            self._metrics.set_leader(False)
        if not stopping:
            log.warning("lost leadership; sessions are left to the next leader")

    async def _run_scaler(self, scaler: Scaler) -> None:
        check = asyncio.create_task(self._endpoints.check(scaler, max_age=START_CHECK_MAX_AGE),
                                    name=f"endpoint-check-{scaler.config.name}")  # fmt: skip
        await _adopt(scaler)
        await asyncio.gather(scaler.loop.run(), scaler.pool.maintain(), check)

    async def _end_term(self, *, release: bool) -> None:
        """Cancel opens; close every session if releasing on shutdown, else leave them leased."""
        await asyncio.gather(
            *(
                s.pool.shutdown(
                    release=release and s.config.session.on_shutdown == "release",
                    timeout=SHUTDOWN_BUDGET - 2,
                )
                for s in self.scalers.values()
            ),
            return_exceptions=True,
        )
        await asyncio.gather(*(scaler.loop.close() for scaler in self.scalers.values()))
        for name in self.scalers:
            self._metrics.watch_supply(name, None)


async def _adopt(scaler: Scaler) -> None:
    """Re-adopt the ledger's sessions, retrying while the ledger cannot be read."""
    for attempt in itertools.count():
        try:
            await scaler.pool.adopt()
            return
        except LedgerError as exc:
            log.error("cannot adopt sessions; retrying", extra={"scaler": scaler.config.name, "error": str(exc)})
            await asyncio.sleep(backoff(attempt))


async def _first(*aws: Awaitable[object]) -> int:
    """Wait until one of `aws` finishes; cancel the rest; return the lowest index among the done."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(i for i, task in enumerate(tasks) if task in done)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
