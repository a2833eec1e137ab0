"""What a scaler's policy has learned (start-up times, the wait target's price, the recurring
arrival profile), kept in the state store so that a restart or a new leader carries on from it.

Beside the session ledger: a file `STATE_DIR/SCALER.learned.json` (atomic, 0600), or the Redis key
`PREFIX:SCALER:learned` of `state_url`. Unlike the ledger it is not fenced: a deposed leader's
last write can only put back a profile a minute older, which costs nothing. A record that cannot
be read is reported and ignored (the scaler learns afresh); it never stops a scaler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.config import redact, split_ledger_prefix
from controller.ledger import DEFAULT_KEY_PREFIX, write_atomically
from controller.policy import Learned

_FORMAT_VERSION = 1


class LearnedStateError(Exception):
    """The learned state could not be read or written; the message says where and why."""


class Memory(Protocol):
    def load(self) -> Learned | None: ...

    def save(self, learned: Learned) -> None: ...


def _encode(learned: Learned) -> str:
    return json.dumps({"version": _FORMAT_VERSION, "learned": learned.as_json()})


def _decode(raw: str | bytes, where: str) -> Learned:
    try:
        return Learned.from_json(json.loads(raw)["learned"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LearnedStateError(f"learned state {where} is unreadable ({type(exc).__name__}); learning afresh") from None


class FileMemory:
    """One JSON file per scaler in `state_dir`."""

    def __init__(self, state_dir: str | os.PathLike[str], scaler: str):
        self.path = Path(state_dir) / f"{scaler}.learned.json"

    def load(self) -> Learned | None:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LearnedStateError(f"cannot read learned state {self.path}: {exc.strerror}") from None
        return _decode(raw, str(self.path))

    def save(self, learned: Learned) -> None:
        try:
            write_atomically(self.path, _encode(learned))
        except OSError as exc:
            raise LearnedStateError(f"cannot write learned state {self.path}: {exc.strerror}") from None


class RedisMemory:
    """One Redis key per scaler, `PREFIX:SCALER:learned`, read and replaced whole."""

    def __init__(self, url: str, scaler: str, *, timeout: float = 2.0):
        connect_url, prefix = split_ledger_prefix(url, DEFAULT_KEY_PREFIX)
        self.key = f"{prefix}:{scaler}:learned"
        self._where = f"{self.key} on {redact(connect_url)}"
        self._client = redis.Redis.from_url(
            connect_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    def load(self) -> Learned | None:
        try:
            raw = self._client.get(self.key)
        except redis.RedisError as exc:
            raise LearnedStateError(f"cannot read learned state {self._where}: {redact(str(exc))}") from None
        return None if raw is None else _decode(raw, self._where)

    def save(self, learned: Learned) -> None:
        try:
            self._client.set(self.key, _encode(learned))
        except redis.RedisError as exc:
            raise LearnedStateError(f"cannot write learned state {self._where}: {redact(str(exc))}") from None

    def close(self) -> None:
        self._client.close()
