"""Start-up times measured from the sessions a scaler opened: request to grant, per endpoint.

A grant comes fast when the endpoint had a ready worker without a session, in about a resume time
when it restarted a stopped worker, and in a cold start when it had to create one. The controller
cannot see which happened, so the measured times are sorted by length: under WARM seconds is a
warm grant (no start-up at all); the rest go to whichever of the two estimates, resume and cold,
is nearer (on a log scale: 30 s and 240 s are as far apart as 3 min and 24 min), and move it by
an exponential average. That is an online two-means split of start-ups into their two kinds; the
estimates start from Vast's published figures (a resume in tens of seconds, a cold start of
3-5 minutes) and follow what the endpoint does; they are what the metrics show.

The wait model needs more than two numbers: a replacement session is often granted in seconds, by
a worker whose unit just completed, and sometimes only after a cold start. So the start-ups also
go into a histogram (bins 1.5 times wider each, recent ones weighing more), and the lead time for
pre-warming is its 80th percentile. Pure: the caller passes the measured seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

#: A grant faster than this found a ready worker: it says nothing about start-ups.
WARM = 5.0
#: Weight of one new measurement in each average.
_ALPHA = 0.2
#: Weight of one open in the warm and cold shares: about the last 30 opens count.
_SHARE_ALPHA = 1 / 30
#: The start-up histogram's bins: upper edges from WARM up, each 1.5 times the last (to ~2 h).
EDGES = tuple(WARM * 1.5 ** (i + 1) for i in range(18))
#: Start-ups of a bin stand for its geometric middle.
MIDDLES = tuple(math.sqrt(edge * edge / 1.5) for edge in EDGES)
#: Each start-up weighs this much more than the one before it: about the last 50 count.
_KEEP = 1 - 1 / 50


def _bin(seconds: float) -> int:
    return min(len(EDGES) - 1, max(0, math.ceil(math.log(seconds / WARM, 1.5)) - 1))


def _prior() -> tuple[float, ...]:
    # Vast's figures stand for the first start-ups: one resume (30 s) and one cold start (240 s).
    counts = [0.0] * len(EDGES)
    counts[_bin(30.0)] += 1
    counts[_bin(240.0)] += 1
    return tuple(counts)


@dataclass(frozen=True)
class StartupState:
    """Estimated seconds from request to grant for a resumed and a cold-started worker, the share
    of start-ups that were cold, the share of opens granted warm, and how many were measured."""

    resume: float = 30.0
    cold: float = 240.0
    cold_share: float = 0.5
    warm_share: float = 0.0
    measured: int = 0
    #: Recent start-ups (not warm) per bin of EDGES, older ones weighing less.
    counts: tuple[float, ...] = _prior()

    # Both read every tick, changed only by a grant: computed once per state (frozen, so the
    # cache cannot go stale).
    @cached_property
    def spread(self) -> tuple[tuple[float, float], ...]:
        """The start-up times seen lately: (share, seconds) per bin that has any."""
        total = sum(self.counts)
        return tuple((count / total, middle) for count, middle in zip(self.counts, MIDDLES, strict=True) if count > 0)

    @cached_property
    def lead(self) -> float:
        """How long a session opened now on a worker that has to start takes, 4 times in 5."""
        seen, total = 0.0, sum(self.counts)
        for count, edge in zip(self.counts, EDGES, strict=True):
            seen += count
            if seen >= 0.8 * total:
                return edge
        return EDGES[-1]

    def as_json(self) -> dict[str, object]:
        return {"resume": self.resume, "cold": self.cold, "cold_share": self.cold_share,
                "warm_share": self.warm_share, "measured": self.measured,
                "counts": list(self.counts)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> StartupState:
        counts = tuple(float(c) for c in data["counts"])  # type: ignore[attr-defined]
        if len(counts) != len(EDGES):
            raise ValueError(f"startup: expected {len(EDGES)} counts, got {len(counts)}")
        return cls(float(data["resume"]), float(data["cold"]), float(data["cold_share"]),  # type: ignore[arg-type]
                   float(data["warm_share"]), int(data["measured"]), counts)  # type: ignore[arg-type]  # fmt: skip


def observe(state: StartupState, seconds: Iterable[float]) -> StartupState:
    """The estimates after these measured request-to-grant times, in order."""
    # Plain locals, one state built at the end: this runs on every grant.
    resume, cold, cold_share, warm_share = state.resume, state.cold, state.cold_share, state.warm_share
    measured, counts = state.measured, state.counts
    for value in seconds:
        if not math.isfinite(value) or value < 0:
            continue
        warm = value < WARM
        warm_share += _SHARE_ALPHA * (warm - warm_share)
        measured += 1
        if warm:
            continue
        kept = [count * _KEEP for count in counts]
        kept[_bin(value)] += 1
        counts = tuple(kept)
        is_cold = abs(math.log(value / cold)) < abs(math.log(value / resume))
        if is_cold:
            cold += _ALPHA * (value - cold)
        else:
            resume += _ALPHA * (value - resume)
        if resume > cold:  # keep the names right if the two estimates cross
            resume, cold = cold, resume
        cold_share += _ALPHA * (is_cold - cold_share)
    if measured == state.measured:
        return state
    return StartupState(resume, cold, cold_share, warm_share, measured, counts)
