"""NATS JetStream source against a real server: a pull consumer's pending and unacknowledged counts."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from support import free_port, nats_server, nats_server_binary, silent_server, source_url_error

from controller.sources import QueueDepth, SourceError, WatchableSource, from_url, read_once


async def quiet(exc: Exception) -> None:
    """nats-py logs connection errors by default; the tests assert on them instead."""


async def make_queue(url: str, stream: str, messages: int) -> None:
    """A stream on its own subject with `messages` messages and a pull consumer `workers` that acks explicitly."""
    nc = await nats.connect(url, error_cb=quiet)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream}.jobs"])
        await js.add_consumer(stream, ConsumerConfig(durable_name="workers", ack_policy=AckPolicy.EXPLICIT))
        for n in range(messages):
            await js.publish(f"{stream}.jobs", str(n).encode())
    finally:
        await nc.close()


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[str]:
    """A stream name of this test's own, deleted afterwards."""
    name = f"VQS_TEST_{uuid.uuid4().hex}"
    yield name
    nc = await nats.connect(nats_url, error_cb=quiet)
    try:
        await nc.jetstream().delete_stream(name)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


def source_url(nats_url: str, stream: str, consumer: str = "workers") -> str:
    return f"{nats_url}?stream={stream}&consumer={consumer}"


async def test_waiting_is_num_pending_and_in_flight_num_ack_pending(nats_url, stream):
    await make_queue(nats_url, stream, 10)
    nc = await nats.connect(nats_url, error_cb=quiet)
    try:
        subscription = await nc.jetstream().pull_subscribe_bind("workers", stream)
        fetched = await subscription.fetch(6, timeout=5)
        assert len(fetched) == 6
        for message in fetched[:2]:
            await message.ack_sync()

        got = await read_once(source_url(nats_url, stream), timeout=5)

        info = await nc.jetstream().consumer_info(stream, "workers")
        assert got == QueueDepth(4, 4)
        assert (info.num_pending, info.num_ack_pending) == (4, 4)
    finally:
        await nc.close()


async def test_one_source_reads_repeatedly_on_one_connection(nats_url, stream):
    await make_queue(nats_url, stream, 3)
    source = from_url(source_url(nats_url, stream))
    assert not isinstance(source, WatchableSource)  # polling only
    try:
        assert await source.depth() == QueueDepth(3, 0)
        nc = await nats.connect(nats_url, error_cb=quiet)
        try:
            await nc.jetstream().publish(f"{stream}.jobs", b"more")
        finally:
            await nc.close()
        assert await source.depth() == QueueDepth(4, 0)
    finally:
        await source.close()


async def test_missing_stream_and_missing_consumer_are_errors_that_say_so(nats_url, stream):
    with pytest.raises(SourceError, match=f"stream '{stream}' does not exist"):
        await read_once(source_url(nats_url, stream), timeout=5)
    await make_queue(nats_url, stream, 0)
    with pytest.raises(SourceError, match=f"stream '{stream}' has no consumer 'nobody'"):
        await read_once(source_url(nats_url, stream, "nobody"), timeout=5)


async def test_unreachable_server_is_a_source_error_without_the_password():
    url = f"nats://app:hunter2@127.0.0.1:{free_port()}?stream=S&consumer=C"
    with pytest.raises(SourceError) as caught:
        await read_once(url, timeout=2)
    message = str(caught.value)
    assert message.startswith("nats://app:***@127.0.0.1:")
    assert "hunter2" not in message and "\n" not in message


async def test_server_that_never_answers_is_a_timeout_error():
    async with silent_server() as port:
        source = from_url(f"nats://127.0.0.1:{port}?stream=S&consumer=C", timeout=0.5)
        try:
            with pytest.raises(SourceError, match=r"^nats://127\.0\.0\.1:\d+\?stream=S&consumer=C: no answer within 0\.5s$"):
                await source.depth()
        finally:
            await source.close()


needs_nats_server = pytest.mark.skipif(nats_server_binary() is None, reason="no nats-server binary")


@needs_nats_server
async def test_source_reconnects_after_the_server_restarts():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vqs-nats-store-") as store:
        with nats_server(port=port, store_dir=store) as url:
            await make_queue(url, "JOBS", 5)
            source = from_url(source_url(url, "JOBS"), timeout=1)
            assert await source.depth() == QueueDepth(5, 0)
        try:
            with pytest.raises(SourceError, match=r"^nats://127\.0\.0\.1:\d+\?stream=JOBS&consumer=workers: "):
                await source.depth()
            with nats_server(port=port, store_dir=store):
                assert await source.depth() == QueueDepth(5, 0)
        finally:
            await source.close()


@needs_nats_server
async def test_user_and_password_are_sent_and_a_wrong_one_is_reported_without_it():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vqs-nats-store-") as store:
        with nats_server("--user", "app", "--pass", "s3cret", port=port, store_dir=store) as url:
            authed = url.replace("nats://", "nats://app:s3cret@")
            await make_queue(authed, "JOBS", 2)
            assert await read_once(source_url(authed, "JOBS"), timeout=5) == QueueDepth(2, 0)
            wrong = url.replace("nats://", "nats://app:wrong-pass@")
            with pytest.raises(SourceError) as caught:
                await read_once(source_url(wrong, "JOBS"), timeout=5)
            assert "wrong-pass" not in str(caught.value)
            assert "app:***@" in str(caught.value)


def test_display_url_masks_the_password_and_a_token():
    assert from_url("nats://app:s3cret@nats.internal:4222?stream=S&consumer=C").display_url == (
        "nats://app:***@nats.internal:4222?stream=S&consumer=C"
    )
    assert from_url("tls://t0ken@nats.internal?stream=S&consumer=C").display_url == (
        "tls://***@nats.internal?stream=S&consumer=C"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://127.0.0.1:4222", "stream= and consumer= are required"),
        ("nats://127.0.0.1:4222?stream=S", "consumer= is required"),
        ("nats://127.0.0.1:4222?stream=S&consumer=C&durable=D", "unknown parameter 'durable'; accepted: stream=STREAM"),
        ("nats://127.0.0.1:4222/S?stream=S&consumer=C", "unexpected path '/S'"),
        ("nats://?stream=S&consumer=C", "no host"),
        ("tls://127.0.0.1:99999?stream=S&consumer=C", "the port must be a number from 1 to 65535"),
    ],
)
def test_bad_nats_urls_say_what_is_wrong_and_what_is_accepted(url, message):
    assert message in source_url_error(url)
