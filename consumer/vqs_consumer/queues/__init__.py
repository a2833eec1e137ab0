"""Queue kinds behind one small interface: take a unit, keep its lease, finish it one way or another.

`from_url()` builds a queue from the same source URL the controller reads (one module per kind
beside this file parses its own URL), so the units this runtime holds are exactly what the
controller counts as in flight.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qsl, urlsplit


class QueueURLError(ValueError):
    """A source URL is malformed or misses a parameter; the message says what is accepted."""


class QueueError(Exception):
    """A queue operation failed (transient or not); the message names the queue, never a secret."""


class QueueSetupError(QueueError):
    """The queue cannot be consumed as configured (missing group, consumer or dead-letter queue)."""


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """What a queue kind needs beyond its URL; destinations are in the kind's own terms."""

    #: This worker's consumer name: a Redis consumer / processing-list suffix.
    name: str
    #: Seconds a taken unit stays this worker's without a heartbeat; after it another worker may take it.
    lease: float = 30.0
    #: Seconds one network call may take.
    timeout: float = 5.0
    dead_letter: str | None = None
    results: str | None = None
    progress: str | None = None
    cancel: str | None = None


@dataclass(slots=True)
class Delivery:
    """One unit taken from the queue."""

    #: The queue's own id (stream entry id, SQS MessageId, JetStream sequence, hash of a list item).
    message_id: str
    #: The message: a stream entry's fields, else its bytes.
    body: bytes | dict[str, str]
    #: 1 on the first delivery; redeliveries (retries, a dead worker's units) count up.
    attempt: int
    #: The kind's own handle (a receipt handle, a NATS message, a list item).
    handle: Any = None


class Queue(Protocol):
    #: The URL with any password replaced by `***`, for logs and errors.
    display_url: str
    #: Seconds a unit stays this worker's without a heartbeat (known once open).
    lease: float
    #: Whether `retry()` delays the redelivery itself; if not, the runner holds the unit meanwhile.
    native_delay: bool

    async def open(self) -> None:
        """Connect, check the queue is usable, recover units this worker's previous run left."""

    async def take(self, wait: float) -> Delivery | None:
        """The next unit, waiting up to `wait` seconds (0: only one already waiting)."""

    async def extend(self, delivery: Delivery) -> bool:
        """Renew the unit's lease; False when another worker has taken it over."""

    async def ack(self, delivery: Delivery, record: bytes | None) -> None:
        """The unit is done: remove it, writing `record` to the results destination if there is one."""

    async def retry(self, delivery: Delivery, delay: float) -> None:
        """Hand the unit back for redelivery after about `delay` seconds."""

    async def hand_back(self, delivery: Delivery, started: bool) -> None:
        """Give an unfinished unit back at once (this worker is stopping).

        Started: as waiting work, nothing left in flight. Not started (it arrived with the stop):
        first in line for the next worker, which may leave it in flight until then.
        """

    async def dead_letter(self, delivery: Delivery, reason: str, record: bytes | None) -> None:
        """Move the unit to the dead-letter destination, writing `record` to the results destination."""

    async def publish_progress(self, event: bytes) -> None:
        """Send a progress event to the progress destination (a no-op without one)."""

    async def cancelled(self, delivery: Delivery, unit_id: str) -> bool:
        """Whether the unit has been cancelled (its cancel key or message); False where unsupported."""

    async def close(self) -> None: ...


#: URL scheme -> module in this package that builds the queue.
_KINDS = {"redis": "redis", "rediss": "redis", "sqs": "sqs", "https": "sqs", "nats": "nats", "tls": "nats"}
ACCEPTED_URLS = (
    "redis[s]://[:PASSWORD@]HOST:PORT/DB?list=KEY&processing=PREFIX* or ?stream=KEY&group=GROUP, "
    "sqs://QUEUE?region=REGION, https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE, "
    "nats|tls://[USER:PASSWORD@]HOST:PORT?stream=STREAM&consumer=CONSUMER"
)


def from_url(url: str, options: QueueOptions) -> Queue:
    """The queue for `url`; nothing connects until `open()`."""
    if not isinstance(url, str) or "://" not in url:
        raise QueueURLError(f"not a source URL: {mask_url(str(url))!r}; accepted: {ACCEPTED_URLS}")
    if not options.timeout > 0 or not options.lease > 0:
        raise QueueURLError(f"timeout and lease must be positive seconds, got {options.timeout!r} and {options.lease!r}")
    scheme = url.split("://", 1)[0].lower()
    kind = _KINDS.get(scheme)
    if kind is None:
        raise QueueURLError(f"unknown source URL scheme {scheme + '://'!r} in {mask_url(url)!r}; accepted: {ACCEPTED_URLS}")
    # Imported on demand: an instance installs only its own kind's client library.
    module = importlib.import_module(f"{__name__}.{kind}")
    return module.from_url(url, options)


def mask_url(url: str, *, secret_user: bool = False) -> str:
    """`url` with its password (or, with `secret_user`, a lone user part such as a token) as `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The authority ends at the first '/', '?' or '#'; its userinfo ends at the last '@' (RFC 3986).
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    if not at:
        # An unencoded '?' or '#' in a password cuts the authority short: hide all before the '@'.
        hidden = rest.partition("/")[0].rpartition("@")[0]
        return f"{scheme}://***@{rest[len(hidden) + 1:]}" if hidden else url
    user, colon, _ = userinfo.partition(":")
    if colon:
        userinfo = f"{user}:***"
    elif secret_user:
        userinfo = "***"
    return f"{scheme}://{userinfo}@{host}{tail}"


def split_url(url: str, kind: str) -> tuple[SplitResult, str]:
    """(parts, display URL) of `url`; a malformed port is a QueueURLError."""
    display = mask_url(url, secret_user=kind == "NATS")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:  # its text may quote part of a password that holds an unencoded '#' or '?'
        raise QueueURLError(f"{kind} source URL {display!r}: the port must be a number from 1 to 65535") from None
    if parts.fragment:
        raise QueueURLError(f"{kind} source URL {display!r}: remove the '#...' fragment")
    return parts, display


def query_params(
    parts: SplitResult, display: str, kind: str, accepted: dict[str, str], repeatable: frozenset[str] = frozenset()
) -> dict[str, list[str]]:
    """The query as name -> values; unknown, empty or repeated-but-single names are QueueURLErrors."""
    listing = ", ".join(accepted.values())
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in accepted:
            raise QueueURLError(f"{kind} source URL {display!r}: unknown parameter {name!r}; accepted: {listing}")
        if not value:
            raise QueueURLError(f"{kind} source URL {display!r}: parameter {name!r} is empty; accepted: {listing}")
        if name in params and name not in repeatable:
            raise QueueURLError(f"{kind} source URL {display!r}: parameter {name!r} is given twice")
        params.setdefault(name, []).append(value)
    return params


def describe(exc: BaseException) -> str:
    """One line naming the error's type and its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
