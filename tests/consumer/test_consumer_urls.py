"""The runtime parses source URLs itself (it installs without the controller); both must agree on them."""

from __future__ import annotations

import pytest

from controller.sources import SourceURLError
from controller.sources import from_url as controller_from_url
from vqs_consumer.queues import QueueOptions, QueueURLError
from vqs_consumer.queues import from_url as consumer_from_url

OPTIONS = QueueOptions(name="worker-1")

ACCEPTED_BY_BOTH = [
    "redis://127.0.0.1:6379/0?stream=jobs&group=workers",
    "redis://:s3cret@cache.internal:6380/2?stream=jobs&group=workers",
    "redis://user:p%40ss@cache/0?stream=jobs&group=workers",
    "rediss://cache.example.com/0?stream=jobs&group=workers",
    "redis://127.0.0.1/0?list=jobs&processing=jobs:processing:*",
    "redis://127.0.0.1?processing=jobs:processing:*&list=jobs",
    "sqs://jobs?region=us-east-1",
    "sqs://Jobs-2.fifo?region=eu-west-1&delayed=true",
    "sqs://jobs?region=us-east-1&endpoint_url=http://localhost:4566",
    "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
    "https://localhost:4566/000000000000/jobs?endpoint_url=http://localhost:4566&region=us-east-1",
    "nats://127.0.0.1:4222?stream=JOBS&consumer=workers",
    "nats://user:pw@nats.internal?stream=JOBS&consumer=workers",
    "nats://s3cret-token@nats.internal:4222?stream=JOBS&consumer=workers",
    "tls://nats.example.com?stream=JOBS&consumer=workers",
]

REJECTED_BY_BOTH = [
    "",
    "jobs",
    "amqp://127.0.0.1/jobs",
    "redis://127.0.0.1:99999/0?stream=jobs&group=workers",
    "redis://127.0.0.1/zero?stream=jobs&group=workers",
    "redis:///0?stream=jobs&group=workers",
    "redis://127.0.0.1/0?stream=jobs",
    "redis://127.0.0.1/0?stream=jobs&group=workers&list=jobs",
    "redis://127.0.0.1/0?stream=jobs&group=workers&colour=blue",
    "redis://127.0.0.1/0?stream=jobs&group=",
    "redis://127.0.0.1/0?stream=jobs&group=a&group=b",
    "redis://127.0.0.1/0?list=jobs&group=workers&processing=jobs:processing:*",
    "redis://127.0.0.1/0?stream=jobs&group=workers#top",
    "sqs://jobs",
    "sqs://no spaces?region=us-east-1",
    "sqs://jobs?region=us-east-1&delayed=maybe",
    "sqs://jobs?region=us-east-1&endpoint_url=localhost:4566",
    "https://example.com/123/jobs",
    "https://sqs.us-east-1.amazonaws.com/jobs",
    "nats://127.0.0.1:4222?stream=JOBS",
    "nats://127.0.0.1:4222/path?stream=JOBS&consumer=workers",
    "nats://?stream=JOBS&consumer=workers",
]

#: The controller counts any processing list; a worker needs one of its own, named PREFIX<name>.
CONTROLLER_ONLY = [
    "redis://127.0.0.1/0?list=jobs",
    "redis://127.0.0.1/0?list=jobs&processing=jobs:processing",
    "redis://127.0.0.1/0?list=jobs&processing=jobs:processing:*&processing=other:*",
    "redis://127.0.0.1/0?list=jobs&processing=jobs:[ab]:*",
]


@pytest.mark.parametrize("url", ACCEPTED_BY_BOTH)
def test_both_accept_and_mask_alike(url: str) -> None:
    source, queue = controller_from_url(url), consumer_from_url(url, OPTIONS)
    assert queue.display_url == source.display_url
    assert not any(secret in queue.display_url for secret in ("s3cret", "p%40ss", ":pw@"))


@pytest.mark.parametrize("url", REJECTED_BY_BOTH)
def test_both_reject(url: str) -> None:
    with pytest.raises(SourceURLError):
        controller_from_url(url)
    with pytest.raises(QueueURLError) as caught:
        consumer_from_url(url, OPTIONS)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("url", CONTROLLER_ONLY)
def test_a_list_needs_a_processing_prefix_per_worker(url: str) -> None:
    controller_from_url(url)
    with pytest.raises(QueueURLError, match=r"processing=PREFIX\*"):
        consumer_from_url(url, OPTIONS)


def test_a_workers_processing_list_is_what_the_controller_counts() -> None:
    queue = consumer_from_url("redis://127.0.0.1/0?list=jobs&processing=jobs:processing:*", OPTIONS)
    assert queue.processing == "jobs:processing:worker-1"
