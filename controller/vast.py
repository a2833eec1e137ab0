"""The thin adapter over the `vastai` SDK: the only module that imports it.

It builds the client (offline-safe SSL context for plain-http emulators), keeps the SDK's own
loggers quiet (at DEBUG they print route responses, which carry `auth_data`), and maps the SDK's
untyped exceptions onto the few outcomes the session pool acts on.

Two SDK behaviours it works around: an SDK `Endpoint` never updates its `last_refresh`, so after 3
days it fetches the web API on route calls and after 6 days on every one (where Vast's rate limit
fails them): the endpoint is fetched anew every RENEW_SECONDS, and a failed renewal keeps the one
it has. And calls inside a session need no web API at all: they work before the endpoint could be
fetched (adoption at start) and while the web API refuses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from vastai import Serverless
from vastai.serverless.client.endpoint import Endpoint
from vastai.serverless.client.request_status import RequestStatus

from controller.backoff import backoff

log = logging.getLogger(__name__)

#: How old an SDK Endpoint may get before it is fetched anew (the SDK's own refresh starts at 3 days).
RENEW_SECONDS = 12 * 3600.0
#: Endpoints fetched within this many seconds of each other share one listing of the account's.
LISTING_REUSE_SECONDS = 2.0
#: After a failed fetch, the next waits (jittered, doubling up to the cap): a first fetch retries
#: soon, a renewal (the old endpoint still works) waits minutes. Never a burst at the web API.
FIRST_FETCH_RETRY, FIRST_FETCH_RETRY_CAP = 1.0, 60.0
RENEW_RETRY, RENEW_RETRY_CAP = 60.0, 3600.0
#: After a 404 from an open, the endpoint is listed again, at most once in this many seconds.
RECHECK_SECONDS = 60.0
FETCH_TIMEOUT = 30.0
#: Beyond the open's own timeout: one route (10 s) and one /session/create (10 s) still under way.
OPEN_SLACK_SECONDS = 25.0
#: Connections to session workers at once (keep-alives), and how long an idle one is kept: longer
#: than the default lease (a renewal finds its worker's connection open), shorter than the 75 s
#: after which aiohttp servers (the worker library's) drop an idle one.
WORKER_CONNECTIONS, WORKER_KEEPALIVE_SECONDS = 256, 70.0
#: The endpoint parameters Vast lists (`get_endpoint`), as the SDK names them.
PARAMETERS = ("max_workers", "cold_workers", "min_load", "min_cold_load", "target_util", "cold_mult",
              "max_queue_time", "target_queue_time", "inactivity_timeout")  # fmt: skip

# The SDK logs every failed open at ERROR and whole responses (with auth_data) at DEBUG.
for _name in ("vastai", "Serverless", "CoroutineServerless"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)

_JSON = {"Content-Type": "application/json"}
_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
#: Worker answers that mean the session no longer exists (see the worker library's statuses).
_GONE_STATUSES = {400, 401, 404, 410}


class VastError(Exception):
    """A Vast call failed; `kind` says how the caller should react, `reason` names the cause.

    kind: rate_limited | server_error | timeout | rejected | unavailable, or the two that no
    retry mends: unauthorized (the API key is refused) | no_endpoint (no endpoint of that name).
    reason: a short label for metrics (timeout, http_503, connection_refused, ...); the message
    says the same for people, without any secret.
    """

    def __init__(self, kind: str, message: str, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.reason = reason or (f"http_{status}" if status is not None else kind)

    @property
    def fatal(self) -> bool:
        """Wrong credentials or a missing endpoint: retrying changes nothing until someone fixes it."""
        return self.kind in ("unauthorized", "no_endpoint")


class SessionGone(Exception):
    """The worker says the session does not exist any more (ended, expired or released)."""


#: Every endpoint of the account by name, listed within the given number of seconds.
Lookup = Callable[[float], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class GrantedSession:
    session_id: str
    auth_data: dict[str, Any]
    expires_at: float
    lifetime: float

    @property
    def worker_url(self) -> str:
        return str(self.auth_data.get("url", ""))


class ReservationTracker(RequestStatus):
    """The SDK's request status, plus an event set the moment a worker holds the request."""

    HELD = "In Progress"

    def __init__(self) -> None:
        self.held = asyncio.Event()
        super().__init__()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "status" and value == self.HELD:
            self.held.set()

    @property
    def holding(self) -> bool:
        return self.status == self.HELD


class RerouteTracker(RequestStatus):
    """The SDK's request status; calls `rerouted()` each time the SDK routes again.

    Inside `session()` the SDK retries a refused `/session/create` (429 from a full worker, 5xx, an
    unreachable worker) by routing again after a sleep, silently: this is the one place it shows.
    """

    RETRYING = "Retrying"

    def __init__(self, rerouted: Callable[[], None]) -> None:
        self._rerouted = rerouted
        super().__init__()

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "status" and value == self.RETRYING:
            self._rerouted()


#: Transport failures by what they mean, most specific first: (exception type, reason, words).
_TRANSPORT_CAUSES: tuple[tuple[type[BaseException], str, str], ...] = (
    (ConnectionRefusedError, "connection_refused", "connection refused"),
    (socket.gaierror, "dns", "host name not resolved"),
    (ssl.SSLError, "tls", "TLS handshake failed"),
    (aiohttp.ServerDisconnectedError, "disconnected", "server closed the connection without answering"),
    (ConnectionResetError, "connection_reset", "connection reset"),
    (aiohttp.ClientConnectorError, "connect_failed", "cannot connect"),
    (ConnectionError, "connection_error", "connection failed"),
    (aiohttp.ClientError, "client_error", "HTTP client error"),
    (OSError, "os_error", "network error"),
)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it wraps: the SDK re-raises plain Exceptions from inside its handlers."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _classify(exc: BaseException) -> VastError:
    """Turn an SDK exception into a VastError that keeps its real cause."""
    chain = _chain(exc)
    if any(isinstance(e, (asyncio.TimeoutError, TimeoutError)) for e in chain):
        return VastError("timeout", "timed out waiting for Vast", reason="timeout")
    match = _HTTP_STATUS.search(str(exc))
    status = int(match.group(1)) if match else None
    if status == 429:
        return VastError("rate_limited", "Vast answered 429 (too many requests)", status)
    if status in (401, 403):
        return VastError("unauthorized", f"Vast refused the API key (HTTP {status}): check VAST_API_KEY", status)
    if status is not None and status >= 500:
        return VastError("server_error", f"Vast answered HTTP {status}", status)
    if status is not None:
        return VastError("rejected", f"Vast answered HTTP {status}", status)
    for kind, reason, words in _TRANSPORT_CAUSES:
        found = next((e for e in chain if isinstance(e, kind)), None)
        if found is not None:
            # aiohttp names the host it could not reach (never a URL, so never a key).
            at = next((e for e in chain if isinstance(getattr(e, "host", None), str)), None)
            place = f" ({at.host}:{at.port})" if at is not None else ""
            return VastError("unavailable", f"Vast unreachable: {words}{place}", reason=reason)
    return VastError("unavailable", f"Vast unreachable: {type(exc).__name__}", reason="other")


class VastEndpoint:
    """One Vast Serverless endpoint, seen through the SDK.

    `problem` is the error no retry mends (the API key refused, the endpoint missing) while it
    lasts: set by a fetch or an open that meets it, cleared by the next that succeeds, and said in
    the log once per change.
    """

    def __init__(self, client: Serverless, name: str, *, lookup: Lookup, worker_calls: WorkerCalls,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self._client = client
        self.name = name
        self._lookup = lookup
        self._worker_calls = worker_calls
        self._clock = clock
        self.problem: VastError | None = None
        self._endpoint: Any = None
        self._fetched_at = 0.0
        self._rechecked_at = float("-inf")
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: VastError | None = None
        self._fetching = asyncio.Lock()
        # For calls inside a session: they go to the session's worker and need no endpoint data.
        self._offline = Endpoint(client, name=name, id=0, api_key="")

    async def _get(self) -> Any:
        """The SDK Endpoint to route with: fetched at first use, renewed every RENEW_SECONDS."""
        if self._fresh(RENEW_SECONDS):
            return self._endpoint
        async with self._fetching:  # one fetch at a time; the others use its result
            if not self._fresh(RENEW_SECONDS):
                await self._fetch_or_keep()
        return self._endpoint

    def _open_failed(self, error: VastError) -> VastError:
        """Note why an open failed; a 404 may mean the endpoint was deleted: list it again at the
        next open (at most once a minute)."""
        self._note(error)  # the autoscaler refusing the endpoint's key
        now = self._clock()
        if error.status == 404 and now - self._rechecked_at > RECHECK_SECONDS:
            self._rechecked_at, self._fetched_at = now, float("-inf")
        return error

    def _fresh(self, seconds: float) -> bool:
        return self._endpoint is not None and self._clock() - self._fetched_at < seconds

    async def _fetch_or_keep(self) -> None:
        """Fetch the endpoint, or keep the one fetched earlier while it still works.

        Without one, or once Vast no longer lists it (deleted), there is nothing to route with: the
        error is raised, and the fetch retried soon so its return is seen; else the old endpoint
        serves and the fetch waits minutes.
        """
        if self._clock() < self._retry_at and self._last_error is not None:
            if self._endpoint is None or self._last_error.kind == "no_endpoint":
                raise self._last_error
            return
        try:
            await self._fetch()
        except VastError as exc:
            self._last_error = exc
            unusable = self._endpoint is None or exc.kind == "no_endpoint"
            base, cap = (FIRST_FETCH_RETRY, FIRST_FETCH_RETRY_CAP) if unusable else (RENEW_RETRY, RENEW_RETRY_CAP)
            # At least `base`, so failed fetches never come in a burst.
            self._retry_at = self._clock() + base + backoff(self._failures, base=base, cap=cap)
            self._failures += 1
            if unusable:
                raise
            log.warning("could not renew the Vast endpoint; using the one fetched earlier",
                        extra={"endpoint": self.name, "error": str(exc)})  # fmt: skip

    async def parameters(self, max_age: float = 0.0) -> dict[str, Any]:
        """The endpoint's parameters as Vast lists them (None: unset), fetched unless one fetched
        within `max_age` seconds is at hand; the fetch also renews the SDK Endpoint."""
        async with self._fetching:
            if not self._fresh(max_age):
                await self._fetch()
            config = self._endpoint.data.config
        return {name: getattr(config, name, None) for name in PARAMETERS}

    async def _fetch(self) -> None:
        try:
            # Another endpoint's listing is shared, unless it is older than the 404 that asked for this one.
            reuse = min(LISTING_REUSE_SECONDS, self._clock() - self._rechecked_at)
            endpoint = (await self._lookup(reuse)).get(self.name)
            if endpoint is None:
                raise VastError("no_endpoint", f"Vast endpoint {self.name!r} does not exist", reason="no_endpoint")
        except VastError as exc:
            self._note(exc)
            raise
        self._note(None)
        self._endpoint, self._fetched_at, self._failures, self._retry_at = endpoint, self._clock(), 0, 0.0

    def _note(self, error: VastError | None) -> None:
        """Keep `problem` up to date with the outcome of a fetch or an open; say each change once."""
        if error is not None and not error.fatal:
            return  # a blip says nothing about the key or the endpoint
        before, self.problem = self.problem, error
        if error is not None and (before is None or str(before) != str(error)):
            log.error("Vast refuses this endpoint's calls: %s", error, extra={"endpoint": self.name, "reason": error.reason})
        elif error is None and before is not None:
            log.info("Vast accepts this endpoint's calls again", extra={"endpoint": self.name})

    def _for_sessions(self) -> Any:
        return self._endpoint if self._endpoint is not None else self._offline

    async def open_session(
        self,
        *,
        cost: float,
        lifetime: float,
        timeout: float,
        on_close_route: str | None = None,
        on_close_payload: dict[str, Any] | None = None,
        rerouted: Callable[[], None] = lambda: None,
    ) -> GrantedSession:
        """Route, wait for a worker with room, and create a session on it, within timeout + slack.

        What `endpoint.session()` does, through the SDK's request call so each re-route is seen.
        """
        endpoint = await self._get()
        payload = {"lifetime": lifetime, "on_close_route": on_close_route, "on_close_payload": on_close_payload}
        try:
            result = await asyncio.wait_for(
                self._client.queue_endpoint_request(
                    endpoint=endpoint, worker_route="/session/create", worker_payload=payload,
                    serverless_request=RerouteTracker(rerouted), cost=cost, timeout=timeout, worker_timeout=10.0,
                ),
                timeout + OPEN_SLACK_SECONDS,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise self._open_failed(_classify(exc)) from None
        response = result.get("response") if isinstance(result, dict) else None
        if not (result.get("ok") and isinstance(response, dict) and response.get("session_id")):
            status = result.get("status")
            raise self._open_failed(_classify(Exception(f"/session/create answered HTTP {status}")))
        self._note(None)
        return GrantedSession(
            session_id=str(response["session_id"]),
            auth_data=dict(result["auth_data"]),
            expires_at=float(response.get("expiration") or self._clock() + lifetime),
            lifetime=float(lifetime),
        )

    def _sdk_session(self, endpoint: Any, record: GrantedSession) -> Any:
        from vastai.serverless.client.session import Session

        return Session(
            endpoint=endpoint,
            session_id=record.session_id,
            lifetime=record.lifetime,
            expiration=str(record.expires_at),
            url=record.worker_url,
            auth_data=record.auth_data,
        )

    async def get_session(self, record: GrantedSession, timeout: float = 10.0) -> float:
        """The session's current expiration; SessionGone when the worker no longer has it."""
        endpoint = self._for_sessions()
        try:
            info = await endpoint.get_session(record.session_id, record.auth_data, timeout=timeout)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise self._gone_or_error(exc) from None
        return float(info.expiration)

    async def keep_alive(self, record: GrantedSession, timeout: float = 10.0) -> None:
        """One request inside the session (`/ping`): the worker extends it by one lifetime.

        What the SDK sends for a request in a session, posted directly (see `WorkerCalls`).
        """
        body = json.dumps({"auth_data": record.auth_data, "session_id": record.session_id, "payload": {}}).encode()
        try:
            status = await self._worker_calls.post(record.worker_url + "/ping", body, timeout)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise self._gone_or_error(exc) from None
        if status in _GONE_STATUSES:
            raise SessionGone(record.session_id)
        if not 200 <= status < 300:
            raise _classify(Exception(f"keep-alive answered HTTP {status}"))

    async def close_session(self, record: GrantedSession, timeout: float = 10.0) -> bool:
        """End the session on its worker: True if this call ended it, False if it was already gone."""
        endpoint = self._for_sessions()
        try:
            await asyncio.wait_for(
                self._client.end_endpoint_session(self._sdk_session(endpoint, record), timeout), timeout + 1
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = self._gone_or_error(exc)
            if not isinstance(error, SessionGone):
                raise error from None
            return False
        return True

    async def hold_reservation(self, *, cost: float, duration: float, tracker: ReservationTracker) -> None:
        """Hold one legacy `POST /reserve` until `duration` ends; cancel the task to release it.

        `tracker.held` is set once a worker holds the request.
        Cancelling drops the connection, which is how the legacy worker learns of the release.
        """
        endpoint = await self._get()
        try:
            result = await self._client.queue_endpoint_request(
                endpoint=endpoint,
                worker_route="/reserve",
                worker_payload={"duration": duration},
                serverless_request=tracker,
                cost=cost,
                worker_timeout=duration + 60,
                retry=False,
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise _classify(exc) from None
        status = result.get("status") if isinstance(result, dict) else None
        if not (isinstance(result, dict) and result.get("ok")):
            kind = "rate_limited" if status == 429 else "rejected"
            raise VastError(kind, f"reservation answered HTTP {status}", status)

    @staticmethod
    def _gone_or_error(exc: BaseException) -> Exception:
        text = str(exc)
        if "session does not exist" in text or "not found" in text or "already closed" in text:
            return SessionGone(text)
        if isinstance(exc, ValueError) and "closed session" in text:
            return SessionGone(text)
        error = _classify(exc)
        if error.status in _GONE_STATUSES:
            return SessionGone(text)
        return error


def sdk_client(api_key: str, *, webserver_url: str, autoscaler_url: str, **options: Any) -> Serverless:
    """The SDK's client; for a plain-http (local) Vast, with a ready SSL context.

    The SDK downloads Vast's root certificate before its first request, even for plain http,
    and caches the context it builds in `_ssl_context`: the one private name this project
    sets (tests/test_vast_client.py fails if the SDK stops reading it).
    """
    client = Serverless(api_key, webserver_url=webserver_url, autoscaler_url=autoscaler_url, **options)
    if webserver_url.startswith("http://") and autoscaler_url.startswith("http://"):
        client._ssl_context = ssl.create_default_context()
    return client


class WorkerCalls:
    """Plain POSTs to session workers, for the one call made once per session per lease (the
    keep-alive). Through the SDK each costs a task, a status tracker and its retry machinery:
    at 10,000 sessions most of the controller's CPU. Connections are kept for longer than a
    lease, so a worker's next renewal reuses its connection; TLS uses the SDK's context (Vast's
    root certificate)."""

    def __init__(self, client: Serverless):
        self._client = client
        self._http: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    async def post(self, url: str, body: bytes, timeout: float) -> int:
        """POST `body` (JSON, encoded); the answer's status (its body is read and dropped)."""
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=WORKER_CONNECTIONS, keepalive_timeout=WORKER_KEEPALIVE_SECONDS,
                                             ssl=await self._client.get_ssl_context())  # fmt: skip
            self._http = aiohttp.ClientSession(connector=connector)
        limit = self._timeouts.setdefault(timeout, aiohttp.ClientTimeout(total=timeout))
        # Bytes, not json=: aiohttp's JSON payload costs more than the encoding itself.
        async with self._http.post(url, data=body, headers=_JSON, timeout=limit) as response:
            await response.read()
            return response.status

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


class VastClient:
    """Owns the SDK client; hands out `VastEndpoint`s by name.

    Vast lists every endpoint of the account in one web API call, and rate-limits that call per
    key: endpoints fetched together (fifty scalers starting at once) share one listing.
    """

    def __init__(self, api_key: str, *, webserver_url: str, autoscaler_url: str,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        if not api_key:
            raise ValueError("vast.api_key: required (set VAST_API_KEY or vast.api_key_file)")
        self._client = sdk_client(api_key, webserver_url=webserver_url, autoscaler_url=autoscaler_url)
        self._worker_calls = WorkerCalls(self._client)
        self._clock = clock
        self._listing: dict[str, Any] = {}
        self._listed_at: float | None = None
        self._listing_lock = asyncio.Lock()

    def endpoint(self, name: str) -> VastEndpoint:
        return VastEndpoint(self._client, name, lookup=self.endpoints, worker_calls=self._worker_calls, clock=self._clock)

    async def endpoints(self, max_age: float = 0.0) -> dict[str, Any]:
        """Every endpoint of the account by name (SDK Endpoints), listed within `max_age` seconds."""
        async with self._listing_lock:  # one listing at a time; the others wait and share it
            if self._listed_at is None or self._clock() - self._listed_at > max_age:
                try:
                    endpoints = await asyncio.wait_for(self._client.get_endpoints(), FETCH_TIMEOUT)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise _classify(exc) from None
                self._listing, self._listed_at = {e.name: e for e in endpoints}, self._clock()
        return self._listing

    async def preflight(self, names: Iterable[str]) -> None:
        """Raise the fatal VastError (the key refused, an endpoint missing) that makes starting pointless."""
        listing = await self.endpoints()
        missing = sorted(set(names) - set(listing))
        if missing:
            which = ", ".join(repr(name) for name in missing)
            raise VastError("no_endpoint", f"no Vast endpoint named {which} in this account", reason="no_endpoint")

    async def close(self) -> None:
        await self._worker_calls.close()
        await self._client.close()
