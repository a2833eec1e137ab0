"""The emulator's configuration: endpoints, worker kind, emulator-only knobs, consumer and faults.

With no file it serves one endpoint `demo` (target_util 1, min_load 0, max_queue_time 1,
target_queue_time 0.5, inactivity_timeout 10, max_workers 20, cold_workers 0) on in-process
workers; the account key comes from VAST_API_KEY (default `local-dev-key`). Per-endpoint
`cold_start_seconds`, `resume_seconds`, `price_per_hour`, `storage_price_per_hour` and `consumer`
fall back to the top-level values. Every problem is reported as one line naming the field.
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


class EndpointConfig(_Model):
    name: str = Field(min_length=1)
    id: int | None = Field(default=None, ge=1)
    api_key: str | None = Field(default=None, min_length=1)
    max_workers: int = Field(default=20, ge=0)
    cold_workers: int = Field(default=0, ge=0)
    min_load: float = Field(default=0.0, ge=0)
    min_cold_load: float = Field(default=0.0, ge=0)
    target_util: float = Field(default=1.0, gt=0, le=1)
    cold_mult: float = Field(default=1.0, ge=1)
    max_queue_time: float = Field(default=1.0, ge=0)
    target_queue_time: float = Field(default=0.5, ge=0)
    inactivity_timeout: float = Field(default=10.0, ge=0)
    # Emulator-only; None = the top-level value.
    cold_start_seconds: float | None = Field(default=None, ge=0)
    resume_seconds: float | None = Field(default=None, ge=0)
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
