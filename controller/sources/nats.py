"""NATS JetStream source: a consumer's undelivered and unacknowledged message counts.

URL: `nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]?stream=STREAM&consumer=CONSUMER` (`tls://` for TLS).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

import nats
from nats.errors import Error as NatsError
from nats.errors import NoServersError
from nats.js.errors import NotFoundError

from controller.sources import QueueDepth, SourceError, SourceURLError, describe, query_params, split_url

log = logging.getLogger(__name__)

KIND = "NATS"
_PARAMS = {"stream": "stream=STREAM", "consumer": "consumer=CONSUMER"}
#: JetStream API error codes (nats-server's errors.json).
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
#: Seconds between nats-py's two connect attempts.
_RETRY_WAIT = 0.1


def from_url(url: str, *, timeout: float = 5.0) -> NatsSource:
    parts, display = split_url(url, KIND)
    params = query_params(parts, display, KIND, _PARAMS)

    def bad(problem: str) -> SourceURLError:
        return SourceURLError(
            f"{KIND} source URL {display!r}: {problem}; accepted: "
            "nats|tls://[USER:PASSWORD@]HOST:PORT?stream=STREAM&consumer=CONSUMER"
        )

    if not parts.hostname:
        raise bad("no host")
    if parts.path not in ("", "/"):
        raise bad(f"unexpected path {parts.path!r}")
    missing = [name for name in _PARAMS if name not in params]
    if missing:
        raise bad(" and ".join(f"{name}=" for name in missing) + (" is" if len(missing) == 1 else " are") + " required")
    auth: dict[str, str] = {}
    if parts.password is not None:
        auth = {"user": unquote(parts.username or ""), "password": unquote(parts.password)}
    elif parts.username:
        auth = {"token": unquote(parts.username)}
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    # Credentials go to nats-py as options, never inside the server URL it may print in errors.
    server = f"{parts.scheme.lower()}://{host}:{parts.port or 4222}"
    return NatsSource(display, timeout, server, auth, params["stream"][0], params["consumer"][0])


class NatsSource:
    """waiting = the consumer's num_pending (not yet delivered);
    in_flight = its num_ack_pending (delivered, not yet acknowledged)."""

    def __init__(
        self, display_url: str, timeout: float, server: str, auth: dict[str, str], stream: str, consumer: str
    ) -> None:
        self.display_url = display_url
        self.timeout = timeout
        self.stream = stream
        self.consumer = consumer
        self._server = server
        self._auth = auth
        self._nc: Any = None  # nats.aio.client.Client, made on first use
        self._connecting = asyncio.Lock()
        self._last_error: Exception | None = None

    async def depth(self) -> QueueDepth:
        try:
            async with asyncio.timeout(self.timeout):
                nc = await self._connection()
                # Answered by the consumer's leader, so in a cluster the counts are the current ones.
                info = await nc.jetstream().consumer_info(self.stream, self.consumer, timeout=self.timeout)
        except TimeoutError:
            await self._drop()
            raise SourceError(f"{self.display_url}: no answer within {self.timeout:g}s") from None
        except SourceError:
            raise
        except NotFoundError as exc:
            raise SourceError(f"{self.display_url}: {self._not_found(exc)}") from None
        except (NatsError, OSError) as exc:
            await self._drop()
            raise SourceError(f"{self.display_url}: {describe(exc)}") from exc
        return QueueDepth(waiting=int(info.num_pending or 0), in_flight=int(info.num_ack_pending or 0))

    async def close(self) -> None:
        await self._drop()

    def _not_found(self, exc: NotFoundError) -> str:
        if exc.err_code == _STREAM_NOT_FOUND:
            return f"stream {self.stream!r} does not exist"
        if exc.err_code == _CONSUMER_NOT_FOUND:
            return f"stream {self.stream!r} has no consumer {self.consumer!r}"
        return describe(exc)

    async def _connection(self) -> Any:
        """The live connection, made now if there is none: a dropped one is replaced on the next read."""
        async with self._connecting:
            if self._nc is None or self._nc.is_closed:
                self._last_error = None
                nc = nats.NATS()
                try:
                    # No reconnect loop inside nats-py: the next poll reconnects, so every read stays
                    # bounded. nats-py's fewest attempts is two, hence the short wait between them.
                    await nc.connect(
                        self._server,
                        name="vast-queue-scaler",
                        connect_timeout=self.timeout,
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=_RETRY_WAIT,
                        error_cb=self._on_error,
                        **self._auth,
                    )
                except NoServersError:
                    await _close_quietly(nc, self.timeout)
                    cause = describe(self._last_error) if self._last_error else "no server answered"
                    raise SourceError(f"{self.display_url}: cannot connect to {self._server}: {cause}") from None
                except BaseException:  # a timeout or failed handshake: stop the half-made client's tasks
                    await _close_quietly(nc, self.timeout)
                    raise
                self._nc = nc
            return self._nc

    async def _drop(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await _close_quietly(nc, self.timeout)

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports connect failures only here; the last one becomes the read's error.
        self._last_error = exc
        log.debug("NATS connection error", extra={"source": self.display_url, "error": describe(exc)})


async def _close_quietly(nc: Any, timeout: float) -> None:
    if nc.is_closed:
        return
    try:
        async with asyncio.timeout(timeout):
            await nc.close()
    except Exception:  # the connection is being thrown away; nothing to recover
        pass
