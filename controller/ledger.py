"""Persisted session records, so a restarted controller neither leaks nor double-opens.

A session counts as open only once its record is stored. Writes carry only what changed (a grant,
a renewal, a close), so their cost follows the changes, not the number of sessions held:

- `FileLedger`: an append-only JSON-lines file per scaler (`SCALER.sessions.jsonl`, 0600), one
  line per change, each batch appended with one write and one fsync; rewritten atomically
  (compacted) when the history outgrows the live records. A line torn by a crash mid-write is
  the last one, and is ignored.
- `RedisLedger`: one hash per scaler, one HSET or HDEL per change, fenced against a deposed leader.

Both read the earlier whole-document format (one JSON object, replaced on every change) and
rewrite it in their own on first load. The records hold `auth_data`, which can end a session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.backoff import backoff
from controller.config import split_ledger_prefix
from controller.masking import redact
from controller.vast import GrantedSession

log = logging.getLogger(__name__)

#: What one write stores: per session id, its record as it now is, or None once it is closed.
Changes = Mapping[str, "SessionRecord | None"]
#: A file is compacted once it holds this many lines and four times as many as live records.
COMPACT_MIN_LINES = 1024
_GROWTH = 4


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session: GrantedSession
    opened_at: float

    @property
    def session_id(self) -> str:
        return self.session.session_id

    def to_json(self) -> dict[str, Any]:
        # asdict() would deep-copy auth_data for every line written.
        session = self.session
        return {"session_id": session.session_id, "auth_data": session.auth_data, "expires_at": session.expires_at,
                "lifetime": session.lifetime, "opened_at": self.opened_at}  # fmt: skip

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
    """The ledger could not be read or written; the message names the file or key."""


class Ledger(Protocol):
    def load(self) -> list[SessionRecord]:
        """Every live record; the ledger is this instance's to write from now on."""

    def write(self, changes: Changes) -> None:
        """Store `changes` durably, or raise LedgerError (then nothing of them counts as stored)."""

    def close(self) -> None: ...


def _corrupt(where: str, remedy: str, exc: Exception) -> LedgerError:
    return LedgerError(
        f"session ledger {where} is corrupt ({type(exc).__name__}); {remedy} to start without re-adopting its sessions"
    )


def _decode_document(raw: str | bytes, where: str, remedy: str) -> list[SessionRecord]:
    """The earlier format: {"version": 1, "sessions": [record, ...]}."""
    try:
        return [SessionRecord.from_json(item) for item in json.loads(raw)["sessions"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(where, remedy, exc) from None


def _line(session_id: str, record: SessionRecord | None) -> bytes:
    data = record.to_json() if record is not None else {"session_id": session_id, "closed": True}
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


class FileLedger:
    """`STATE_DIR/SCALER.sessions.jsonl`: one line per grant, renewal and close (see the module)."""

    def __init__(self, state_dir: str | os.PathLike[str], scaler: str):
        self.path = Path(state_dir) / f"{scaler}.sessions.jsonl"
        self._legacy = Path(state_dir) / f"{scaler}.sessions.json"
        self._live: dict[str, SessionRecord] | None = None  # None until loaded
        self._lines = 0
        self._fd: int | None = None  # open for appending while the file is known to end cleanly

    def load(self) -> list[SessionRecord]:
        live = {r.session_id: r for r in self._read()}
        # Rewriting drops the history, a torn last line and the earlier format's file.
        self._compact(live)
        self._legacy.unlink(missing_ok=True)
        return list(live.values())

    def _read(self) -> list[SessionRecord]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self._read_legacy()
        except OSError as exc:
            raise LedgerError(f"cannot read session ledger {self.path}: {exc.strerror}") from None
        live: dict[str, SessionRecord] = {}
        lines = raw.split(b"\n")
        # Whatever follows the last newline is a line whose write a crash cut short.
        for number, line in enumerate(lines[:-1], 1):
            try:
                data = json.loads(line)
                if data.get("closed"):
                    live.pop(str(data["session_id"]), None)
                else:
                    record = SessionRecord.from_json(data)
                    live[record.session_id] = record
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise _corrupt(f"{self.path} (line {number})", "move it aside", exc) from None
        return list(live.values())

    def _read_legacy(self) -> list[SessionRecord]:
        try:
            raw = self._legacy.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(f"cannot read session ledger {self._legacy}: {exc.strerror}") from None
        return _decode_document(raw, str(self._legacy), "move it aside")

    def write(self, changes: Changes) -> None:
        if self._live is None:
            self.load()  # also rewrites a file a crash left with a torn last line
        live = self._live
        for session_id, record in changes.items():
            if record is None:
                live.pop(session_id, None)
            else:
                live[session_id] = record
        if self._fd is None or self._lines + len(changes) > max(COMPACT_MIN_LINES, _GROWTH * len(live)):
            self._compact(live)
            return
        try:
            os.write(self._fd, b"".join(_line(sid, record) for sid, record in changes.items()))
            os.fsync(self._fd)
        except OSError as exc:
            # A partial line may now end the file: the next write rewrites it whole instead.
            self._close_fd()
            raise LedgerError(f"cannot write session ledger {self.path}: {exc.strerror}") from None
        self._lines += len(changes)

    def _compact(self, live: dict[str, SessionRecord]) -> None:
        """Replace the file with one line per live record, and append to the new file from now on."""
        self._close_fd()
        try:
            write_atomically(self.path, b"".join(_line(sid, record) for sid, record in live.items()))
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise LedgerError(f"cannot write session ledger {self.path}: {exc.strerror}") from None
        self._live, self._lines = live, len(live)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()


class GroupCommit:
    """The one writer of a ledger, in the event loop: each write carries every change since the last.

    `store()` (a grant) waits until its record is durable and starts a write at once; `change()`
    (a renewal, a close) only joins the next write, started by `kick()` once per pool tick or by
    the next `store()`. Writes run in a thread one at a time, so an older state never lands after
    a newer one. A failed write keeps its changes (newer ones win) and is retried with backoff.
    """

    def __init__(self, ledger: Ledger, written: Callable[[], None], *, scaler: str):
        self._ledger = ledger
        self._written = written
        self._scaler = scaler
        self._pending: dict[str, SessionRecord | None] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def load(self) -> list[SessionRecord]:
        return await asyncio.to_thread(self._ledger.load)

    def change(self, session_id: str, record: SessionRecord | None) -> None:
        self._pending[session_id] = record

    async def store(self, session_id: str, record: SessionRecord) -> None:
        """Until `record` is durable; LedgerError if the write carrying it failed."""
        self._pending[session_id] = record
        await self.flush()

    async def flush(self) -> None:
        """Until every change made so far is durable; LedgerError if the write carrying them failed."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.kick()
        await waiter

    def kick(self) -> None:
        """Start a write of the pending changes, unless one is under way (it takes them next)."""
        if (self._pending or self._waiters) and (self._writer is None or self._writer.done()):
            self._writer = asyncio.create_task(self._write_all(), name=f"ledger-{self._scaler}")

    async def _write_all(self) -> None:
        attempt = 0
        while self._pending or self._waiters:
            batch, waiters = self._pending, self._waiters
            self._pending, self._waiters = {}, []
            try:
                if batch:
                    await asyncio.to_thread(self._ledger.write, batch)
            except LedgerError as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                self._pending = {**batch, **self._pending}
                log.error("cannot write the session ledger; retrying", extra={"scaler": self._scaler, "error": str(exc)})
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            if batch:
                self._written()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        self._ledger.close()


def write_atomically(path: Path, body: str | bytes) -> None:
    """Replace `path` with `body`: a 0600 temp file beside it, fsynced, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates it 0600
            handle.write(body.encode() if isinstance(body, str) else body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


DEFAULT_KEY_PREFIX = "vast-queue-scaler"

# KEYS: sessions, fence. Takes the next fencing token, so every earlier holder's write is refused;
# returns the ledger as it is: a hash, or the earlier format's one JSON string.
_CLAIM = """
local token = redis.call('INCR', KEYS[2])
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'hash' then return {token, kind, redis.call('HGETALL', KEYS[1])} end
if kind == 'string' then return {token, kind, {redis.call('GET', KEYS[1])}} end
return {token, kind, {}}
"""

# KEYS: sessions, fence; ARGV: our token, '1' to replace the whole key first, then per change a
# session id and its JSON ('' once closed). Only while the fencing token is ours.
_WRITE = """
local fence = redis.call('GET', KEYS[2])
if fence ~= ARGV[1] then return {0, fence or '0'} end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return {1, fence}
"""


class RedisLedger:
    """One Redis hash per scaler (`PREFIX:SCALER:sessions`: session id -> record), fenced.

    `load()` takes the next fencing token (INCR of `PREFIX:SCALER:fence`) with the read; `write()`
    sets or deletes one field per change inside a script that first checks the fence still holds
    that token. A new leader loads when it takes over (`SessionPool.adopt()`), so from that moment
    every write of an earlier leader is refused. Calls are synchronous like FileLedger's: one
    round trip each, with a short timeout and no retry (the pool retries with backoff).
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
        self._write = self._client.register_script(_WRITE)
        self.token: int | None = None

    def load(self) -> list[SessionRecord]:
        """Take this ledger over (see the class docstring) and read it."""
        try:
            token, kind, data = self._claim(keys=[self.key, self.fence_key])
        except redis.RedisError as exc:
            raise LedgerError(f"cannot read session ledger {self._where}: {redact(str(exc))}") from None
        self.token = int(token)
        remedy = f"delete the key {self.key}"
        if kind == b"string":
            records = _decode_document(data[0], self._where, remedy)
            self._store({r.session_id: r for r in records}, replace=True)
            return records
        try:
            return [SessionRecord.from_json(json.loads(raw)) for raw in data[1::2]]
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(self._where, remedy, exc) from None

    def write(self, changes: Changes) -> None:
        self._store(changes, replace=False)

    def _store(self, changes: Changes, *, replace: bool) -> None:
        if self.token is None:
            raise LedgerError(f"session ledger {self._where}: write() before load() took it over")
        args: list[Any] = [self.token, "1" if replace else "0"]
        for session_id, record in changes.items():
            args += [session_id, "" if record is None else json.dumps(record.to_json(), separators=(",", ":"))]
        try:
            saved, fence = self._write(keys=[self.key, self.fence_key], args=args)
        except redis.RedisError as exc:
            raise LedgerError(f"cannot write session ledger {self._where}: {redact(str(exc))}") from None
        if not saved:
            raise LedgerError(
                f"refused to write session ledger {self._where}: another leader took it over "
                f"(fencing token {int(fence)}, ours {self.token})"
            )

    def close(self) -> None:
        self._client.close()
