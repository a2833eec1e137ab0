"""An Amazon SQS queue: receive, keep the message invisible while working, delete when done.

URLs (as the controller's): `sqs://QUEUE?region=REGION[&endpoint_url=URL][&delayed=true]` or the
queue URL `https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE[?endpoint_url=URL][&region=REGION]`.

In flight (what the controller counts) is ApproximateNumberOfMessagesNotVisible: a received
message stays invisible for one lease, renewed by heartbeats (ChangeMessageVisibility); a dead
worker's message becomes visible again when its lease runs out. Attempts are the message's
ApproximateReceiveCount. Dead letters go to `dead_letter` (a queue name or URL), else to the
target of the queue's own RedrivePolicy. SQS has no cancel channel: `cancelled` is always False.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from vqs_consumer.queues import Delivery, QueueError, QueueOptions, QueueSetupError, QueueURLError, describe, query_params, split_url

KIND = "SQS"
_PARAMS = {
    "region": "region=REGION",
    "endpoint_url": "endpoint_url=URL (localstack, moto)",
    "delayed": "delayed=true|false (count delayed messages as waiting)",
}
_ACCEPTED = "sqs://QUEUE?region=REGION[&endpoint_url=URL][&delayed=true] or https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE"
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}(\.fifo)?$")
_AWS_HOST = re.compile(r"^(?:sqs(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\.amazonaws\.com)$")
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
#: SQS long polls at most 20 s.
MAX_WAIT = 20
#: A message's visibility may be set to at most 12 hours.
MAX_VISIBILITY = 43_200

T = TypeVar("T")


def from_url(url: str, options: QueueOptions) -> SqsQueue:
    parts, display = split_url(url, KIND)
    params = query_params(parts, display, KIND, _PARAMS)
    one = {name: values[0] for name, values in params.items()}

    def bad(problem: str) -> QueueURLError:
        return QueueURLError(f"{KIND} source URL {display!r}: {problem}; accepted: {_ACCEPTED}")

    if _BOOLEANS.get(one.get("delayed", "false").lower()) is None:
        raise bad(f"delayed must be true or false, got {one['delayed']!r}")
    endpoint_url = one.get("endpoint_url")
    if endpoint_url is not None and not re.match(r"^https?://[^/]+", endpoint_url):
        raise bad(f"endpoint_url must be an http(s) URL, got {endpoint_url!r}")
    region = one.get("region")
    if parts.scheme.lower() == "sqs":
        name = parts.netloc  # the raw netloc: queue names are case-sensitive
        if not _QUEUE_NAME.match(name) or parts.path not in ("", "/"):
            raise bad(f"{name!r} is not a queue name (1-80 letters, digits, '-' or '_', optional .fifo)")
        if region is None:
            raise bad("region= is required")
        return SqsQueue(display, options, region=region, endpoint_url=endpoint_url, name=name)
    host = (parts.hostname or "").lower()
    aws = _AWS_HOST.match(host)
    path = parts.path.strip("/").split("/")
    if len(path) != 2 or not path[0].isdigit() or not _QUEUE_NAME.match(path[1]) or parts.username:
        raise bad("an https URL must be a queue URL, https://HOST/ACCOUNT/QUEUE")
    if aws is None and endpoint_url is None:
        raise bad(f"{host!r} is not an SQS host; for localstack or moto add endpoint_url= and region=")
    region = region or (aws and (aws.group(1) or aws.group(2)))
    if not region:
        raise bad("region= is required when the host does not name it")
    queue_url = f"https://{parts.netloc}/{path[0]}/{path[1]}"
    return SqsQueue(display, options, region=region, endpoint_url=endpoint_url, name=path[1], queue_url=queue_url)


class SqsQueue:
    native_delay = True

    def __init__(
        self, display_url: str, options: QueueOptions, *, region: str, endpoint_url: str | None, name: str,
        queue_url: str | None = None,
    ) -> None:  # fmt: skip
        self.display_url = display_url
        self.options = options
        self.lease = options.lease
        self.region = region
        self.endpoint_url = endpoint_url
        self.name = name
        self.queue_url = queue_url
        self.visibility = min(MAX_VISIBILITY, max(1, round(options.lease)))
        self._client: Any = None
        self._urls: dict[str, str] = {}  # queue name or URL -> queue URL
        self._lock = threading.Lock()  # boto3 calls run in worker threads
        self.dead_url: str | None = None
        #: (message id, step) sent by an operation not yet finished.
        self._done: set[tuple[str, str]] = set()

    async def call(self, what: Callable[[], T], wait: float = 0.0) -> T:
        """`what()` in a worker thread within the timeout, failures as QueueError."""
        try:
            async with asyncio.timeout(self.options.timeout + wait):
                return await asyncio.to_thread(what)
        except TimeoutError:
            raise QueueError(f"{self.display_url}: no answer within {self.options.timeout + wait:g}s") from None
        except QueueError:
            raise
        except Exception as exc:  # botocore raises many unrelated types; all are a failed call
            raise QueueError(f"{self.display_url}: {describe(exc)}") from exc

    def _sqs(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = _make_client(self.region, self.endpoint_url, self.options.timeout)
            return self._client

    def _url(self, queue: str) -> str:
        """The URL of a queue given by name or URL, looked up once."""
        if queue.startswith(("https://", "http://")):
            return queue
        with self._lock:
            known = self._urls.get(queue)
        if known is None:
            try:
                known = self._sqs().get_queue_url(QueueName=queue)["QueueUrl"]
            except Exception as exc:
                if "NonExistentQueue" in str(exc) or "QueueDoesNotExist" in str(exc):
                    raise QueueSetupError(f"{self.display_url}: queue {queue!r} does not exist in region {self.region}") from None
                raise
            with self._lock:
                self._urls[queue] = known
        return known

    async def open(self) -> None:
        def setup() -> None:
            self.queue_url = self.queue_url or self._url(self.name)
            if self.options.dead_letter:
                self.dead_url = self._url(self.options.dead_letter)
            else:
                attributes = self._sqs().get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"])
                policy = attributes.get("Attributes", {}).get("RedrivePolicy")
                if not policy:
                    raise QueueSetupError(
                        f"{self.display_url}: no dead-letter queue: pass one (--dead-letter NAME) or give the queue a RedrivePolicy"
                    )
                self.dead_url = self._url(json.loads(policy)["deadLetterTargetArn"].rsplit(":", 1)[-1])
            for destination in (self.options.results, self.options.progress):
                if destination:
                    self._url(destination)
            if self.options.cancel:
                raise QueueSetupError(f"{self.display_url}: SQS has no cancel channel; drop --cancel")

        await self.call(setup)

    async def take(self, wait: float) -> Delivery | None:
        seconds = min(MAX_WAIT, int(wait))

        def receive() -> list[dict[str, Any]]:
            reply = self._sqs().receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=1,
                WaitTimeSeconds=seconds,
                VisibilityTimeout=self.visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
            )
            return reply.get("Messages", [])

        messages = await self.call(receive, seconds)
        if not messages:
            return None
        message = messages[0]
        attributes = message.get("Attributes", {})
        return Delivery(
            message["MessageId"], message["Body"].encode(), int(attributes.get("ApproximateReceiveCount", 1)), message
        )

    async def _visibility(self, delivery: Delivery, seconds: int) -> None:
        await self.call(
            lambda: self._sqs().change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=delivery.handle["ReceiptHandle"], VisibilityTimeout=seconds
            )
        )

    async def extend(self, delivery: Delivery) -> bool:
        try:
            await self._visibility(delivery, self.visibility)
        except QueueError as exc:
            # The receipt handle died: the message became visible and someone else received it.
            if "ReceiptHandleIsInvalid" in str(exc) or "MessageNotInflight" in str(exc):
                return False
            raise
        return True

    def _send(self, queue: str, body: bytes, like: Delivery | None = None) -> None:
        url = self._url(queue)
        self._sqs().send_message(QueueUrl=url, MessageBody=body.decode(), **_fifo(url, like))

    def _delete(self, delivery: Delivery) -> None:
        self._sqs().delete_message(QueueUrl=self.queue_url, ReceiptHandle=delivery.handle["ReceiptHandle"])

    async def ack(self, delivery: Delivery, record: bytes | None) -> None:
        def run() -> None:
            # Result first: a crash in between redoes the unit rather than losing its result.
            if self.options.results and record is not None:
                self._once(delivery, "result", lambda: self._send(self.options.results or "", record, delivery))
            self._delete(delivery)
            self._forget(delivery)

        await self.call(run)

    async def retry(self, delivery: Delivery, delay: float) -> None:
        await self._visibility(delivery, min(MAX_VISIBILITY, max(0, round(delay))))

    async def hand_back(self, delivery: Delivery, started: bool) -> None:
        await self._visibility(delivery, 0)

    async def dead_letter(self, delivery: Delivery, reason: str, record: bytes | None) -> None:
        dead_url = self.dead_url
        assert dead_url is not None

        def send_dead() -> None:
            self._sqs().send_message(
                QueueUrl=dead_url,
                MessageBody=delivery.handle["Body"],
                MessageAttributes={
                    "vqs_error": {"DataType": "String", "StringValue": reason[:1000] or "-"},
                    "vqs_attempts": {"DataType": "Number", "StringValue": str(delivery.attempt)},
                },
                **_fifo(dead_url, delivery),
            )

        def run() -> None:
            self._once(delivery, "dead", send_dead)
            if self.options.results and record is not None:
                self._once(delivery, "result", lambda: self._send(self.options.results or "", record, delivery))
            self._delete(delivery)
            self._forget(delivery)

        await self.call(run)

    def _once(self, delivery: Delivery, step: str, send: Callable[[], None]) -> None:
        """A send that a retry of the whole operation (after a failed delete) does not repeat."""
        with self._lock:
            if (delivery.message_id, step) in self._done:
                return
        send()
        with self._lock:
            self._done.add((delivery.message_id, step))

    def _forget(self, delivery: Delivery) -> None:
        with self._lock:
            self._done.difference_update({(delivery.message_id, "dead"), (delivery.message_id, "result")})

    async def publish_progress(self, event: bytes) -> None:
        if self.options.progress:
            await self.call(lambda: self._send(self.options.progress or "", event))

    async def cancelled(self, delivery: Delivery, unit_id: str) -> bool:
        return False

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)


def _fifo(url: str, like: Delivery | None) -> dict[str, str]:
    """A FIFO queue's required group and deduplication ids: the unit's own where there is one."""
    if not url.endswith(".fifo"):
        return {}
    group = (like.handle.get("Attributes", {}).get("MessageGroupId") if like else None) or "vqs-consumer"
    return {"MessageGroupId": group, "MessageDeduplicationId": like.message_id if like else uuid.uuid4().hex}


def _make_client(region: str, endpoint_url: str | None, timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    # A session per queue: boto3's default session is not thread-safe. Standard retry mode backs
    # off with jitter on throttling and 5xx. The read timeout covers a 20 s long poll.
    config = Config(
        connect_timeout=timeout,
        read_timeout=MAX_WAIT + timeout,
        retries={"mode": "standard", "total_max_attempts": 3},
        user_agent_extra="vqs-consumer",
    )
    return boto3.session.Session(region_name=region).client("sqs", endpoint_url=endpoint_url, config=config)
