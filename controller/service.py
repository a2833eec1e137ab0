"""`run`: wire sources, session pools, loops and the HTTP server together, and shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from controller.admin import admin_routes
from controller.backoff import backoff
from controller.callbacks import CloseCallbacks
from controller.config import Config, Mode, ScalerConfig
from controller.config_load import ConfigError
from controller.decisions import DecisionLog
from controller.elector import make_elector
from controller.endpoint_params import RULES, Mismatch, mismatches
from controller.leader import LeaderElector, LeaderError
from controller.ledger import FileLedger, Ledger, LedgerError, RedisLedger
from controller.logs import setup_logging
from controller.loop import NamedSource, ScalerLoop
from controller.memory import FileMemory, Memory, RedisMemory
from controller.metrics import Metrics
from controller.pool import Pool
from controller.reservations import ReservationPool
from controller.server import MetricsServer
from controller.sessions import SessionPool
from controller.sources import from_url
from controller.vast import VastClient, VastEndpoint, VastError

log = logging.getLogger(__name__)

#: The exit status when Vast refuses the API key or an endpoint does not exist (as for a bad config).
EXIT_REFUSED = 2
#: SIGTERM to exit: Kubernetes waits 30 s by default; we promise 15.
SHUTDOWN_BUDGET = 12.0
#: At the start of a term, endpoint parameters fetched this recently (by the first open) are used.
START_CHECK_MAX_AGE = 60.0


@dataclass
class Scaler:
    config: ScalerConfig
    pool: Pool
    loop: ScalerLoop
    endpoint: VastEndpoint


class Controller:
    """Every scaler of one config, and what they share: the Vast client, metrics, the server.

    Scalers exist only while this replica leads: each leadership term builds them afresh, re-adopts
    the ledger's sessions and hands them over (without closing) when the term ends.
    """

    def __init__(self, config: Config, elector: LeaderElector | None = None):
        self.config = config
        self.metrics = Metrics()
        self.elector = elector or make_elector(config.leader)
        self.callbacks = CloseCallbacks(self._released)
        self.vast = VastClient(
            config.vast.api_key.get_secret_value(),
            webserver_url=config.vast.webserver_url,
            autoscaler_url=config.vast.autoscaler_url,
        )
        self.scalers: dict[str, Scaler] = {}
        self.decision_log = DecisionLog()
        # Admin changes outlive a leadership term: each term's loops start from them.
        self._paused = {sc.name: sc.policy.paused for sc in config.scalers}
        self._modes = {sc.name: sc.policy.mode for sc in config.scalers}
        # The endpoint parameter mismatches last reported per scaler: each is said once.
        self._reported: dict[str, list[Mismatch]] = {}
        self._checks: set[asyncio.Task[None]] = set()
        self.server = MetricsServer(
            self.metrics,
            config.metrics_host,
            config.metrics_port,
            readiness=self.readiness,
            routes=[*self.callbacks.routes(), *admin_routes(self, config.admin_token)],
        )

    def _make_scaler(self, sc: ScalerConfig) -> Scaler:
        if sc.sources is None:
            sources = [NamedSource(sc.name, from_url(sc.source or ""))]
        else:
            sources = [NamedSource(spec.label, from_url(spec.url), spec.weight, spec.reserve) for spec in sc.sources]
        endpoint = self.vast.endpoint(sc.endpoint)
        pool = self._make_pool(sc, endpoint)
        self.metrics.watch_supply(sc.name, lambda: pool.supply)
        loop = ScalerLoop(
            sc.name,
            sources,
            pool,
            sc.policy,
            sc.poll_interval,
            self.metrics,
            acting=self.elector.check,
            decisions=self.decision_log,
            memory=self._make_memory(sc.name) if sc.policy.wait_target is not None else None,
            paused=self._paused[sc.name],
            mode=self._modes[sc.name],
        )
        return Scaler(sc, pool, loop, endpoint)

    # -- the admin API (controller.admin.ScalerControl) ----------------------------------------

    def names(self) -> list[str]:
        return [sc.name for sc in self.config.scalers]

    def status(self) -> list[dict[str, object]]:
        leading = self.elector.is_leader
        entries = []
        for name in self.names():
            scaler = self.scalers.get(name)
            loop = scaler.loop if scaler else None
            depth = loop.last_depth if loop else None
            supply = scaler.pool.supply if scaler else None
            entries.append(
                {
                    "name": name,
                    "depth": depth.as_dict() if depth is not None else None,
                    "target": loop.last_decision.target if loop and loop.last_decision else None,
                    "sessions": {"open": supply.open if supply else 0, "opening": supply.opening if supply else 0},
                    "leader": leading,
                    "paused": self._paused[name],
                    "mode": self._modes[name],
                    "last_read_ok_at": loop.last_read_ok_at if loop else None,
                }
            )
        return entries

    def pause(self, name: str) -> None:
        self._set_paused(name, True)

    def resume(self, name: str) -> None:
        self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> None:
        self._paused[name] = paused
        scaler = self.scalers.get(name)
        if scaler is not None:
            scaler.loop.pause(paused)
        log.info("scaler paused" if paused else "scaler resumed", extra={"scaler": name})

    def set_mode(self, name: str, mode: Mode) -> None:
        self._modes[name] = mode
        scaler = self.scalers.get(name)
        if scaler is not None:
            scaler.loop.set_mode(mode)
        log.info("scaler mode changed", extra={"scaler": name, "mode": mode})

    def decisions(self, scaler: str | None) -> list[dict[str, object]]:
        return self.decision_log.list(scaler)

    def reload(self, load: Callable[[], Config]) -> None:
        """SIGHUP: apply edited policies and poll intervals now; anything else needs a restart."""
        try:
            new = load()
        except ConfigError as exc:
            log.error("config reload failed; keeping the running config", extra={"error": str(exc)})
            return
        running = {sc.name: sc for sc in self.config.scalers}
        for sc in new.scalers:
            old = running.get(sc.name)
            if old is None or old.model_dump(exclude={"policy", "poll_interval"}) != sc.model_dump(
                exclude={"policy", "poll_interval"}
            ):
                log.warning("config reload: this scaler's source, endpoint or session changed; restart to apply",
                            extra={"scaler": sc.name})  # fmt: skip
                continue
            self._paused[sc.name], self._modes[sc.name] = sc.policy.paused, sc.policy.mode
            scaler = self.scalers.get(sc.name)
            if scaler is not None:
                scaler.loop.reconfigure(sc.policy, sc.poll_interval)
            log.info("config reloaded", extra={"scaler": sc.name, "mode": sc.policy.mode})
        if set(running) != {sc.name for sc in new.scalers}:
            log.warning("config reload: scalers were added or removed; restart to apply")
        for scaler in self.scalers.values():  # the endpoints may have been edited in the console too
            task = asyncio.create_task(self._check_endpoint(scaler), name=f"endpoint-check-{scaler.config.name}")
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check_endpoint(self, scaler: Scaler, max_age: float = 0.0) -> None:
        """Read the endpoint's parameters; say once which differ from what sessions-equal-work needs."""
        name = scaler.config.name
        try:
            # At start the first open may have just fetched it; on SIGHUP it is read anew.
            params = await scaler.endpoint.parameters(max_age=max_age)
        except VastError as exc:
            self.metrics.vast_error(name, "endpoint", exc.reason)
            if not exc.fatal:  # a refused key or a missing endpoint the endpoint says itself
                log.warning("cannot read the endpoint's parameters", extra={"scaler": name, "error": str(exc)})
            return
        found = mismatches(params)
        differ = {m.field for m in found}
        self.metrics.endpoint_parameters(name, {field: field in differ for field in RULES})
        if found == self._reported.get(name, []):
            return
        self._reported[name] = found
        if found:
            log.warning(
                "the endpoint's parameters differ from what sessions-equal-work needs",
                extra={"scaler": name, "endpoint": scaler.config.endpoint, "mismatches": "; ".join(map(str, found))},
            )
        else:
            log.info("the endpoint's parameters are as recommended", extra={"scaler": name})

    # -- serving -------------------------------------------------------------------------------

    def _make_ledger(self, scaler: str) -> Ledger:
        if self.config.state_url is not None:
            return RedisLedger(str(self.config.state_url), scaler)
        return FileLedger(self.config.state_dir, scaler)

    def _make_memory(self, scaler: str) -> Memory:
        """Where a scaler's policy keeps what it learned: beside its session ledger."""
        if self.config.state_url is not None:
            return RedisMemory(str(self.config.state_url), scaler)
        return FileMemory(self.config.state_dir, scaler)

    def _make_pool(self, sc: ScalerConfig, endpoint: VastEndpoint) -> Pool:
        session = sc.session
        if session.reservation == "reserve":
            return ReservationPool(
                sc.name,
                endpoint,
                self.metrics,
                duration=session.reserve_duration,
                session_cost=session.session_cost,
                max_concurrent_opens=session.max_concurrent_opens,
            )
        on_close_route = on_close_payload = None
        if session.callback_url:
            on_close_route = self.callbacks.route(str(session.callback_url))
            on_close_payload = self.callbacks.payload(sc.name)
        return SessionPool(
            sc.name,
            endpoint,
            self._make_ledger(sc.name),
            self.metrics,
            lease_seconds=session.lease_seconds,
            session_cost=session.session_cost,
            open_timeout=session.open_timeout,
            max_concurrent_opens=session.max_concurrent_opens,
            on_close_route=on_close_route,
            on_close_payload=on_close_payload,
        )

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """A follower is ready; a leader when every scaler read its queue within a few polls and
        Vast accepts its endpoint's calls (the key is not refused, the endpoint exists)."""
        if not self.elector.is_leader:
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

    def _released(self, name: str, session_id: str) -> None:
        """A worker reported a closed session: forget it and let its scaler decide at once."""
        scaler = self.scalers.get(name)
        if scaler is not None and scaler.pool.released(session_id):
            scaler.loop.wake()

    async def run(self, stop: asyncio.Event) -> None:
        await self.server.start()
        campaign = asyncio.create_task(self.elector.run(), name="leader-election")
        self.metrics.set_leader(False)
        try:
            while await _first(stop.wait(), self.elector.wait_leading()) == 1:
                await self._lead(stop)
        finally:
            # Cancelling the campaign releases the lease, so a follower takes over at once.
            campaign.cancel()
            await asyncio.gather(campaign, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.vast.close()
            await self.server.stop()
            log.info("controller stopped")

    async def _lead(self, stop: asyncio.Event) -> None:
        """One leadership term: adopt, run every scaler, hand over or shut down at the end."""
        log.info("leading", extra={"fencing_token": self.elector.fencing_token})
        self.metrics.set_leader(True)
        self.scalers = {sc.name: self._make_scaler(sc) for sc in self.config.scalers}
        tasks = [
            asyncio.create_task(self._run_scaler(scaler), name=f"scaler-{name}")
            for name, scaler in self.scalers.items()
        ]
        stopping = False
        try:
            stopping = await _first(stop.wait(), self.elector.wait_following()) == 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._end_term(release=stopping)
            self.scalers = {}
            self.metrics.set_leader(False)
        if not stopping:
            log.warning("lost leadership; sessions are left to the next leader")

    async def _run_scaler(self, scaler: Scaler) -> None:
        check = asyncio.create_task(self._check_endpoint(scaler, max_age=START_CHECK_MAX_AGE),
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
            self.metrics.watch_supply(name, None)


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


async def run(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """The `run` command: until SIGTERM/SIGINT; SIGHUP re-reads the policies with `reload`."""
    setup_logging(config.log_level, config.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        controller = Controller(config)
        await _preflight(controller.vast, config)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: controller.reload(reload))
        await controller.run(stop)
    except VastError as exc:
        log.error("cannot start: %s", exc, extra={"reason": exc.reason})
        await controller.vast.close()
        return EXIT_REFUSED
    except (LedgerError, LeaderError, OSError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    return 0


async def _preflight(vast: VastClient, config: Config) -> None:
    """Refuse to start when Vast refuses the key or an endpoint is missing (a VastError); an
    unreachable Vast is only a warning: the scalers retry, as they do for any outage."""
    try:
        await vast.preflight(sc.endpoint for sc in config.scalers)
    except VastError as exc:
        if exc.fatal:
            raise
        log.warning("cannot reach Vast to check the key and endpoints; starting anyway", extra={"error": str(exc)})
