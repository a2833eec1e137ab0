"""The Vast endpoint parameters that sessions-equal-work needs, and how an endpoint differs from them.

One session reserves one whole worker (cost 100 = the null worker's pinned perf), so Vast must
keep one active worker per session and no more, route a second session away from a worker that
has one, and let idle workers go. The values are the ones Vast's null-worker tests were run with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: What to set in the Vast console (or `vastai update endpoint`) for the controller's endpoint.
RECOMMENDED: dict[str, float] = {
    "target_util": 1.0,
    "min_load": 0.0,
    "max_queue_time": 1.0,
    "target_queue_time": 0.5,
    "inactivity_timeout": 10.0,
}


@dataclass(frozen=True)
class Rule:
    ok: Callable[[float], bool]
    why: str


RULES: dict[str, Rule] = {
    "target_util": Rule(lambda v: v >= 1.0, "below 1 Vast keeps more active workers than sessions"),
    "min_load": Rule(lambda v: v <= 0.0, "above 0 Vast keeps workers active with no session"),
    "max_queue_time": Rule(
        lambda v: v <= 1.0,
        "above 1 s Vast routes new sessions to workers that already hold one: they answer 429 and are re-routed",
    ),
    "target_queue_time": Rule(lambda v: v <= 0.5, "above 0.5 s a waiting session starts a worker later"),
    "inactivity_timeout": Rule(lambda v: v > 0, "unset, 0 or negative: the endpoint never scales to zero"),
}


@dataclass(frozen=True)
class Mismatch:
    field: str
    value: Any  # None: unset
    recommended: float
    why: str

    def __str__(self) -> str:
        shown = "unset" if self.value is None else f"{self.value:g}"
        return f"{self.field} is {shown} (recommended {self.recommended:g}: {self.why})"


def mismatches(params: Mapping[str, Any]) -> list[Mismatch]:
    """The parameters (as Vast lists them; missing or None = unset) that differ from what is needed."""
    found = []
    for name, rule in RULES.items():
        value = params.get(name)
        number = _number(value)
        if number is None or not rule.ok(number):
            found.append(Mismatch(name, number, RECOMMENDED[name], rule.why))
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
