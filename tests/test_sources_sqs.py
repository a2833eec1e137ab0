"""SQS source against moto's HTTP server: visible, in-flight and delayed message counts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from support import source_url_error

from controller.sources import QueueDepth, SourceError, WatchableSource, from_url, read_once

REGION = "us-east-1"


@pytest.fixture
def sqs(sqs_endpoint: str) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=sqs_endpoint)


@pytest.fixture
def queue(sqs: Any) -> Iterator[tuple[str, str]]:
    """(name, URL) of a queue of this test's own, deleted afterwards."""
    name = f"vqs-test-{uuid.uuid4().hex}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    yield name, url
    sqs.delete_queue(QueueUrl=url)


def fill(sqs: Any, url: str, *, send: int, receive: int, delayed: int) -> None:
    """Send `send` messages, take `receive` of them (hidden for 5 minutes), send `delayed` delayed ones."""
    for n in range(send):
        sqs.send_message(QueueUrl=url, MessageBody=f"job {n}")
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=receive, VisibilityTimeout=300)
    assert len(received["Messages"]) == receive
    for n in range(delayed):
        sqs.send_message(QueueUrl=url, MessageBody=f"later {n}", DelaySeconds=600)


async def test_waiting_is_visible_messages_and_in_flight_the_received_ones(sqs, queue, sqs_endpoint):
    name, url = queue
    fill(sqs, url, send=7, receive=3, delayed=2)
    base = f"sqs://{name}?region={REGION}&endpoint_url={sqs_endpoint}"

    assert await read_once(base, timeout=5) == QueueDepth(4, 3)
    assert await read_once(f"{base}&delayed=true", timeout=5) == QueueDepth(6, 3)


async def test_queue_url_form_reads_the_same_queue(sqs, queue, sqs_endpoint):
    name, url = queue
    fill(sqs, url, send=5, receive=1, delayed=1)
    account = url.rstrip("/").split("/")[-2]
    queue_url = f"https://sqs.{REGION}.amazonaws.com/{account}/{name}"

    assert await read_once(f"{queue_url}?endpoint_url={sqs_endpoint}", timeout=5) == QueueDepth(4, 1)
    assert await read_once(f"{queue_url}?endpoint_url={sqs_endpoint}&delayed=1", timeout=5) == QueueDepth(5, 1)


async def test_one_source_resolves_the_queue_url_once_and_reads_again(sqs, queue, sqs_endpoint):
    name, url = queue
    source = from_url(f"sqs://{name}?region={REGION}&endpoint_url={sqs_endpoint}")
    assert not isinstance(source, WatchableSource)  # polling only
    try:
        assert await source.depth() == QueueDepth(0, 0)
        sqs.send_message(QueueUrl=url, MessageBody="job")
        assert await source.depth() == QueueDepth(1, 0)
        assert source._queue_url == url  # cached from GetQueueUrl
    finally:
        await source.close()


async def test_missing_queue_is_an_error_that_says_so(sqs_endpoint):
    name = f"vqs-missing-{uuid.uuid4().hex}"
    with pytest.raises(SourceError, match=f"queue '{name}' does not exist in region {REGION}"):
        await read_once(f"sqs://{name}?region={REGION}&endpoint_url={sqs_endpoint}", timeout=5)


async def test_missing_credentials_are_a_source_error(sqs_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceError, match="NoCredentialsError"):
        await read_once(f"sqs://jobs?region={REGION}&endpoint_url={sqs_endpoint}", timeout=5)


def test_queue_names_keep_their_case_and_fifo_suffix():
    source = from_url("sqs://Render-Jobs.fifo?region=eu-west-1")
    assert (source.name, source.region, source.display_url) == (
        "Render-Jobs.fifo", "eu-west-1", "sqs://Render-Jobs.fifo?region=eu-west-1"
    )
    source = from_url("https://sqs.ap-south-1.amazonaws.com/123456789012/Jobs")
    assert (source.region, source._queue_url) == ("ap-south-1", "https://sqs.ap-south-1.amazonaws.com/123456789012/Jobs")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqs://jobs", "region= is required"),
        ("sqs://jobs?region=us-east-1&delayed=maybe", "delayed must be true or false, got 'maybe'"),
        ("sqs://jobs?region=us-east-1&visibility=30", "unknown parameter 'visibility'; accepted: region=REGION"),
        ("sqs://jobs?region=us-east-1&endpoint_url=localhost:4566", "endpoint_url must be an http(s) URL"),
        ("sqs://my%20jobs?region=us-east-1", "is not a queue name"),
        ("sqs://jobs/extra?region=us-east-1", "is not a queue name"),
        ("https://sqs.us-east-1.amazonaws.com/jobs", "an https URL must be a queue URL"),
        ("https://example.com/123456789012/jobs", "'example.com' is not an SQS host"),
        ("https://example.com/123456789012/jobs?endpoint_url=http://127.0.0.1:4566", "region= is required"),
    ],
)
def test_bad_sqs_urls_say_what_is_wrong_and_what_is_accepted(url, message):
    assert message in source_url_error(url)
