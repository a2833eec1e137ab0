"""Redis sources against a real server: lists with processing lists, streams with consumer groups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from support import free_port, redis_server, silent_server, source_url_error

from controller.sources import QueueDepth, SourceError, WatchableSource, from_url, read_once
from controller.sources import redis as redis_source


@pytest.fixture
def client(redis_client: aioredis.Redis) -> aioredis.Redis:
    return redis_client


@pytest.fixture
async def prefix(client: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    name = f"vqs-test-src:{uuid.uuid4().hex}"
    yield name
    keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
    if keys:
        await client.delete(*keys)


def with_query(redis_url: str, query: str) -> str:
    return f"{redis_url}{'&' if '?' in redis_url else '?'}{query}"


async def depth(redis_url: str, query: str) -> QueueDepth:
    return await read_once(with_query(redis_url, query), timeout=5)


async def test_list_waiting_is_its_length_and_in_flight_the_processing_lists(client, prefix, redis_url):
    jobs, proc_a, proc_b = f"{prefix}:jobs", f"{prefix}:proc:a", f"{prefix}:proc:b"
    await client.rpush(jobs, *range(10))
    for _ in range(3):
        await client.lmove(jobs, proc_a, "LEFT", "RIGHT")
    for _ in range(2):
        await client.lmove(jobs, proc_b, "LEFT", "RIGHT")

    assert await depth(redis_url, f"list={jobs}&processing={proc_a}&processing={proc_b}") == QueueDepth(5, 5)
    assert await depth(redis_url, f"list={jobs}") == QueueDepth(5, 0)
    # A processing list named twice is counted once.
    assert await depth(redis_url, f"list={jobs}&processing={proc_a}&processing={proc_a}") == QueueDepth(5, 3)


async def test_missing_list_is_an_empty_queue(prefix, redis_url):
    assert await depth(redis_url, f"list={prefix}:never&processing={prefix}:never:*") == QueueDepth(0, 0)


async def test_processing_glob_sums_every_matching_list_once(client, prefix, redis_url):
    jobs = f"{prefix}:jobs"
    await client.rpush(jobs, *range(12))
    for worker, taken in (("w1", 1), ("w2", 2), ("w3", 4)):
        for _ in range(taken):
            await client.lmove(jobs, f"{prefix}:jobs:processing:{worker}", "LEFT", "RIGHT")
    await client.set(f"{prefix}:jobs:processing:not-a-list", "x")

    assert await depth(redis_url, f"list={jobs}&processing={prefix}:jobs:processing:*") == QueueDepth(5, 7)
    # A glob that also matches the queue itself does not count the queue as in flight.
    assert await depth(redis_url, f"list={jobs}&processing={prefix}:jobs*") == QueueDepth(5, 7)
    # Literal names and globs together still count each list once.
    query = f"list={jobs}&processing={prefix}:jobs:processing:w3&processing={prefix}:jobs:processing:w?"
    assert await depth(redis_url, query) == QueueDepth(5, 7)


async def test_processing_glob_over_the_cap_is_an_error_naming_the_pattern(client, prefix, redis_url, monkeypatch):
    monkeypatch.setattr(redis_source, "MAX_PROCESSING_KEYS", 3)
    for worker in range(4):
        await client.rpush(f"{prefix}:processing:{worker}", "job")
    with pytest.raises(SourceError, match=r"processing pattern '.*:processing:\*' matches more than 3 lists"):
        await depth(redis_url, f"list={prefix}:jobs&processing={prefix}:processing:*")


async def test_list_of_the_wrong_type_is_a_source_error(client, prefix, redis_url):
    await client.set(f"{prefix}:jobs", "not a list")
    with pytest.raises(SourceError, match="WRONGTYPE") as caught:
        await depth(redis_url, f"list={prefix}:jobs")
    assert str(caught.value).startswith(with_query(redis_url, f"list={prefix}:jobs"))


async def add_entries(client: aioredis.Redis, stream: str, count: int) -> list[str]:
    return [await client.xadd(stream, {"job": str(i)}) for i in range(count)]


async def test_stream_waiting_is_the_group_lag_and_in_flight_its_pending_entries(client, prefix, redis_url):
    stream = f"{prefix}:stream"
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)
    # Entry n is stamped n seconds after the epoch, so each entry's age is distinct and known.
    ids = [await client.xadd(stream, {"job": str(n)}, id=f"{n * 1000}-0") for n in range(1, 11)]
    read = await client.xreadgroup("workers", "gpu-1", {stream: ">"}, count=6)
    assert len(read[0][1]) == 6
    await client.xack(stream, "workers", ids[0], ids[1])

    got = await depth(redis_url, f"stream={stream}&group=workers")
    seconds, micros = await client.time()

    assert (got.waiting, got.in_flight) == (4, 4)
    assert (await client.xpending(stream, "workers"))["pending"] == got.in_flight
    # The oldest undelivered entry is the 7th, stamped at 7 s.
    assert got.oldest_age == pytest.approx(seconds + micros / 1e6 - 7, abs=1)
    assert got.as_dict() == {"waiting": 4, "in_flight": 4, "total": 8}


async def test_stream_with_nothing_undelivered_has_no_oldest_age(client, prefix, redis_url):
    stream = f"{prefix}:stream"
    await add_entries(client, stream, 3)
    await client.xgroup_create(stream, "workers", id="0")
    await client.xreadgroup("workers", "gpu-1", {stream: ">"}, count=10)
    assert await depth(redis_url, f"stream={stream}&group=workers") == QueueDepth(0, 3, None)


async def test_stream_lag_is_counted_when_redis_reports_it_as_nil_after_xdel(client, prefix, redis_url):
    stream = f"{prefix}:stream"
    ids = await add_entries(client, stream, 10)
    await client.xgroup_create(stream, "workers", id="0")
    await client.xreadgroup("workers", "gpu-1", {stream: ">"}, count=3)
    await client.xdel(stream, ids[6])  # an undelivered entry: Redis can no longer derive the lag
    assert (await client.xinfo_groups(stream))[0]["lag"] is None

    got = await depth(redis_url, f"stream={stream}&group=workers")
    assert (got.waiting, got.in_flight) == (6, 3)
    assert got.oldest_age is not None


async def test_stream_lag_is_the_whole_stream_when_the_group_is_before_its_first_entry(client, prefix, redis_url):
    stream = f"{prefix}:stream"
    await client.xgroup_create(stream, "workers", id="0", mkstream=True)
    ids = await add_entries(client, stream, 5)
    await client.xdel(stream, ids[1])
    assert (await client.xinfo_groups(stream))[0]["lag"] is None
    got = await depth(redis_url, f"stream={stream}&group=workers")
    assert (got.waiting, got.in_flight) == (4, 0)


async def test_stream_lag_after_xgroup_setid_is_counted_across_pages(client, prefix, redis_url, monkeypatch):
    monkeypatch.setattr(redis_source, "_PAGE", 2)
    stream = f"{prefix}:stream"
    ids = await add_entries(client, stream, 8)
    await client.xgroup_create(stream, "workers", id="$")
    await client.xgroup_setid(stream, "workers", ids[2])  # no ENTRIESREAD: the lag becomes unknown
    assert (await client.xinfo_groups(stream))[0]["lag"] is None

    got = await depth(redis_url, f"stream={stream}&group=workers")
    assert (got.waiting, got.in_flight) == (5, 0)


async def test_uncountable_lag_is_reported_as_a_lower_bound(client, prefix, redis_url, monkeypatch, caplog):
    monkeypatch.setattr(redis_source, "_PAGE", 2)
    monkeypatch.setattr(redis_source, "MAX_COUNTED_ENTRIES", 4)
    stream = f"{prefix}:stream"
    ids = await add_entries(client, stream, 9)
    await client.xgroup_create(stream, "workers", id="$")
    await client.xgroup_setid(stream, "workers", ids[1])
    assert (await client.xinfo_groups(stream))[0]["lag"] is None

    with caplog.at_level(logging.WARNING, logger=redis_source.__name__):
        got = await depth(redis_url, f"stream={stream}&group=workers")
    assert got.waiting == 4
    assert "lower bound" in caplog.text


async def test_missing_stream_and_missing_group_read_as_empty_and_say_which(client, prefix, redis_url):
    stream = f"{prefix}:stream"
    assert await depth(redis_url, f"stream={stream}&group=workers") == QueueDepth(
        0, 0, missing=f"stream '{stream}' does not exist"
    )
    await client.xgroup_create(stream, "other", id="0", mkstream=True)
    await client.xadd(stream, {"n": "1"})
    assert await depth(redis_url, f"stream={stream}&group=workers") == QueueDepth(
        0, 0, missing=f"stream '{stream}' has no consumer group 'workers' (groups: 'other')"
    )
    await client.xgroup_create(stream, "workers", id="0")
    assert (await depth(redis_url, f"stream={stream}&group=workers")).missing is None


async def test_unreachable_server_is_a_source_error_without_the_password():
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0?list=jobs"
    with pytest.raises(SourceError) as caught:
        await read_once(url, timeout=2)
    message = str(caught.value)
    assert message.startswith("redis://user:***@127.0.0.1:")
    assert "hunter2" not in message


async def test_server_that_never_answers_is_a_timeout_error():
    async with silent_server() as port:
        with pytest.raises(SourceError, match=r"^redis://:\*\*\*@127\.0\.0\.1:\d+/0\?list=jobs: no answer within 0\.5s$"):
            await read_once(f"redis://:pw@127.0.0.1:{port}/0?list=jobs", timeout=0.5)


async def test_display_url_masks_the_password():
    source = from_url("redis://:p%40ss@cache.internal:6380/2?list=jobs")
    assert source.display_url == "redis://:***@cache.internal:6380/2?list=jobs"
    source = from_url("rediss://app:s3cret@cache.internal/0?stream=s&group=g")
    assert source.display_url == "rediss://app:***@cache.internal/0?stream=s&group=g"
    await source.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0", "give exactly one of list= or stream="),
        ("redis://127.0.0.1:6379/0?list=a&stream=b&group=g", "give exactly one of list= or stream="),
        ("redis://127.0.0.1:6379/0?stream=s", "stream= needs group="),
        ("redis://127.0.0.1:6379/0?list=a&group=g", "group= goes with stream="),
        ("redis://127.0.0.1:6379/0?stream=s&group=g&processing=p", "processing= goes with list="),
        ("redis://127.0.0.1:6379/0?list=a&lst=b", "unknown parameter 'lst'; accepted: list=KEY, processing="),
        ("redis://127.0.0.1:6379/0?list=", "parameter 'list' is empty"),
        ("redis://127.0.0.1:6379/0?list=a&list=b", "parameter 'list' is given twice"),
        ("redis://127.0.0.1:6379/jobs?list=a", "the path must be a database number such as /0"),
        ("redis://127.0.0.1:port/0?list=a", "the port must be a number from 1 to 65535"),
        ("redis://:pw#secret@127.0.0.1:6379/0?list=a", "'redis://***@127.0.0.1:6379/0?list=a': the port must be"),
        ("redis:///0?list=a", "no host"),
        ("redis://:pw@127.0.0.1:6379/0?list=a#frag", "remove the '#...' fragment"),
    ],
)
def test_bad_redis_urls_say_what_is_wrong_and_what_is_accepted(url, message):
    text = source_url_error(url)
    assert message in text
    assert "pw" not in text and "secret" not in text


needs_redis_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not on PATH")


async def next_wake(source: WatchableSource, poke) -> None:
    """Start watching, then poke the queue until the watch yields (the subscription lands meanwhile)."""
    watch = source.watch()
    wake = asyncio.ensure_future(anext(watch))
    try:
        async with asyncio.timeout(10):
            while not wake.done():
                await poke()
                await asyncio.wait({wake}, timeout=0.05)
        await wake
    finally:
        await stop(wake, watch)


async def stop(wake: asyncio.Future, watch: AsyncIterator[None]) -> None:
    wake.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wake
    await watch.aclose()


@needs_redis_server
async def test_watch_yields_on_keyspace_notifications_for_the_list_and_processing_globs():
    with redis_server("--notify-keyspace-events", "Kl") as url:
        client = aioredis.from_url(url)
        source = from_url(f"{url}?list=jobs&processing=jobs:processing:*")
        assert isinstance(source, WatchableSource)
        try:
            await next_wake(source, lambda: client.rpush("jobs", "job"))

            async def take() -> None:
                # From a list nobody watches, so only the processing glob can wake the watch; and
                # never from an empty one, however many pokes the subscription takes to land.
                await client.rpush("elsewhere", "job")
                await client.lmove("elsewhere", "jobs:processing:w1", "LEFT", "RIGHT")

            await next_wake(source, take)
            assert (await source.depth()).in_flight >= 1
        finally:
            await source.close()
            await client.aclose()


@needs_redis_server
async def test_watch_yields_when_an_entry_is_added_to_the_stream():
    with redis_server("--notify-keyspace-events", "Kt") as url:
        client = aioredis.from_url(url)
        await client.xgroup_create("jobs", "workers", id="0", mkstream=True)
        source = from_url(f"{url}?stream=jobs&group=workers")
        try:
            await next_wake(source, lambda: client.xadd("jobs", {"job": "1"}))
        finally:
            await source.close()
            await client.aclose()


@needs_redis_server
async def test_watch_says_once_that_notifications_are_off_and_does_not_change_the_server(caplog):
    with redis_server() as url:
        client = aioredis.from_url(url, decode_responses=True)
        source = from_url(f"{url}?list=jobs")
        watch = source.watch()
        wake = asyncio.ensure_future(anext(watch))
        try:
            with caplog.at_level(logging.INFO, logger=redis_source.__name__):
                async with asyncio.timeout(10):
                    while "keyspace notifications are off" not in caplog.text:
                        await asyncio.sleep(0.02)
            assert (await client.config_get("notify-keyspace-events"))["notify-keyspace-events"] == ""
            assert not wake.done()
        finally:
            await stop(wake, watch)
            await source.close()
            await client.aclose()


async def test_a_watch_whose_cancel_the_client_swallowed_still_stops(redis_url, prefix, monkeypatch):
    # On Python 3.11 asyncio.wait_for, which redis-py uses for timeouts, can return a result in
    # place of a cancel that lands as the call completes: the watch must not go on for ever.
    listen, listening, swallowed = aioredis.client.PubSub.get_message, asyncio.Event(), []

    async def swallowing(self, *args, **kwargs):
        listening.set()
        try:
            return await listen(self, *args, **kwargs)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(True)  # the first one only: the test can still stop a watch that went on
            return None

    monkeypatch.setattr(aioredis.client.PubSub, "get_message", swallowing)
    source = from_url(f"{redis_url}?list={prefix}jobs")
    watch = source.watch()
    wake = asyncio.ensure_future(anext(watch))
    try:
        async with asyncio.timeout(10):
            await listening.wait()
        wake.cancel()
        await asyncio.wait({wake}, timeout=5)
        assert swallowed and wake.cancelled(), "the watch went on after a swallowed cancel"
    finally:
        await stop(wake, watch)
        await source.close()


@needs_redis_server
async def test_watch_resubscribes_after_the_server_restarts(caplog):
    port = free_port()
    with redis_server("--notify-keyspace-events", "Kl", port=port) as url:
        source = from_url(f"{url}?list=jobs", timeout=1)
        watch = source.watch()
        wake = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.2)  # let the subscription land before the server goes away
    try:
        with caplog.at_level(logging.WARNING, logger=redis_source.__name__):
            async with asyncio.timeout(10):
                while "queue notifications interrupted" not in caplog.text:
                    await asyncio.sleep(0.02)
        with redis_server("--notify-keyspace-events", "Kl", port=port):
            client = aioredis.from_url(url)
            try:
                async with asyncio.timeout(20):
                    while not wake.done():
                        await client.rpush("jobs", "job")
                        await asyncio.wait({wake}, timeout=0.1)
                await wake
            finally:
                await client.aclose()
    finally:
        await stop(wake, watch)
        await source.close()
