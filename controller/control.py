"""The operator's control of the scalers, as the admin API (`admin.py`) and SIGHUP reach it:
status, pause and resume, act or advise, the recent decisions, and the reload of edited policies.

Pause and mode outlive a leadership term: a follower keeps them for when it leads, each term's
loops start from them, and a change reaches the running loop at once. `vqs_paused` says them on
every replica, leader or not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from controller.config import Config, Mode
from controller.config_load import ConfigError
from controller.decisions import DecisionLog
from controller.endpoint_check import EndpointCheck
from controller.loop import ScalerLoop
from controller.metrics import Metrics
from controller.terms import Terms

log = logging.getLogger(__name__)


class Control:
    """What the admin API calls (`admin.ScalerControl`), and the SIGHUP reload."""

    def __init__(self, config: Config, terms: Terms, metrics: Metrics, decisions: DecisionLog, endpoints: EndpointCheck):
        self._config = config
        self._terms = terms
        self._metrics = metrics
        self._decisions = decisions
        self._endpoints = endpoints
        self._paused: dict[str, bool] = {}
        self._modes = {sc.name: sc.policy.mode for sc in config.scalers}
        for sc in config.scalers:
            self._note_paused(sc.name, sc.policy.paused)

    def paused(self, name: str) -> bool:
        return self._paused[name]

    def mode(self, name: str) -> Mode:
        return self._modes[name]

    def names(self) -> list[str]:
        return [sc.name for sc in self._config.scalers]

    def status(self) -> list[dict[str, object]]:
        leading = self._terms.leading
        entries = []
        for name in self.names():
            scaler = self._terms.scalers.get(name)
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

    def set_mode(self, name: str, mode: Mode) -> None:
        self._modes[name] = mode
        loop = self._loop(name)
        if loop is not None:
            loop.set_mode(mode)
        log.info("scaler mode changed", extra={"scaler": name, "mode": mode})

    def decisions(self, scaler: str | None) -> list[dict[str, object]]:
        return self._decisions.list(scaler)

    def reload(self, load: Callable[[], Config]) -> None:
        """SIGHUP: apply edited policies and poll intervals now; anything else needs a restart."""
        try:
            new = load()
        except ConfigError as exc:
            log.error("config reload failed; keeping the running config", extra={"error": str(exc)})
            return
        running = {sc.name: sc for sc in self._config.scalers}
        for sc in new.scalers:
            old = running.get(sc.name)
            if old is None or old.model_dump(exclude={"policy", "poll_interval"}) != sc.model_dump(
                exclude={"policy", "poll_interval"}
            ):
                log.warning("config reload: this scaler's source, endpoint or session changed; restart to apply",
                            extra={"scaler": sc.name})  # fmt: skip
                continue
            self._note_paused(sc.name, sc.policy.paused)
            self._modes[sc.name] = sc.policy.mode
            loop = self._loop(sc.name)
            if loop is not None:
                loop.reconfigure(sc.policy, sc.poll_interval)
            log.info("config reloaded", extra={"scaler": sc.name, "mode": sc.policy.mode})
        if set(running) != {sc.name for sc in new.scalers}:
            log.warning("config reload: scalers were added or removed; restart to apply")
        # The endpoints may have been edited in the console too.
        self._endpoints.recheck(self._terms.scalers.values())

    def _set_paused(self, name: str, paused: bool) -> None:
        self._note_paused(name, paused)
        loop = self._loop(name)
        if loop is not None:
            loop.pause(paused)
        log.info("scaler paused" if paused else "scaler resumed", extra={"scaler": name})

    def _note_paused(self, name: str, paused: bool) -> None:
        self._paused[name] = paused
        self._metrics.set_paused(name, paused)

    def _loop(self, name: str) -> ScalerLoop | None:
        """The scaler's running loop; None while following (the next term starts from the change)."""
        scaler = self._terms.scalers.get(name)
        return scaler.loop if scaler is not None else None
