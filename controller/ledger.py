"""Persisted session records, so a restarted controller neither leaks nor double-opens.

A session counts as open only once its record is stored. The record holds `auth_data`, which can
end a session, so the file is written 0600 and atomically (temp file, fsync, rename); the Redis
form is one key per scaler, replaced with one SET and fenced against a deposed leader.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.config import split_ledger_prefix
from controller.masking import redact
from controller.vast import GrantedSession

_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session: GrantedSession
    opened_at: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.session), "opened_at": self.opened_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        return cls(
            session=GrantedSession(
                session_id=str(data["session_id"]),
                auth_data=dict(data["auth_data"]),
                expires_at=float(data["expires_at"]),
                lifetime=float(data["lifetime"]),
            ),
            opened_at=float(data["opened_at"]),
        )


class LedgerError(Exception):
    """The ledger could not be read or written; the message names the file."""


class Ledger(Protocol):
    def load(self) -> list[SessionRecord]: ...

    def save(self, records: list[SessionRecord]) -> None: ...


def _encode(records: list[SessionRecord]) -> str:
    return json.dumps({"version": _FORMAT_VERSION, "sessions": [r.to_json() for r in records]}, indent=1)


def _decode(raw: str | bytes, where: str, remedy: str) -> list[SessionRecord]:
    try:
        data = json.loads(raw)
        return [SessionRecord.from_json(item) for item in data["sessions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LedgerError(
            f"session ledger {where} is corrupt ({type(exc).__name__}); "
            f"{remedy} to start without re-adopting its sessions"
        ) from None


class FileLedger:
    """One JSON file per scaler in `state_dir`."""

    def __init__(self, state_dir: str | os.PathLike[str], scaler: str):
        self.path = Path(state_dir) / f"{scaler}.sessions.json"

    def load(self) -> list[SessionRecord]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read session ledger {self.path}: {exc.strerror}") from None
        return _decode(raw, str(self.path), "move it aside")

    def save(self, records: list[SessionRecord]) -> None:
        try:
            write_atomically(self.path, _encode(records))
        except OSError as exc:
            raise LedgerError(f"cannot write session ledger {self.path}: {exc.strerror}") from None


def write_atomically(path: Path, body: str) -> None:
    """Replace `path` with `body`: a 0600 temp file beside it, fsynced, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp creates it 0600
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


DEFAULT_KEY_PREFIX = "vast-queue-scaler"

# KEYS: sessions, fence. Takes the next fencing token, so every earlier holder's save is refused.
_CLAIM = """
local token = redis.call('INCR', KEYS[2])
return {token, redis.call('GET', KEYS[1])}
"""

# KEYS: sessions, fence; ARGV: our token, the JSON. One SET, and only while the token is ours.
_SAVE = """
local fence = redis.call('GET', KEYS[2])
if fence ~= ARGV[1] then return {0, fence or '0'} end
redis.call('SET', KEYS[1], ARGV[2])
return {1, fence}
"""


class RedisLedger:
    """One Redis key per scaler (`PREFIX:SCALER:sessions`), fenced against a deposed leader.

    `load()` takes the next fencing token (INCR of `PREFIX:SCALER:fence`) with the read; `save()`
    replaces the JSON with one SET inside a script that first checks the fence still holds that
    token. A new leader loads when it takes over (`SessionPool.adopt()`), so from that moment every
    save of an earlier leader is refused. Calls are synchronous like FileLedger's: one round trip
    each, with a short timeout and no retry (the pool re-saves a dirty ledger on its next tick).
    """

    def __init__(self, url: str, scaler: str, *, timeout: float = 2.0):
        connect_url, prefix = split_ledger_prefix(url, DEFAULT_KEY_PREFIX)
        self.key = f"{prefix}:{scaler}:sessions"
        self.fence_key = f"{prefix}:{scaler}:fence"
        self._where = f"{self.key} on {redact(connect_url)}"
        self._client = redis.Redis.from_url(
            connect_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._claim = self._client.register_script(_CLAIM)
        self._save = self._client.register_script(_SAVE)
        self.token: int | None = None

    def load(self) -> list[SessionRecord]:
        """Take this ledger over (see the class docstring) and read it."""
        try:
            token, raw = self._claim(keys=[self.key, self.fence_key])
        except redis.RedisError as exc:
            raise LedgerError(f"cannot read session ledger {self._where}: {redact(str(exc))}") from None
        self.token = int(token)
        return [] if raw is None else _decode(raw, self._where, f"delete the key {self.key}")

    def save(self, records: list[SessionRecord]) -> None:
        if self.token is None:
            raise LedgerError(f"session ledger {self._where}: save() before load() took it over")
        try:
            saved, fence = self._save(keys=[self.key, self.fence_key], args=[self.token, _encode(records)])
        except redis.RedisError as exc:
            raise LedgerError(f"cannot write session ledger {self._where}: {redact(str(exc))}") from None
        if not saved:
            raise LedgerError(
                f"refused to write session ledger {self._where}: another leader took it over "
                f"(fencing token {int(fence)}, ours {self.token})"
            )

    def close(self) -> None:
        self._client.close()
