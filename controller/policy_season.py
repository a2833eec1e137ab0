"""A recurring arrival profile learned from depth readings, and the forecast it makes.

The period (a day by default, or a week) is cut into bins of `step` seconds; each bin holds the
units that arrived in it, averaged over the periods seen (each new period moves it halfway). Until
one whole period has been seen there is no forecast. The forecast for a time u is the work the
profile expects in flight then: the units of the bins that start within one service time before
u (a burst counts whole, a steady rate as rate x service).

A forecast that misses loses weight: after each bin the weight moves toward what arrived over what
was forecast, by a step that grows with the units forecast (a missed batch of 30 units takes three
quarters of it; a bin forecast at a tenth of a unit hardly moves it). A pattern that stops loses
its weight at its first miss or two, and its bins within a period, so it stops costing. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: How far one period's count moves a bin: halfway.
_ALPHA = 0.5
#: Forecast units that move the weight halfway to what happened.
_VOLUME = 10.0
#: Bins skipped by a longer gap between readings (an outage, a restart) are left as they were.
_MAX_GAP_BINS = 5


@dataclass(frozen=True)
class Profile:
    """Learned units per bin over one period; the bin being counted; the forecast's track record."""

    period: float
    step: float
    started: float  # time of the first reading the profile saw
    values: tuple[float, ...]
    index: int  # absolute bin number (time // step) being counted
    count: float = 0.0
    weight: float = 1.0  # how far the forecast is trusted, 0 to 1

    @property
    def ready(self) -> bool:
        """Whether a whole period has been seen, so every bin has been learned once."""
        return self.index * self.step - self.started >= self.period

    def as_json(self) -> dict[str, object]:
        return {"period": self.period, "step": self.step, "started": self.started, "values": list(self.values),
                "index": self.index, "count": self.count, "weight": self.weight}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Profile:
        values = tuple(float(v) for v in data["values"])  # type: ignore[attr-defined]
        profile = cls(float(data["period"]), float(data["step"]), float(data["started"]), values,  # type: ignore[arg-type]
                      int(data["index"]), float(data["count"]), float(data["weight"]))  # type: ignore[arg-type]  # fmt: skip
        if len(values) != bins(profile.period, profile.step):
            raise ValueError(f"profile: expected {bins(profile.period, profile.step)} bins, got {len(values)}")
        return profile


def bins(period: float, step: float) -> int:
    return max(1, round(period / step))


def update(profile: Profile | None, now: float, arrived: float, period: float, step: float) -> Profile:
    """The profile after a reading at `now` that counted `arrived` new units."""
    index = math.floor(now / step)
    if profile is None or (profile.period, profile.step) != (period, step):
        return Profile(period, step, now, (0.0,) * bins(period, step), index, arrived)
    if index <= profile.index:
        # The same bin (or the clock stepped back): keep counting in it. (No dataclasses.replace:
        # this runs every tick.)
        if not arrived:
            return profile
        return Profile(profile.period, profile.step, profile.started, profile.values, profile.index,
                       profile.count + arrived, profile.weight)  # fmt: skip
    values = list(profile.values)
    weight = profile.weight
    ended = [(profile.index, profile.count)]
    if index - profile.index - 1 <= _MAX_GAP_BINS:
        ended += [(i, 0.0) for i in range(profile.index + 1, index)]
    for number, count in ended:
        phase = number % len(values)
        forecast = values[phase]
        if number * profile.step - profile.started >= profile.period:
            if forecast > 0:
                # Evidence in proportion to the units forecast: a missed batch of 30 moves the
                # weight three quarters of the way, a bin forecast at 0.1 units hardly at all.
                weight += forecast / (forecast + _VOLUME) * (min(2.0, count / forecast) - weight)
            values[phase] += _ALPHA * (count - forecast)
        else:
            values[phase] = count
    weight = min(1.0, max(0.0, weight))
    return replace(profile, values=tuple(values), index=index, count=arrived, weight=weight)


def expected(profile: Profile | None, at: float, service: float) -> float:
    """Units the profile expects in flight at time `at` (0 before a whole period is learned),
    weighted by its track record."""
    if profile is None or not profile.ready:
        return 0.0
    first, last = math.floor((at - service) / profile.step) + 1, math.floor(at / profile.step)
    size = len(profile.values)
    return profile.weight * sum(profile.values[i % size] for i in range(first, last + 1))
