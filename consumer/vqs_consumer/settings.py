"""The runtime's settings: one validated model, filled from keyword arguments, flags or the environment."""

from __future__ import annotations

import os
import socket

from pydantic import BaseModel, ConfigDict, Field, model_validator


def default_name() -> str:
    """This worker's name: what Vast calls the instance, else the host name."""
    for variable in ("CONSUMER_NAME", "VAST_WORKER_ID", "CONTAINER_ID"):
        if os.environ.get(variable):
            return os.environ[variable]
    return socket.gethostname()


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, description="the queue's source URL, the same one the controller reads")
    name: str = Field(
        default_factory=default_name, min_length=1, pattern=r"^[^\s*?\[\]]+$",
        description="this worker's consumer name, unique per worker (default: VAST_WORKER_ID, CONTAINER_ID or the host name)",
    )  # fmt: skip
    control_port: int = Field(
        default=18999, ge=0, le=65535, description="the null PyWorker's control port (POST /release); 0: nothing to release"
    )
    health_host: str = Field(default="127.0.0.1", description="the address /health and /metrics listen on")
    health_port: int = Field(default=9090, ge=0, le=65535, description="the port of /health and /metrics; 0: not served")
    max_attempts: int = Field(
        default=5, ge=1, description="deliveries a unit gets before it is dead-lettered (retries, and workers that died on it)"
    )
    retry_base: float = Field(default=2.0, gt=0, description="retry backoff: about retry_base * 2^(attempt-1) seconds")
    retry_cap: float = Field(default=60.0, gt=0, description="the longest retry backoff, in seconds")
    lease: float = Field(
        default=30.0, ge=1, description="seconds a unit stays this worker's without a heartbeat (heartbeats every third)"
    )
    grace: float = Field(
        default=20.0, ge=0, description="after SIGTERM, seconds the unit at hand may take to finish before it is handed back"
    )
    timeout: float = Field(default=5.0, gt=0, description="seconds one queue or release call may take")
    unit_timeout: float | None = Field(default=None, gt=0, description="a unit running longer is stopped and retried")
    stuck_after: float = Field(default=60.0, gt=0, description="/health fails once the loop has not moved for this long")
    release_for: float = Field(
        default=60.0, gt=0, description="seconds a failing release is retried (then the session's lease ends it)"
    )
    wait: float = Field(default=1.0, gt=0, le=5, description="seconds a blocking take waits for a unit")
    ready_settle: float = Field(
        default=12.0, ge=0,
        description="seconds between the worker's first health check of /health (from the start without /health) and the "
        "first unit: by then Vast has seen the worker ready, and stopped it if it booted only as spare capacity",
    )  # fmt: skip
    release_settle: float = Field(
        default=3.0, ge=0,
        description="seconds between a release and the next unit: Vast stops a worker left without a session then, idle",
    )  # fmt: skip
    dead_letter: str | None = Field(
        default=None, description="where units that cannot be done go: a Redis key, an SQS queue, a NATS subject"
    )
    results: str | None = Field(
        default=None, description="where a record of each finished unit goes: a Redis list, an SQS queue, a NATS subject"
    )
    progress: str | None = Field(
        default=None, description="where progress events go: a Redis channel, an SQS queue, a NATS subject"
    )
    cancel: str | None = Field(
        default=None, description="cancel keys' prefix (Redis, default KEY:cancel:) or the cancel subject (NATS)"
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.retry_base > self.retry_cap:
            raise ValueError(f"retry_base ({self.retry_base:g}) must not exceed retry_cap ({self.retry_cap:g})")
        return self
