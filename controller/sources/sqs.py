"""Amazon SQS source: the queue's approximate visible and in-flight message counts.

URLs: `sqs://QUEUE?region=REGION[&endpoint_url=URL][&delayed=true]` or the queue URL
`https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE[?endpoint_url=URL][&region=REGION][&delayed=true]`.
Credentials come from the standard AWS chain (environment, profile, container or instance role).
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from controller.sources import QueueDepth, SourceError, SourceURLError, describe, query_params, split_url

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
_NO_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


def from_url(url: str, *, timeout: float = 5.0) -> SqsSource:
    parts, display = split_url(url, KIND)
    params = query_params(parts, display, KIND, _PARAMS)
    one = {name: values[0] for name, values in params.items()}

    def bad(problem: str) -> SourceURLError:
        return SourceURLError(f"{KIND} source URL {display!r}: {problem}; accepted: {_ACCEPTED}")

    delayed = _BOOLEANS.get(one.get("delayed", "false").lower())
    if delayed is None:
        raise bad(f"delayed must be true or false, got {one['delayed']!r}")
    endpoint_url = one.get("endpoint_url")
    if endpoint_url is not None and not re.match(r"^https?://[^/]+", endpoint_url):
        raise bad(f"endpoint_url must be an http(s) URL, got {endpoint_url!r}")
    region = one.get("region")
    if parts.scheme.lower() == "sqs":
        # The raw netloc, not .hostname: queue names are case-sensitive.
        name = parts.netloc
        if not _QUEUE_NAME.match(name) or parts.path not in ("", "/"):
            raise bad(f"{name!r} is not a queue name (1-80 letters, digits, '-' or '_', optional .fifo)")
        if region is None:
            raise bad("region= is required")
        return SqsSource(display, timeout, region=region, endpoint_url=endpoint_url, delayed=delayed, name=name)
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
    return SqsSource(
        display, timeout, region=region, endpoint_url=endpoint_url, delayed=delayed, queue_url=queue_url
    )


class SqsSource:
    """waiting = ApproximateNumberOfMessages (+ ...Delayed with delayed=true);
    in_flight = ApproximateNumberOfMessagesNotVisible (received, not yet deleted)."""

    def __init__(
        self,
        display_url: str,
        timeout: float,
        *,
        region: str,
        endpoint_url: str | None,
        delayed: bool,
        name: str | None = None,
        queue_url: str | None = None,
    ) -> None:
        self.display_url = display_url
        self.timeout = timeout
        self.region = region
        self.endpoint_url = endpoint_url
        self.delayed = delayed
        self.name = name
        self._queue_url = queue_url
        self._client: Any = None  # a botocore SQS client
        # boto3 calls run in worker threads; the lazy client and the cached URL are set up once.
        self._lock = threading.Lock()

    async def depth(self) -> QueueDepth:
        try:
            async with asyncio.timeout(self.timeout):
                attributes = await asyncio.to_thread(self._read)
        except TimeoutError:
            raise SourceError(f"{self.display_url}: no answer within {self.timeout:g}s") from None
        except SourceError:
            raise
        except Exception as exc:  # botocore raises many unrelated types; all are a failed read
            raise SourceError(f"{self.display_url}: {describe(exc)}") from exc
        waiting = int(attributes["ApproximateNumberOfMessages"])
        if self.delayed:
            waiting += int(attributes["ApproximateNumberOfMessagesDelayed"])
        return QueueDepth(waiting=waiting, in_flight=int(attributes["ApproximateNumberOfMessagesNotVisible"]))

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def _read(self) -> dict[str, str]:
        from botocore.exceptions import ClientError

        client, queue_url = self._prepare()
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        if self.delayed:
            names.append("ApproximateNumberOfMessagesDelayed")
        try:
            return client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
        except ClientError as exc:
            if _error_code(exc) in _NO_QUEUE:
                if self.name is not None:
                    with self._lock:  # the queue may be recreated under a new URL
                        self._queue_url = None
                raise SourceError(f"{self.display_url}: queue does not exist (region {self.region})") from None
            raise

    def _prepare(self) -> tuple[Any, str]:
        from botocore.exceptions import ClientError

        with self._lock:
            if self._client is None:
                self._client = _make_client(self.region, self.endpoint_url, self.timeout)
            if self._queue_url is None:
                assert self.name is not None
                try:
                    self._queue_url = self._client.get_queue_url(QueueName=self.name)["QueueUrl"]
                except ClientError as exc:
                    if _error_code(exc) in _NO_QUEUE:
                        raise SourceError(
                            f"{self.display_url}: queue {self.name!r} does not exist in region {self.region}"
                        ) from None
                    raise
            return self._client, self._queue_url


def _make_client(region: str, endpoint_url: str | None, timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    # A session per source: boto3's default session is not thread-safe. Standard retry mode backs
    # off with jitter on throttling and 5xx; the caller's timeout bounds the whole read.
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"mode": "standard", "total_max_attempts": 2},
        user_agent_extra="vast-queue-scaler",
    )
    return boto3.session.Session(region_name=region).client("sqs", endpoint_url=endpoint_url, config=config)


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
