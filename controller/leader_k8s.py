"""Leader election on a Kubernetes `coordination.k8s.io/v1` Lease, the way client-go does it.

The Lease names its holder (`holderIdentity`), how long a term lasts without renewal
(`leaseDurationSeconds`), when it was renewed and how often it changed hands (`leaseTransitions`,
this elector's fencing token). Every write carries the `resourceVersion` it read, so of two replicas
writing at once the API server accepts one and refuses the other (409 Conflict). A holder's lease
is judged run out by when this replica *saw* the Lease last change, not by `renewTime`, so clock
skew between nodes does not matter.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from controller.leader import Held, LeaderError, LeaseElector, NotHeld

#: The namespace of the pod this runs in, mounted with its service account.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class LeaseRecord:
    """What the election reads and writes of a Lease."""

    holder: str | None
    duration: int | None
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int = 0
    resource_version: str | None = None
    #: The object read from the API server, so a write keeps its other metadata.
    raw: Any = field(default=None, compare=False, repr=False)


class LeaseConflict(Exception):
    """Someone else wrote the Lease since it was read (HTTP 409)."""


class LeaseAPIError(Exception):
    """A Lease call failed; the message names the Lease, the status and the reason."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class LeaseAPI(Protocol):
    async def read(self) -> LeaseRecord | None: ...

    async def create(self, record: LeaseRecord) -> LeaseRecord: ...

    async def replace(self, record: LeaseRecord) -> LeaseRecord: ...


def next_lease(
    current: LeaseRecord | None,
    identity: str,
    *,
    now: datetime,
    lease_seconds: int,
    expired: bool,
    renewing: bool,
) -> LeaseRecord | None:
    """The Lease to write so that `identity` leads, or None while another replica holds it.

    `expired`: the holder's term ran out as this replica observed it. `renewing`: this process
    holds the current term, so the write keeps it (same acquire time and transitions).
    """
    if current is None:
        return LeaseRecord(identity, lease_seconds, now, now, 0)
    if current.holder and current.holder != identity and not expired:
        return None
    if current.holder == identity and renewing:
        return replace(current, duration=lease_seconds, renew_time=now)
    return replace(
        current,
        holder=identity,
        duration=lease_seconds,
        acquire_time=now,
        renew_time=now,
        transitions=current.transitions + 1,
    )


def released(current: LeaseRecord, now: datetime) -> LeaseRecord:
    """The Lease after its holder gives it up: no holder, so the next replica takes it at once."""
    return replace(current, holder=None, duration=1, renew_time=now)


class KubernetesElector(LeaseElector):
    """Campaigns for one Lease through a `LeaseAPI`."""

    transient_errors = (LeaseAPIError, LeaseConflict, OSError, TimeoutError)

    def __init__(self, api: LeaseAPI, *, identity: str, lease_seconds: float, renew_every: float):
        super().__init__(identity=identity, lease_seconds=lease_seconds, renew_every=renew_every)
        self._api = api
        self._renewing = False
        self._seen_version: str | None = None
        self._seen_at = 0.0

    def _remaining(self, record: LeaseRecord) -> float:
        """Seconds until `record`'s holder runs out, counted from when this replica saw it change."""
        now = time.monotonic()
        if record.resource_version != self._seen_version:
            self._seen_version, self._seen_at = record.resource_version, now
        return self._seen_at + (record.duration or self.lease_seconds) - now

    async def _attempt(self) -> Held | NotHeld:
        current = await self._api.read()
        remaining = 0.0 if current is None else self._remaining(current)
        if current is None or current.holder != self.identity:
            self._renewing = False
        desired = next_lease(
            current,
            self.identity,
            now=datetime.now(UTC),
            lease_seconds=max(1, round(self.lease_seconds)),
            expired=remaining <= 0,
            renewing=self._renewing,
        )
        if desired is None:
            return NotHeld(retry_after=remaining)
        written = await (self._api.create(desired) if current is None else self._api.replace(desired))
        self._renewing = True
        self._remaining(written)
        return Held(written.transitions)

    async def _confirm(self) -> bool:
        current = await self._api.read()
        return current is not None and current.holder == self.identity

    async def _release(self) -> None:
        if not self._renewing:
            return
        self._renewing = False
        current = await self._api.read()
        if current is not None and current.holder == self.identity:
            await self._api.replace(released(current, datetime.now(UTC)))


def pod_namespace() -> str:
    """The namespace of the pod this runs in."""
    try:
        return POD_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


class KubernetesLeaseAPI:
    """`LeaseAPI` over the official `kubernetes` client; its blocking calls run in a thread."""

    def __init__(self, name: str, namespace: str | None, *, timeout: float):
        from kubernetes import client, config

        try:
            config.load_incluster_config()
            own_namespace = pod_namespace()
        except config.ConfigException:
            try:
                config.load_kube_config()
                _, context = config.list_kube_config_contexts()
                own_namespace = context["context"].get("namespace") or "default"
            except (config.ConfigException, OSError, KeyError) as exc:
                raise LeaderError(
                    f"leader.kind kubernetes: no in-cluster service account and no usable kubeconfig ({exc})"
                ) from None
        self.name = name
        self.namespace = namespace or own_namespace
        settings = client.Configuration.get_default_copy()
        settings.retries = 0  # the elector retries, with backoff, within its deadline
        self._client = client
        self._api = client.CoordinationV1Api(client.ApiClient(settings))
        self._timeout = timeout

    async def read(self) -> LeaseRecord | None:
        try:
            lease = await self._call(self._api.read_namespaced_lease, self.name, self.namespace)
        except LeaseAPIError as exc:
            if exc.status == 404:
                return None
            raise
        return to_record(lease)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        body = to_lease(self._client, record, self.name, self.namespace)
        return to_record(await self._call(self._api.create_namespaced_lease, self.namespace, body))

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        body = to_lease(self._client, record, self.name, self.namespace)
        return to_record(await self._call(self._api.replace_namespaced_lease, self.name, self.namespace, body))

    async def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        where = f"Lease {self.namespace}/{self.name}"
        try:
            return await asyncio.to_thread(method, *args, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(f"{where} changed since it was read") from None
            raise LeaseAPIError(f"{where}: HTTP {exc.status} {exc.reason}", exc.status) from None
        except HTTPError as exc:
            raise LeaseAPIError(f"{where}: {type(exc).__name__}: {exc}") from None


def to_record(lease: Any) -> LeaseRecord:
    """A `V1Lease` -> LeaseRecord."""
    spec = lease.spec
    return LeaseRecord(
        holder=(spec.holder_identity or None) if spec else None,
        duration=spec.lease_duration_seconds if spec else None,
        acquire_time=spec.acquire_time if spec else None,
        renew_time=spec.renew_time if spec else None,
        transitions=(spec.lease_transitions or 0) if spec else 0,
        resource_version=lease.metadata.resource_version if lease.metadata else None,
        raw=lease,
    )


def to_lease(client: Any, record: LeaseRecord, name: str, namespace: str) -> Any:
    """LeaseRecord -> a `V1Lease` to write; keeps the metadata of the object it was read from."""
    if record.raw is not None and record.raw.metadata is not None:
        metadata = copy.copy(record.raw.metadata)
    else:
        metadata = client.V1ObjectMeta(name=name, namespace=namespace)
    metadata.resource_version = record.resource_version
    spec = client.V1LeaseSpec(
        holder_identity=record.holder,
        lease_duration_seconds=record.duration,
        acquire_time=record.acquire_time,
        renew_time=record.renew_time,
        lease_transitions=record.transitions,
    )
    return client.V1Lease(api_version="coordination.k8s.io/v1", kind="Lease", metadata=metadata, spec=spec)
