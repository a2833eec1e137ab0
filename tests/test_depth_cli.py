"""`vast-queue-scaler depth URL`: the installed command reads real queues; bad URLs fail in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import boto3
import pytest
import redis.asyncio as aioredis
from support import free_port, source_url_error

from controller.sources import SourceURLError, from_url


def command() -> str:
    beside = Path(sys.executable).parent / "vast-queue-scaler"
    found = str(beside) if beside.exists() else shutil.which("vast-queue-scaler")
    if found is None:
        pytest.skip("vast-queue-scaler is not installed (pip install -e .)")
    return found


def depth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([command(), "depth", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
async def jobs(redis_url: str) -> AsyncIterator[str]:
    """A Redis list with 3 waiting jobs and 2 moved to its processing list; deleted afterwards."""
    key = f"vqs-test-cli:{uuid.uuid4().hex}"
    client = aioredis.from_url(redis_url)
    await client.rpush(key, *range(5))
    for _ in range(2):
        await client.lmove(key, f"{key}:processing", "LEFT", "RIGHT")
    yield key
    await client.delete(key, f"{key}:processing")
    await client.aclose()


def with_query(redis_url: str, query: str) -> str:
    return f"{redis_url}{'&' if '?' in redis_url else '?'}{query}"


def test_json_output_is_exactly_waiting_in_flight_and_total(redis_url, jobs):
    done = depth(with_query(redis_url, f"list={jobs}&processing={jobs}:processing"), "--json")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == '{"waiting": 3, "in_flight": 2, "total": 5}\n'
    assert json.loads(done.stdout) == {"waiting": 3, "in_flight": 2, "total": 5}


def test_plain_output_names_the_numbers(redis_url, jobs):
    done = depth(with_query(redis_url, f"list={jobs}&processing={jobs}:processing"))
    assert (done.returncode, done.stdout) == (0, "waiting=3 in_flight=2 total=5\n")


def test_sqs_queue_through_the_command(sqs_endpoint):
    # The sqs_endpoint fixture put dummy credentials in this process's environment; the child inherits them.
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=sqs_endpoint)
    name = f"vqs-test-cli-{uuid.uuid4().hex}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    try:
        sqs.send_message(QueueUrl=url, MessageBody="job")
        done = depth(f"sqs://{name}?region=us-east-1&endpoint_url={sqs_endpoint}", "--json")
        assert (done.returncode, done.stdout) == (0, '{"waiting": 1, "in_flight": 0, "total": 1}\n')
    finally:
        sqs.delete_queue(QueueUrl=url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.com/jobs",
        "127.0.0.1:6379",
        "redis://:hunter2@127.0.0.1:6379/0?lst=jobs",
        "sqs://jobs",
        "nats://127.0.0.1:4222?stream=S",
    ],
)
def test_bad_url_exits_2_with_one_line_that_hides_the_password(url):
    done = depth(url, "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("vast-queue-scaler: error: ")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n")
    assert "accepted:" in done.stderr
    assert "hunter2" not in done.stderr


def test_failed_read_exits_1_with_one_line_naming_the_source():
    done = depth(f"redis://:hunter2@127.0.0.1:{free_port()}/0?list=jobs", "--timeout", "2")
    assert done.returncode == 1
    assert done.stderr.startswith("vast-queue-scaler: redis://:***@127.0.0.1:")
    assert done.stderr.count("\n") == 1
    assert "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.example.com/jobs", "unknown source URL scheme 'ftp://'"),
        ("amqp://guest:guest@rabbit/vhost", "unknown source URL scheme 'amqp://' in 'amqp://guest:***@rabbit/vhost'"),
        ("jobs", "not a source URL: 'jobs'"),
        ("", "not a source URL"),
    ],
)
def test_unknown_schemes_list_every_accepted_kind(url, message):
    text = source_url_error(url)
    assert message in text
    for accepted in ("redis[s]://", "sqs://", "https://sqs.REGION.amazonaws.com/", "nats|tls://"):
        assert accepted in text


def test_timeout_must_be_positive():
    with pytest.raises(SourceURLError, match="timeout must be a positive number"):
        from_url("redis://127.0.0.1:6379/0?list=jobs", timeout=0)
