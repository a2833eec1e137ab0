"""Each scaler's endpoint parameters, read at the start of a leadership term and on SIGHUP (they
may have been edited in the console): those that differ from what sessions-equal-work needs
(`endpoint_params.py`) are said once per change and shown in `vqs_endpoint_parameter_mismatch`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from controller.endpoint_params import RULES, Mismatch, mismatches
from controller.metrics import Metrics
from controller.scaler import Scaler
from controller.vast import VastError

log = logging.getLogger(__name__)


class EndpointCheck:
    """Reads endpoints' parameters and says which differ, once per change per scaler."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics
        # The endpoint parameter mismatches last reported per scaler: each is said once.
        self._reported: dict[str, list[Mismatch]] = {}
        self._checks: set[asyncio.Task[None]] = set()

    def recheck(self, scalers: Iterable[Scaler]) -> None:
        """Read every one of these endpoints anew, in the background."""
        for scaler in scalers:
            task = asyncio.create_task(self.check(scaler), name=f"endpoint-check-{scaler.config.name}")
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def check(self, scaler: Scaler, max_age: float = 0.0) -> None:
        """Read the endpoint's parameters; say once which differ from what sessions-equal-work needs."""
        name = scaler.config.name
        try:
            # At start the first open may have just fetched it; on SIGHUP it is read anew.
            params = await scaler.endpoint.parameters(max_age=max_age)
        except VastError as exc:
            self._metrics.vast_error(name, "endpoint", exc.reason)
            if not exc.fatal:  # a refused key or a missing endpoint the endpoint says itself
                log.warning("cannot read the endpoint's parameters", extra={"scaler": name, "error": str(exc)})
            return
        found = mismatches(params)
        differ = {m.field for m in found}
        self._metrics.endpoint_parameters(name, {field: field in differ for field in RULES})
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
