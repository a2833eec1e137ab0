"""Persisted session records, so a restarted controller neither leaks nor double-opens.

A session counts as open only once its record is on disk. The file holds `auth_data`, which can end
a session, so it is written 0600 and atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.vast import GrantedSession

_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session: GrantedSession
    opened_at: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.session), "opened_at": self.opened_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SessionRecord":
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
        try:
            data = json.loads(raw)
            return [SessionRecord.from_json(item) for item in data["sessions"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerError(
                f"session ledger {self.path} is corrupt ({type(exc).__name__}); "
                "move it aside to start without re-adopting its sessions"
            ) from None

    def save(self, records: list[SessionRecord]) -> None:
        body = json.dumps(
            {"version": _FORMAT_VERSION, "sessions": [r.to_json() for r in records]}, indent=1
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as handle:  # mkstemp creates it 0600
                    handle.write(body)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            raise LedgerError(f"cannot write session ledger {self.path}: {exc.strerror}") from None
