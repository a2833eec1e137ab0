"""The decision log: the last decisions of every scaler, for `GET /decisions` and the logs."""

from __future__ import annotations

import builtins
from collections import deque
from typing import Any

from controller.policy import Decision

DECISIONS_KEPT = 200


class DecisionLog:
    """The last `maxlen` decisions of every scaler, oldest first; the loops append, the API reads."""

    def __init__(self, maxlen: int = DECISIONS_KEPT):
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, entry: dict[str, Any]) -> None:
        """Add one decision; `entry["scaler"]` names its scaler (see decision_record)."""
        # A copy: the caller may reuse its dict, and a reader must see what was decided then.
        self._entries.append(dict(entry))

    def list(self, scaler: str | None = None) -> builtins.list[dict[str, Any]]:
        return [dict(e) for e in self._entries if scaler is None or e.get("scaler") == scaler]


def decision_record(scaler: str, decision: Decision, *, acted: bool) -> dict[str, Any]:
    """One tick as a DecisionLog entry, in the shape docs/openapi.yaml gives for GET /decisions."""
    return {"scaler": scaler, **decision.as_log(), "acted": acted}
