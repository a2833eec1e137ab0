"""The emulator's configuration: endpoints, worker kind, emulator-only knobs, consumer and faults.

With no file it serves one endpoint `demo` with the parameters of a new Vast endpoint (min
workers 5, min_load 1, target_util 0.9, cold_mult 3, max_queue_time 30 s, target_queue_time 10 s,
inactivity_timeout unset, max_workers 20) on in-process workers: set the parameters you would
set in the Vast console (`controller.endpoint_params.RECOMMENDED` for this project). The account
key comes from VAST_API_KEY (default `local-dev-key`). Per-endpoint `cold_start_seconds`,
`resume_seconds`, `resume_failure`, `price_per_hour`, `storage_price_per_hour` and `consumer`
fall back to the top-level values. Every problem is reported as one line naming the field.

By default the emulator is Vast as documented (docs/emulator-vs-vast.md); `lenient` turns back on,
one by one, the kinder shortcuts it used to take.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.emulator.faults import Faults

DEFAULT_API_KEY = "local-dev-key"
WORKER_PERF = 100.0  # the null worker's pinned max_perf: cost 100 = one whole worker


class EmulatorConfigError(ValueError):
    """The emulator config is invalid; the message names every bad field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConsumerConfig(_Model):
    """A command started beside each worker (the queue consumer an instance would run)."""

    command: str = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    queue_url: str | None = None  # given to the consumer as QUEUE_URL
    # Process workers: the consumer serves GET /health on HEALTH_PORT and the worker's
    # BACKEND_HEALTH_URL points at it, as on an instance (the worker is ready once it answers).
    health: bool = False


class RateLimit(_Model):
    """A token bucket per (route, key): `burst` calls at once, refilled at `per_second`."""

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class Lenient(_Model):
    """Shortcuts kinder than Vast, each off by default (what Vast does instead: docs/emulator-vs-vast.md)."""

    route_skips_full_workers: bool = False  # routing knows max_sessions: no 429 from /session/create
    placement_idle_longest: bool = False  # a session goes to the worker idle longest, not a random one
    worker_idle_seconds: float | None = Field(default=None, ge=0)  # only workers idle this long stop
    early_readiness: bool = False  # ready when loaded, not at the worker library's next report
    waiting_request_idx: bool = False  # WAITING answers carry request_idx, so polls keep their place
    gone_worker_answers: bool = False  # a stopped or crashed worker answers 404/503, not a refused connection


class EndpointConfig(_Model):
    name: str = Field(min_length=1)
    id: int | None = Field(default=None, ge=1)
    api_key: str | None = Field(default=None, min_length=1)
    # Vast's defaults for a new endpoint.
    max_workers: int = Field(default=20, ge=0)
    cold_workers: int = Field(default=5, ge=0)
    min_load: float = Field(default=1.0, ge=0)
    min_cold_load: float = Field(default=0.0, ge=0)
    target_util: float = Field(default=0.9, gt=0, le=1)
    cold_mult: float = Field(default=3.0, ge=1)
    max_queue_time: float = Field(default=30.0, ge=0)
    target_queue_time: float = Field(default=10.0, ge=0)
    inactivity_timeout: float | None = None  # > 0: scale to zero after that long idle; else never
    # Emulator-only; None = the top-level value.
    cold_start_seconds: float | None = Field(default=None, ge=0)
    resume_seconds: float | None = Field(default=None, ge=0)
    resume_failure: float | None = Field(default=None, ge=0, le=1)
    price_per_hour: float | None = Field(default=None, ge=0)
    storage_price_per_hour: float | None = Field(default=None, ge=0)
    consumer: ConsumerConfig | None = None

    def public_params(self) -> dict[str, Any]:
        """The endpoint parameters as Vast's web API lists them."""
        return self.model_dump(
            include={"max_workers", "cold_workers", "min_load", "min_cold_load", "target_util", "cold_mult",
                     "max_queue_time", "target_queue_time", "inactivity_timeout"}
        )  # fmt: skip


class EmulatorConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None  # base URL handed out for in-process workers (default: host:port)
    api_key: str = Field(default_factory=lambda: os.environ.get("VAST_API_KEY") or DEFAULT_API_KEY, min_length=1)
    workers: Literal["inprocess", "process"] = "inprocess"
    worker_flavor: Literal["sessions", "reserve"] = "sessions"
    max_sessions: int = Field(default=1, ge=1)  # per in-process worker; the null worker process has 1
    cold_start_seconds: float = Field(default=3.0, ge=0)
    resume_seconds: float = Field(default=1.0, ge=0)
    # A stopped instance holds no GPU: the chance that its resume fails (then a new worker cold-starts).
    resume_failure: float = Field(default=0.1, ge=0, le=1)
    # The worker library reports every 10 s while nothing is pending: readiness is seen then.
    report_interval: float = Field(default=10.0, gt=0)
    # Vast's web API (endptjobs) per route and key; None = unlimited.
    web_api_rate_limit: RateLimit | None = Field(default_factory=lambda: RateLimit(per_second=1.0, burst=5))
    seed: int | None = 0  # placement, scale-down choice and resume failures (None: unseeded)
    clock_offset_seconds: float = 0.0  # the emulator's clock runs this far ahead (in-process workers)
    lenient: Lenient = Field(default_factory=Lenient)
    price_per_hour: float = Field(default=0.50, ge=0)
    storage_price_per_hour: float = Field(default=0.01, ge=0)
    inactive_destroy_seconds: float = Field(default=60.0, ge=0)
    gc_interval: float = Field(default=5.0, gt=0)  # in-process session GC, as the worker library's
    max_reservation_seconds: float = Field(default=3600.0, gt=0)  # reserve flavor cap
    consumer: ConsumerConfig | None = None
    faults: Faults = Field(default_factory=Faults)
    endpoints: list[EndpointConfig] = Field(default_factory=lambda: [EndpointConfig(name="demo")], min_length=1)

    @model_validator(mode="after")
    def _unique_and_filled(self) -> EmulatorConfig:
        names = [e.name for e in self.endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoints: duplicate name(s) {', '.join(duplicates)}")
        taken = {e.id for e in self.endpoints if e.id is not None}
        if len(taken) != len([e for e in self.endpoints if e.id is not None]):
            raise ValueError("endpoints: duplicate id")
        next_id = 1
        for endpoint in self.endpoints:
            while endpoint.id is None:
                if next_id not in taken:
                    endpoint.id = next_id
                next_id += 1
            if endpoint.api_key is None:
                endpoint.api_key = f"ep-{secrets.token_hex(16)}"
        return self

    def knob(self, endpoint: EndpointConfig, name: str) -> Any:
        """An emulator-only setting for one endpoint, falling back to the top-level value."""
        value = getattr(endpoint, name)
        return getattr(self, name) if value is None else value

    def with_overrides(self, **overrides: Any) -> EmulatorConfig:
        """A copy with top-level fields replaced; endpoint fields apply to every endpoint."""
        return build_config(self.model_dump(exclude_none=True), **overrides)


_TOP = set(EmulatorConfig.model_fields)
_PER_ENDPOINT = set(EndpointConfig.model_fields) - {"name", "id", "api_key"}


def build_config(data: dict[str, Any] | None = None, **overrides: Any) -> EmulatorConfig:
    """Validate a config mapping plus overrides (None values are ignored)."""
    data = dict(data or {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _TOP:
            data[key] = value
        elif key in _PER_ENDPOINT:
            endpoints = data.get("endpoints") or [{"name": "demo"}]
            data["endpoints"] = [{**endpoint, key: value} for endpoint in endpoints]
        else:
            raise EmulatorConfigError(f"{key}: unknown emulator setting")
    try:
        return EmulatorConfig.model_validate(data)
    except ValidationError as exc:
        raise EmulatorConfigError(_describe(exc)) from None


def load_config(path: str | Path | None = None, **overrides: Any) -> EmulatorConfig:
    """Read a YAML file (or nothing: the defaults) and apply overrides."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise EmulatorConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise EmulatorConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise EmulatorConfigError(f"{path}: expected a mapping at the top level")
    return build_config(data, **overrides)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"]) or "config"
        lines.append(f"{path}: {error['msg']}")
    return "; ".join(lines)
