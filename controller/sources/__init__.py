"""Queue sources: each answers one question, how much work is waiting and in flight.

A source is made from a URL by `from_url()`; one module per queue kind sits beside this file
and parses its own URL (KEDA's one-file-per-scaler layout).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import SplitResult, parse_qsl, urlsplit

from controller.masking import mask_url


@dataclass(frozen=True, slots=True)
class QueueDepth:
    waiting: int
    in_flight: int
    #: Seconds the oldest waiting unit has waited, where the queue can tell (else None).
    oldest_age: float | None = None
    #: The queue read as empty because what the URL names does not exist (yet), e.g. a stream's
    #: consumer group: not an error (producers may create it later), but worth saying.
    missing: str | None = None

    @property
    def total(self) -> int:
        return self.waiting + self.in_flight

    def as_dict(self) -> dict[str, int | str]:
        counts: dict[str, int | str] = {"waiting": self.waiting, "in_flight": self.in_flight, "total": self.total}
        return counts if self.missing is None else {**counts, "missing": self.missing}


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


#: URL scheme -> module in this package that builds the source.
_KINDS = {"redis": "redis", "rediss": "redis", "sqs": "sqs", "https": "sqs", "nats": "nats", "tls": "nats"}
ACCEPTED_URLS = (
    "redis[s]://[:PASSWORD@]HOST:PORT/DB?list=KEY or ?stream=KEY&group=GROUP, "
    "sqs://QUEUE?region=REGION, https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE, "
    "nats|tls://[USER:PASSWORD@]HOST:PORT?stream=STREAM&consumer=CONSUMER"
)


def from_url(url: str, *, timeout: float = 5.0) -> Source:
    """The source for `url`; nothing connects until the first `depth()`."""
    if not isinstance(url, str) or "://" not in url:
        raise SourceURLError(f"not a source URL: {mask_url(str(url))!r}; accepted: {ACCEPTED_URLS}")
    if not timeout > 0:
        raise SourceURLError(f"source timeout must be a positive number of seconds, got {timeout!r}")
    scheme = url.split("://", 1)[0].lower()
    kind = _KINDS.get(scheme)
    if kind is None:
        raise SourceURLError(f"unknown source URL scheme {scheme + '://'!r} in {mask_url(url)!r}; accepted: {ACCEPTED_URLS}")
    # Imported on demand: the controller only pays for the client library it uses (boto3 is slow to import).
    module = importlib.import_module(f"{__name__}.{kind}")
    return module.from_url(url, timeout=timeout)


async def read_once(url: str, timeout: float = 5.0) -> QueueDepth:
    """Make the source, read its depth once, close it."""
    source = from_url(url, timeout=timeout)
    try:
        return await source.depth()
    finally:
        await source.close()


def split_url(url: str, kind: str) -> tuple[SplitResult, str]:
    """(parts, display URL) of `url`; a malformed port is a SourceURLError."""
    display = mask_url(url, secret_user=kind == "NATS")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:  # its text may quote part of a password that holds an unencoded '#' or '?'
        raise SourceURLError(f"{kind} source URL {display!r}: the port must be a number from 1 to 65535") from None
    if parts.fragment:
        raise SourceURLError(f"{kind} source URL {display!r}: remove the '#...' fragment")
    return parts, display


def query_params(
    parts: SplitResult, display: str, kind: str, accepted: dict[str, str], repeatable: frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    """The query as name -> values; unknown, empty or repeated-but-single names are SourceURLErrors.

    `accepted` maps each name to a short description used in the error message.
    """
    listing = ", ".join(accepted.values())
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in accepted:
            raise SourceURLError(f"{kind} source URL {display!r}: unknown parameter {name!r}; accepted: {listing}")
        if not value:
            raise SourceURLError(f"{kind} source URL {display!r}: parameter {name!r} is empty; accepted: {listing}")
        if name in params and name not in repeatable:
            raise SourceURLError(f"{kind} source URL {display!r}: parameter {name!r} is given twice")
        params.setdefault(name, []).append(value)
    return params


def describe(exc: BaseException) -> str:
    """One line naming the error's type and its message, for SourceError texts."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
