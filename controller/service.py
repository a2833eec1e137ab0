"""The `run` command: one process's parts wired together, run until SIGTERM/SIGINT.

The parts: the metrics, the leader election, the Vast client, the scaler builder (`scaler.py`),
leadership terms (`terms.py`), the operator's control (`control.py`, also SIGHUP's reload) and the
HTTP server with the admin and close-callback routes. A refused API key or a missing endpoint
stops it at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from controller.admin import admin_routes
from controller.callbacks import CloseCallbacks
from controller.config import Config, ScalerConfig
from controller.control import Control
from controller.decisions import DecisionLog
from controller.elector import make_elector
from controller.endpoint_check import EndpointCheck
from controller.leader import LeaderError
from controller.ledger import LedgerError
from controller.logs import setup_logging
from controller.metrics import Metrics
from controller.scaler import Scaler, ScalerBuilder
from controller.server import MetricsServer
from controller.terms import Terms
from controller.vast import VastClient, VastError

log = logging.getLogger(__name__)

#: The exit status when Vast refuses the API key or an endpoint does not exist (as for a bad config).
EXIT_REFUSED = 2


class Controller:
    """Every scaler of one config, and what they share: the Vast client, metrics, the server."""

    def __init__(self, config: Config):
        metrics = Metrics()
        elector = make_elector(config.leader)
        self.vast = VastClient(
            config.vast.api_key.get_secret_value(),
            webserver_url=config.vast.webserver_url,
            autoscaler_url=config.vast.autoscaler_url,
        )
        decisions = DecisionLog()
        endpoints = EndpointCheck(metrics)
        self.terms = Terms(config.scalers, elector, metrics, endpoints, self._build)
        callbacks = CloseCallbacks(self.terms.released)
        self._builder = ScalerBuilder(config, self.vast, metrics, callbacks, acting=elector.check, decisions=decisions)
        self.control = Control(config, self.terms, metrics, decisions, endpoints)
        self.server = MetricsServer(
            metrics,
            config.metrics_host,
            config.metrics_port,
            readiness=self.terms.readiness,
            routes=[*callbacks.routes(), *admin_routes(self.control, config.admin_token)],
        )

    def _build(self, sc: ScalerConfig) -> Scaler:
        """A scaler for a new term, starting from the operator's pause and mode."""
        return self._builder.build(sc, paused=self.control.paused(sc.name), mode=self.control.mode(sc.name))

    async def run(self, stop: asyncio.Event) -> None:
        await self.server.start()
        try:
            await self.terms.run(stop)
        finally:
            with contextlib.suppress(Exception):
                await self.vast.close()
            await self.server.stop()
            log.info("controller stopped")


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
            loop.add_signal_handler(signal.SIGHUP, lambda: controller.control.reload(reload))
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
