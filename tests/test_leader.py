"""Leader election on real Redis (and the Kubernetes Lease logic against an in-memory API server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from controller.config import LeaderConfig, split_ledger_prefix
from controller.config_load import ConfigError, load_config
from controller.elector import make_elector
from controller.leader import LeaseElector, NoElection, NotHeld, RedisElector
from controller.leader_k8s import (
    KubernetesElector,
    LeaseConflict,
    LeaseRecord,
    next_lease,
    released,
    to_lease,
    to_record,
)
from controller.ledger import LedgerError, RedisLedger, SessionRecord
from controller.vast import GrantedSession

ROOT = Path(__file__).resolve().parents[1]
LEASE, RENEW = 2.0, 0.4


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def key(redis_url: str) -> AsyncIterator[str]:
    """A lease key of this test's own; every key under it is deleted afterwards."""
    name = f"vqs-test-leader:{uuid.uuid4().hex}"
    yield name
    client = aioredis.from_url(redis_url)
    stale = [k async for k in client.scan_iter(match=f"{name}*")]
    if stale:
        await client.delete(*stale)
    await client.aclose()


def elector(url: str, key: str, identity: str, lease: float = LEASE, renew: float = RENEW) -> RedisElector:
    return RedisElector(url, key, identity=identity, lease_seconds=lease, renew_every=renew)


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def campaigning(*electors: RedisElector | KubernetesElector) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    """Run each elector's campaign; cancel them all (which releases) on the way out."""
    tasks = {e.identity: asyncio.create_task(e.run()) for e in electors}
    try:
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


@contextlib.asynccontextmanager
async def never_two_leaders(*electors: RedisElector | KubernetesElector) -> AsyncIterator[None]:
    """Sample `is_leader` of all electors at the same instant, every few ms; fail on any overlap."""
    overlaps: list[list[str]] = []

    async def watch() -> None:
        while True:
            leading = [e.identity for e in electors if e.is_leader]
            if len(leading) > 1:
                overlaps.append(leading)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
    assert not overlaps, f"two leaders at once: {overlaps[0]}"


def leader_of(*electors: RedisElector | KubernetesElector) -> RedisElector | KubernetesElector | None:
    leading = [e for e in electors if e.is_leader]
    assert len(leading) <= 1
    return leading[0] if leading else None


# -- Redis lease ---------------------------------------------------------------------------------


async def test_two_electors_on_one_key_exactly_one_leads_and_keeps_leading(redis_url, key):
    a, b = elector(redis_url, key, "a"), elector(redis_url, key, "b")
    async with never_two_leaders(a, b), campaigning(a, b):
        await until(lambda: leader_of(a, b) is not None)
        leader, follower = (a, b) if a.is_leader else (b, a)
        token = leader.fencing_token
        assert await leader.check() and not await follower.check()
        # Past two leases the same term goes on: renewals keep the lease alive.
        end = time.monotonic() + 2 * LEASE
        await until(lambda: time.monotonic() > end)
        assert leader.is_leader and leader.fencing_token == token and not follower.is_leader


async def test_released_lease_is_taken_over_long_before_it_would_expire(redis_url, key):
    # A 30 s lease: a takeover within the poll deadline proves the lease was released, not expired.
    a, b = elector(redis_url, key, "a", lease=30, renew=0.2), elector(redis_url, key, "b", lease=30, renew=0.2)
    async with campaigning(a) as first:
        await until(lambda: a.is_leader)
        async with never_two_leaders(a, b), campaigning(b):
            await asyncio.sleep(0.5)  # b tries a few times and fails
            assert not b.is_leader
            first["a"].cancel()
            await until(lambda: b.is_leader, timeout=10)
    assert b.fencing_token > a.fencing_token


async def test_fencing_tokens_increase_with_every_term(redis_url, key):
    tokens = []
    for identity in ("a", "b", "a", "c"):
        candidate = elector(redis_url, key, identity)
        async with campaigning(candidate):
            await until(lambda candidate=candidate: candidate.is_leader)
            tokens.append(candidate.fencing_token)
    assert tokens == sorted(set(tokens)) and len(tokens) == 4


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from controller.leader import RedisElector

    async def main():
        e = RedisElector(sys.argv[1], sys.argv[2], identity="child", lease_seconds=float(sys.argv[3]),
                         renew_every=float(sys.argv[4]))
        task = asyncio.create_task(e.run())
        await e.wait_leading()
        print("leading", e.fencing_token, flush=True)
        await task

    asyncio.run(main())
    """
)


async def test_killed_leader_is_replaced_once_its_lease_runs_out(redis_url, key):
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, redis_url, key, str(LEASE), str(RENEW),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.startswith(b"leading "), line
        child_token = int(line.split()[1])
        b = elector(redis_url, key, "b")
        async with campaigning(b):
            await asyncio.sleep(RENEW * 2)
            assert not b.is_leader  # the child renews
            child.send_signal(signal.SIGKILL)  # no release: the lease must run out
            await until(lambda: b.is_leader)
        assert b.fencing_token > child_token
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


class Proxy:
    """A TCP proxy in front of Redis that can black-hole or refuse: a network outage for one client."""

    def __init__(self, url: str):
        self._parts = urlsplit(url)
        self.target = (self._parts.hostname or "127.0.0.1", self._parts.port or 6379)
        self.mode = "pass"
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        userinfo = self._parts.netloc.rpartition("@")[0]
        self.url = self._parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address).geturl()
        return self

    async def __aexit__(self, *_: object) -> None:
        self.fail("refuse")
        self._server.close()

    def fail(self, mode: str) -> None:
        """`blackhole`: swallow every byte (calls time out); `refuse`: drop every connection."""
        self.mode = mode
        if mode == "refuse":
            for writer in self._writers:
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        writer.close()
        up_writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.mode == "pass":
                writer.write(data)
                await writer.drain()


def _record(session_id: str) -> SessionRecord:
    session = GrantedSession(session_id=session_id, auth_data={"signature": "s"}, expires_at=1e10, lifetime=60.0)
    return SessionRecord(session=session, opened_at=1.0)


@pytest.mark.parametrize("outage", ["blackhole", "refuse"])
async def test_leader_cut_off_from_redis_steps_down_before_anyone_takes_over(redis_url, key, outage):
    state_url = f"{redis_url}{'&' if '?' in redis_url else '?'}prefix={key}"
    async with Proxy(redis_url) as proxy:
        a = elector(proxy.url, key, "a")
        b = elector(redis_url, key, "b")
        async with never_two_leaders(a, b), campaigning(a) as first:
            await until(lambda: a.is_leader)
            ledger_a = RedisLedger(state_url, "jobs")
            ledger_a.load()
            ledger_a.write({"from-a": _record("from-a")})
            async with campaigning(b):
                stepped_down = asyncio.create_task(a.wait_following())
                proxy.fail(outage)
                await until(lambda: b.is_leader)
                assert stepped_down.done() and not a.is_leader and not await a.check()

                # The new leader takes the ledger over; the deposed one can no longer write it.
                ledger_b = RedisLedger(state_url, "jobs")
                assert ledger_b.load() == [_record("from-a")]
                with pytest.raises(LedgerError, match="another leader took it over"):
                    ledger_a.write({"late-a": _record("late-a")})
                ledger_b.write({"from-a": None, "from-b": _record("from-b")})
                assert RedisLedger(state_url, "jobs").load() == [_record("from-b")]

                # The outage never crashed a's campaign: once Redis is back and b leaves, a leads.
                proxy.fail("pass")
                assert not first["a"].done()
            await until(lambda: a.is_leader)
            assert a.fencing_token > b.fencing_token


class SwallowsACancel(LeaseElector):
    """A store whose client returns from a cancelled call, as redis-py's does on Python 3.11 when the
    cancel lands as its send completes (asyncio.wait_for inside it)."""

    async def _attempt(self) -> NotHeld:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(60)
        return NotHeld(retry_after=60)

    async def _release(self) -> None:
        pass


async def test_a_cancel_the_store_swallowed_still_ends_the_campaign():
    # Else a shutdown waits for ever on a campaign that goes on (seen: this file's Redis tests hung).
    elector = SwallowsACancel(identity="a", lease_seconds=LEASE, renew_every=60)
    campaign = asyncio.create_task(elector.run())
    await asyncio.sleep(0.05)
    campaign.cancel()
    done, _ = await asyncio.wait([campaign], timeout=2)
    assert done and campaign.cancelled(), "the campaign went on after it was cancelled"


async def test_no_election_always_leads():
    only = NoElection("solo")
    await asyncio.wait_for(only.wait_leading(), 1)
    assert only.is_leader and await only.check() and only.fencing_token == 0


def test_make_elector_follows_the_config(redis_url):
    assert isinstance(make_elector(LeaderConfig()), NoElection)
    config = LeaderConfig(kind="redis", url=redis_url, lease_seconds=9, identity="me")
    made = make_elector(config)
    assert isinstance(made, RedisElector)
    assert (made.identity, made.lease_seconds, made.renew_every, made.key) == ("me", 9, 3, "vast-queue-scaler:leader")


# -- configuration ---------------------------------------------------------------------------------

BASE = """
vast: {api_key: k}
scalers: [{name: jobs, source: "redis://127.0.0.1:6379/0?list=jobs", endpoint: ep}]
"""


def problems(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + textwrap.dedent(extra))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_config_leader_and_state_url(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(BASE + "state_url: redis://h:6379/1?prefix=farm\nleader: {kind: redis, url: 'redis://h'}\n")
    config = load_config(path)
    assert config.leader.renew_interval == 5 and config.leader.lease_seconds == 15
    assert RedisLedger(config.state_url, "jobs").key == "farm:jobs:sessions"


@pytest.mark.parametrize(
    ("url", "connect", "prefix"),
    [
        ("redis://:pw@h:1/0?prefix=farm", "redis://:pw@h:1/0", "farm"),
        ("unix:///run/redis.sock?db=1&prefix=farm", "unix:///run/redis.sock?db=1", "farm"),
        ("rediss://h/2", "rediss://h/2", "vast-queue-scaler"),
    ],
)
def test_state_url_prefix_is_split_off_the_connection_url(url, connect, prefix):
    assert split_ledger_prefix(url, "vast-queue-scaler") == (connect, prefix)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("leader: {kind: redis}", "leader.url: required with kind: redis"),
        ("leader: {kind: redis, url: 'http://h'}", "leader.url: expected a Redis URL"),
        ("state_url: redis://h\nleader: {kind: redis, url: 'redis://h', lease_seconds: 6, renew_every: 4}",
         "leader.renew_every: must be at most half of lease_seconds (3s)"),
        ("state_url: redis://h\nleader: {kind: kubernetes, url: 'redis://h'}", "leader.url: only used with kind: redis"),
        ("state_url: redis://h\nleader: {kind: kubernetes, name: Bad_Name}", "leader.name: must be a Kubernetes name"),
        ("leader: {kind: redis, url: 'redis://h'}", "state_url: required with leader.kind: redis"),
        ("state_url: 'redis://:hunter2@h/0?bogus=1'", "state_url: unknown URL parameter 'bogus'"),
        ("state_url: redis://h\nstate_dir: /tmp/x", "state_dir: set either state_dir or state_url, not both"),
    ],
)
def test_config_errors_name_the_field(tmp_path, extra, expected):
    message = problems(tmp_path, extra)
    assert expected in message and "hunter2" not in message


# -- Kubernetes Lease -------------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(seconds=5)


def test_next_lease_creates_takes_over_renews_and_waits():
    created = next_lease(None, "a", now=NOW, lease_seconds=15, expired=False, renewing=False)
    assert created == LeaseRecord("a", 15, NOW, NOW, 0)
    held = replace(created, resource_version="1")
    # Someone else's live lease: wait. Expired or released: take it over, one more transition.
    assert next_lease(held, "b", now=LATER, lease_seconds=15, expired=False, renewing=False) is None
    taken = next_lease(held, "b", now=LATER, lease_seconds=15, expired=True, renewing=False)
    assert (taken.holder, taken.acquire_time, taken.renew_time, taken.transitions) == ("b", LATER, LATER, 1)
    assert taken.resource_version == "1"  # the write is conditional on what was read
    freed = released(held, LATER)
    assert freed.holder is None and next_lease(freed, "b", now=LATER, lease_seconds=15, expired=False, renewing=False).transitions == 1
    # Our own term: renewing keeps it; the same name without the term (a restart) starts a new one.
    renewed = next_lease(held, "a", now=LATER, lease_seconds=15, expired=False, renewing=True)
    assert (renewed.acquire_time, renewed.renew_time, renewed.transitions) == (NOW, LATER, 0)
    assert next_lease(held, "a", now=LATER, lease_seconds=15, expired=False, renewing=False).transitions == 1


def test_lease_objects_round_trip_through_the_kubernetes_client_models():
    from kubernetes import client

    read = client.V1Lease(
        metadata=client.V1ObjectMeta(name="vqs", namespace="ns", resource_version="7", labels={"app": "vqs"}),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15, renew_time=NOW, lease_transitions=3),
    )
    record = to_record(read)
    assert (record.holder, record.duration, record.renew_time, record.transitions, record.resource_version) == (
        "a", 15, NOW, 3, "7"
    )
    body = to_lease(client, next_lease(record, "b", now=LATER, lease_seconds=15, expired=True, renewing=False), "vqs", "ns")
    wire = client.ApiClient().sanitize_for_serialization(body)
    assert wire["metadata"] == {"name": "vqs", "namespace": "ns", "resourceVersion": "7", "labels": {"app": "vqs"}}
    assert wire["spec"]["holderIdentity"] == "b" and wire["spec"]["leaseTransitions"] == 4
    assert read.metadata.resource_version == "7"


class FakeLeaseServer:
    """The API server's part in an election: one Lease, writes conditional on resourceVersion."""

    def __init__(self) -> None:
        self.lease: LeaseRecord | None = None
        self.version = 0
        self.down: set[str] = set()  # clients that cannot reach it

    def client(self, who: str) -> FakeLeaseAPI:
        return FakeLeaseAPI(self, who)

    def write(self, record: LeaseRecord, create: bool) -> LeaseRecord:
        if (self.lease is None) != create or (not create and record.resource_version != self.lease.resource_version):
            raise LeaseConflict("stale")
        self.version += 1
        self.lease = replace(record, resource_version=str(self.version))
        return self.lease


class FakeLeaseAPI:
    def __init__(self, server: FakeLeaseServer, who: str):
        self.server, self.who = server, who

    def _reach(self) -> None:
        if self.who in self.server.down:
            raise OSError("connection refused")

    async def read(self) -> LeaseRecord | None:
        self._reach()
        return self.server.lease

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        self._reach()
        return self.server.write(record, create=True)

    async def replace(self, record: LeaseRecord) -> LeaseRecord:
        self._reach()
        return self.server.write(record, create=False)


def k8s_elector(server: FakeLeaseServer, identity: str) -> KubernetesElector:
    return KubernetesElector(server.client(identity), identity=identity, lease_seconds=1, renew_every=0.2)


async def test_kubernetes_election_hands_over_on_release_and_on_silence():
    server = FakeLeaseServer()
    a, b = k8s_elector(server, "a"), k8s_elector(server, "b")
    async with never_two_leaders(a, b), campaigning(a, b) as tasks:
        await until(lambda: leader_of(a, b) is not None)
        first, second = (a, b) if a.is_leader else (b, a)
        assert server.lease.holder == first.identity and await first.check() and not await second.check()

        # The leader goes silent: it steps down, and the other takes over once it saw no renewal.
        server.down.add(first.identity)
        await until(lambda: second.is_leader)
        assert not first.is_leader and second.fencing_token == server.lease.transitions == 1

        # Back online it follows; when the leader leaves, it releases and the other leads at once.
        server.down.clear()
        tasks[second.identity].cancel()
        await until(lambda: first.is_leader)
        assert first.fencing_token == 2 and server.lease.holder == first.identity
    assert server.lease.holder is None  # released on the way out


class LeaseEndpoint:
    """The Lease routes of a Kubernetes API server over real HTTP: 404, 409 on a stale resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0

    def routes(self) -> list[web.RouteDef]:
        base = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        return [web.get(base + "/{name}", self.get), web.post(base, self.post), web.put(base + "/{name}", self.put)]

    async def get(self, request: web.Request) -> web.Response:
        return _status(404, "NotFound") if self.lease is None else web.json_response(self.lease)

    async def post(self, request: web.Request) -> web.Response:
        body = await request.json()  # before the check: check-and-store must not yield
        return _status(409, "AlreadyExists") if self.lease else self._store(body, 201)

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.lease is None or body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return _status(409, "Conflict")
        return self._store(body, 200)

    def _store(self, body: dict, status: int) -> web.Response:
        self.version += 1
        body["metadata"]["resourceVersion"] = str(self.version)
        self.lease = body
        return web.json_response(body, status=status)


def _status(code: int, reason: str) -> web.Response:
    return web.json_response({"kind": "Status", "code": code, "reason": reason}, status=code)


@pytest.fixture
async def kube_api(tmp_path, monkeypatch) -> AsyncIterator[LeaseEndpoint]:
    """A kubeconfig (namespace `team`) pointing at a LeaseEndpoint on a free port."""
    from kubernetes.config import kube_config

    endpoint = LeaseEndpoint()
    app = web.Application()
    app.add_routes(endpoint.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = tmp_path / "kubeconfig"
    config.write_text(textwrap.dedent(f"""
        apiVersion: v1
        kind: Config
        clusters: [{{name: c, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
        users: [{{name: u, user: {{token: t}}}}]
        contexts: [{{name: x, context: {{cluster: c, user: u, namespace: team}}}}]
        current-context: x
    """))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    yield endpoint
    await runner.cleanup()


async def test_kubernetes_client_adapter_campaigns_over_http(kube_api):
    configs = [LeaderConfig(kind="kubernetes", name="vqs", lease_seconds=2, identity=who) for who in "ab"]
    a, b = (make_elector(config) for config in configs)
    assert a._api.namespace == "team"
    async with never_two_leaders(a, b), campaigning(a, b) as tasks:
        await until(lambda: leader_of(a, b) is not None)
        first, second = (a, b) if a.is_leader else (b, a)
        spec = kube_api.lease["spec"]
        assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == (first.identity, 2)
        assert await first.check() and not await second.check()
        tasks[first.identity].cancel()
        await until(lambda: second.is_leader)
        assert kube_api.lease["spec"]["leaseTransitions"] == second.fencing_token == first.fencing_token + 1


def test_kubernetes_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    from kubernetes.config import kube_config

    from controller.leader import LeaderError

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    with pytest.raises(LeaderError, match="no in-cluster service account and no usable kubeconfig"):
        make_elector(LeaderConfig(kind="kubernetes"))
