"""A recurring arrival profile learned from depth readings, and the forecast it makes.

The period (a day by default, or a week) is cut into bins of `step` seconds; each bin holds the
units that arrived in it, averaged over the periods seen (each new period moves it halfway up, or
most of the way down: a forecast that misses is the costly error). Until
one whole period has been seen there is no forecast. The forecast for a time u is the work the
profile expects in flight then: the units of the bins that start within one service time up to u
(a burst counts whole, a steady rate as rate x service); over a span, the most of those.

A forecast that misses loses weight: the weight is what arrived over what was forecast, both
summed over past bins with older ones fading by the units forecast since (not by time, so the
evidence keeps between batches). A missed batch of 30 units takes the weight near 0 at once; a
trickle's bins, each forecast at a fraction of a unit, average out. A pattern that stops loses
its weight at its first miss and its bins within a period, so it stops costing. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from controller.identity import Same

#: How far one period's count moves a bin: halfway up, most of the way down (a miss costs).
_ALPHA_UP, _ALPHA_DOWN = 0.5, 0.8
#: The weight's memory, in forecast units: evidence fades by e with every this many forecast.
_VOLUME = 10.0
#: Half a unit on both sides of the weight's ratio: no evidence, full trust.
_EVEN = 0.5
#: Bins skipped by a longer gap between readings (an outage, a restart) are left as they were.
_MAX_GAP_BINS = 5
#: The bins are kept in chunks of this many: a bin that ends copies its chunk, not the period (a
#: day of 10-second bins is 8,640 of them, and one ends every 10 s).
_CHUNK = 128


@dataclass(frozen=True)
class Profile:
    """Learned units per bin over one period; the bin being counted; the forecast's track record."""

    period: float
    step: float
    started: float  # time of the first reading the profile saw
    chunks: tuple[tuple[float, ...], ...]  # the bins' values, _CHUNK a chunk
    index: int  # absolute bin number (time // step) being counted
    count: float = 0.0
    forecast: float = 0.0  # units forecast for past bins, older ones weighing less
    actual: float = 0.0  # units that arrived in those bins, weighed alike

    @property
    def values(self) -> tuple[float, ...]:
        """Every bin's value, in order."""
        return tuple(value for chunk in self.chunks for value in chunk)

    @property
    def weight(self) -> float:
        """How far the forecast is trusted: what arrived over what was forecast lately, at most 1."""
        return min(1.0, (self.actual + _EVEN) / (self.forecast + _EVEN))

    @property
    def ready(self) -> bool:
        """Whether a whole period has been seen, so every bin has been learned once."""
        return self.index * self.step - self.started >= self.period

    def as_json(self) -> dict[str, object]:
        return {"period": self.period, "step": self.step, "started": self.started, "values": list(self.values),
                "index": self.index, "count": self.count, "forecast": self.forecast, "actual": self.actual}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Profile:
        values = tuple(float(v) for v in data["values"])  # type: ignore[attr-defined]
        profile = cls(float(data["period"]), float(data["step"]), float(data["started"]), _chunked(values),  # type: ignore[arg-type]
                      int(data["index"]), float(data["count"]), float(data["forecast"]), float(data["actual"]))  # type: ignore[arg-type]  # fmt: skip
        if len(values) != bins(profile.period, profile.step):
            raise ValueError(f"profile: expected {bins(profile.period, profile.step)} bins, got {len(values)}")
        return profile


def bins(period: float, step: float) -> int:
    return max(1, round(period / step))


def _chunked(values: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(values[at : at + _CHUNK] for at in range(0, len(values), _CHUNK))


def update(profile: Profile | None, now: float, arrived: float, period: float, step: float) -> Profile:
    """The profile after a reading at `now` that counted `arrived` new units."""
    index = math.floor(now / step)
    if profile is None or (profile.period, profile.step) != (period, step):
        return Profile(period, step, now, _chunked((0.0,) * bins(period, step)), index, arrived)
    if index <= profile.index:
        # The same bin (or the clock stepped back): keep counting in it. (No dataclasses.replace:
        # this runs every tick.)
        if not arrived:
            return profile
        return Profile(profile.period, profile.step, profile.started, profile.chunks, profile.index,
                       profile.count + arrived, profile.forecast, profile.actual)  # fmt: skip
    chunks, size = list(profile.chunks), bins(profile.period, profile.step)
    forecast_sum, actual_sum = profile.forecast, profile.actual
    ended = [(profile.index, profile.count)]
    if index - profile.index - 1 <= _MAX_GAP_BINS:
        ended += [(i, 0.0) for i in range(profile.index + 1, index)]
    for number, count in ended:
        at, within = divmod(number % size, _CHUNK)
        chunk = chunks[at]
        forecast = chunk[within]
        if number * profile.step - profile.started >= profile.period:
            # Older evidence fades by the units forecast since, not by time: a weight keeps until
            # the profile forecasts again.
            fade = math.exp(-forecast / _VOLUME)
            forecast_sum, actual_sum = forecast_sum * fade + forecast, actual_sum * fade + count
            learned = forecast + (_ALPHA_UP if count >= forecast else _ALPHA_DOWN) * (count - forecast)
        else:
            learned = count
        chunks[at] = (*chunk[:within], learned, *chunk[within + 1 :])
    return replace(profile, chunks=tuple(chunks), index=index, count=arrived, forecast=forecast_sum, actual=actual_sum)


def expected(profile: Profile | None, start: float, end: float, service: float) -> float:
    """The most units the profile expects in flight at any time from `start` to `end` (0 before
    a whole period is learned), weighted by its track record."""
    if profile is None or not profile.ready:
        return 0.0
    width = max(1, math.floor(service / profile.step))
    first, last = math.floor(start / profile.step) - width + 1, math.floor(end / profile.step)
    return profile.weight * _most(Same(profile.chunks), bins(profile.period, profile.step), first, last, width)


# The bins change once a step (a bin ends), the span every step, a reading comes every poll:
# most readings ask again what the last one asked. Keyed by the bins' identity: hashing a
# period's bins would cost what the cache saves.
@lru_cache(maxsize=64)
def _most(bins_: Same[tuple[tuple[float, ...], ...]], size: int, first: int, last: int, width: int) -> float:
    """The most units of the bins that start within `width` bins, over spans ending in bins
    `first` + width - 1 to `last`."""
    chunks, values = bins_.value, []
    # The span's bins, a slice of a chunk at a time (it may wrap around the period).
    at = first
    while at <= last:
        phase = at % size
        chunk, within = divmod(phase, _CHUNK)
        taken = chunks[chunk][within : within + min(last - at + 1, size - phase)]
        values.extend(taken)
        at += len(taken)
    held = most = sum(values[:width])  # units of the bins that start within one service time
    for leaving, coming in zip(values, values[width:], strict=False):
        held += coming - leaving
        if held > most:  # max(most, held), without a call per bin
            most = held
    return most
