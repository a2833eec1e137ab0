"""Plain helpers for the consumer tests (fixtures are in conftest.py)."""

from __future__ import annotations

import uuid
from typing import Any

#: Short leases so a killed worker's unit comes back within seconds.
LEASE = 2.0


def job(**fields: Any) -> dict[str, Any]:
    """A job payload with a fresh id."""
    return {"id": uuid.uuid4().hex[:12], **fields}
