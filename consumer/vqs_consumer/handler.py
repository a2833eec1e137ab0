"""The user's side: a decorated function, its typed payload, its context, and the errors it may raise.

    @handler
    async def render(job: Job, ctx: Context) -> Result: ...

The first parameter's annotation types the payload (a pydantic model, `dict`, `bytes`, `str`, ...);
an optional second parameter receives the `Context`. Plain `def` functions run in a thread so the
runtime's heartbeats go on while they work.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python


class RetryableError(Exception):
    """The unit may succeed later: redeliver it after a backoff (or `delay` seconds), up to max attempts."""

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class FatalError(Exception):
    """The unit can never succeed: dead-letter it at once."""


class Cancelled(Exception):
    """Raised by `Context.raise_if_cancelled()`; the unit is removed without a result."""


@dataclass
class Context:
    """What a handler knows about its unit, and how it reports progress."""

    unit_id: str
    #: 1 on the first delivery.
    attempt: int
    worker: str
    #: Set by the runtime when the unit's cancel key or message appears.
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    _on_progress: Callable[[dict[str, Any]], None] = field(default=lambda event: None, repr=False)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise Cancelled(f"unit {self.unit_id} was cancelled")

    def progress(self, fraction: float | None = None, message: str | None = None, **data: Any) -> None:
        """Renew the unit's lease now and publish a progress event; callable from async or thread code."""
        event = {"id": self.unit_id, "worker": self.worker, "t": time.time(), **data}
        if fraction is not None:
            event["progress"] = fraction
        if message is not None:
            event["message"] = message
        self._on_progress(event)


class Handler:
    """A function that works on one unit; see the module docstring for the accepted signatures."""

    def __init__(self, function: Callable[..., Any]) -> None:
        if not callable(function):
            raise TypeError(f"a handler must be a function, got {function!r}")
        self.function = function
        self.name = getattr(function, "__qualname__", repr(function))
        parameters = list(inspect.signature(function).parameters.values())
        if not 1 <= len(parameters) <= 2:
            raise TypeError(f"handler {self.name} must take (payload) or (payload, ctx), not {len(parameters)} parameters")
        hints = get_type_hints(function)
        self.payload_type: Any = hints.get(parameters[0].name, Any)
        self.wants_context = len(parameters) == 2
        self.is_async = inspect.iscoroutinefunction(function)
        self._adapter: TypeAdapter[Any] = TypeAdapter(self.payload_type)

    def decode(self, body: bytes | dict[str, str]) -> Any:
        """The typed payload of a message body; a body that does not fit is a FatalError."""
        try:
            if isinstance(body, dict):  # a stream entry's fields
                return self._adapter.validate_python(body)
            if self.payload_type is bytes:
                return body
            if self.payload_type is str:
                return body.decode()
            return self._adapter.validate_json(body)
        except (ValidationError, UnicodeDecodeError) as exc:
            raise FatalError(f"payload is not a valid {_type_name(self.payload_type)}: {exc}") from None

    async def __call__(self, payload: Any, ctx: Context) -> Any:
        args = (payload, ctx) if self.wants_context else (payload,)
        if self.is_async:
            return await self.function(*args)
        return await _in_daemon_thread(self.function, *args)


def handler(function: Callable[..., Any]) -> Handler:
    """Mark `function` as the unit handler (typing its payload from its first parameter)."""
    return function if isinstance(function, Handler) else Handler(function)


def jsonable(value: Any) -> Any:
    """A handler's return value as plain JSON data (pydantic models, dataclasses, dates...)."""
    return to_jsonable_python(value)


async def _in_daemon_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run `function` in a daemon thread: a unit abandoned at shutdown must not hold the process open."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def target() -> None:
        result, error = None, None
        try:
            result = function(*args)
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is gone: the unit was abandoned at shutdown
            pass

    threading.Thread(target=target, name="vqs-consumer-unit", daemon=True).start()
    return await future


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))
