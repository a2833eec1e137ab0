"""Queue sources: each answers one question, how much work is waiting and in flight.

A source is made from a URL by `from_url()`; one module per queue kind sits beside this file
and parses its own URL (KEDA's one-file-per-scaler layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class QueueDepth:
    waiting: int
    in_flight: int

    @property
    def total(self) -> int:
        return self.waiting + self.in_flight

    def as_dict(self) -> dict[str, int]:
        return {"waiting": self.waiting, "in_flight": self.in_flight, "total": self.total}


class SourceError(Exception):
    """A depth read failed (transient or not); the message names the source, never a secret."""


class SourceURLError(ValueError):
    """A source URL is malformed or misses a parameter; the message says what is accepted."""


@runtime_checkable
class Source(Protocol):
    #: The URL with any password replaced by `***`, for logs and errors.
    display_url: str

    async def depth(self) -> QueueDepth: ...

    async def close(self) -> None: ...


@runtime_checkable
class WatchableSource(Source, Protocol):
    """A source that can push: `watch()` yields whenever the queue may have changed."""

    def watch(self) -> AsyncIterator[None]: ...
