"""The one retry delay: capped exponential backoff with full jitter."""

from __future__ import annotations

import random

#: 2**30 x any sensible base is past every cap; beyond it the float conversion would overflow
#: in a retry loop that has been failing for hours.
_MAX_EXPONENT = 30


def backoff(attempt: int, *, base: float = 0.5, cap: float = 15.0) -> float:
    """Seconds to wait before retry `attempt` (0 = the first): uniform in [0, min(cap, base x 2^attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, _MAX_EXPONENT)))
