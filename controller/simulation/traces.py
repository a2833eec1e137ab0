"""Job traces: when each job arrives and how long it runs; the built-in ones and their CSV form.

A trace CSV has the header `seconds,jobs[,service_seconds]`: at `seconds` after the start, `jobs`
jobs arrive, each running `service_seconds` (or, without that column, a draw from a distribution).
Every built-in trace comes from a generator with a fixed seed, so the same code gives the same
trace; times are rounded to 0.1 s so a trace read back from its CSV is the very same trace.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

DISTRIBUTION_FORMS = "SECONDS, uniform:LOW:HIGH, lognormal:MEDIAN:SIGMA or pareto:MINIMUM:ALPHA"


def distribution(spec: str, rng: random.Random) -> Callable[[], float]:
    """A function drawing one duration in seconds from a spec such as `lognormal:60:0.5`."""
    kind, *args = spec.split(":")
    try:
        numbers = [float(a) for a in args] if args else [float(kind)]
    except ValueError:
        numbers = []
    if not args and numbers and numbers[0] >= 0:
        return lambda: numbers[0]
    if len(numbers) == 2 and min(numbers) >= 0:
        low, high = numbers
        if kind == "uniform" and low <= high:
            return lambda: rng.uniform(low, high)
        if kind == "lognormal" and low > 0:
            return lambda: rng.lognormvariate(math.log(low), high)
        if kind == "pareto" and low > 0 and high > 0:
            return lambda: low * rng.paretovariate(high)
    raise ValueError(f"expected a duration distribution: {DISTRIBUTION_FORMS}, got {spec!r}")


def mean(spec: str) -> float:
    """The mean of a distribution spec (what a forecaster that knows the spec would expect)."""
    distribution(spec, random.Random(0))  # validates
    kind, *args = spec.split(":")
    if not args:
        return float(kind)
    first, second = (float(a) for a in args)
    if kind == "uniform":
        return (first + second) / 2
    if kind == "lognormal":
        return first * math.exp(second**2 / 2)
    return math.inf if second <= 1 else first * second / (second - 1)


@dataclass(frozen=True)
class Trace:
    name: str
    arrivals: tuple[float, ...]  # seconds, ascending
    services: tuple[float, ...]  # seconds of work for each job
    about: str = ""
    #: The first period of a recurring pattern: what a learning policy may spend learning it.
    #: Results are also measured over the jobs arriving after it (0: no pattern to learn).
    learning: float = 0.0
    #: Arrivals per second at a time, as the generator drew them (only where that rate is smooth:
    #: multi-day): what a perfect profile would know, not the arrivals themselves.
    rate: Callable[[float], float] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls, name: str, jobs: Iterable[tuple[float, float]], about: str = "", learning: float = 0.0,
        rate: Callable[[float], float] | None = None,
    ) -> Trace:  # fmt: skip
        ordered = sorted((round(at, 1), round(max(service, 0.1), 1)) for at, service in jobs)
        return cls(name, tuple(a for a, _ in ordered), tuple(s for _, s in ordered), about, learning, rate)


def write_csv(trace: Trace, path: Path) -> None:
    """One row per arrival instant and service time (jobs counts identical pairs)."""
    rows: list[list[float]] = []
    for at, service in zip(trace.arrivals, trace.services, strict=True):
        if rows and rows[-1][0] == at and rows[-1][2] == service:
            rows[-1][1] += 1
        else:
            rows.append([at, 1, service])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["seconds", "jobs", "service_seconds"])
        writer.writerows([f"{at:g}", int(jobs), f"{service:g}"] for at, jobs, service in rows)


def read_csv(path: Path, service: str = "lognormal:60:0.5", seed: int = 1) -> Trace:
    """Read `seconds,jobs[,service_seconds]`; without service_seconds, draw from `service`."""
    draw = distribution(service, random.Random(seed))
    jobs: list[tuple[float, float]] = []
    with path.open(newline="") as source:
        reader = csv.DictReader(source)
        if not reader.fieldnames or not {"seconds", "jobs"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the header seconds,jobs[,service_seconds]")
        for line, row in enumerate(reader, start=2):
            try:
                at, count = float(row["seconds"]), int(row["jobs"])
                given = row.get("service_seconds")
                seconds = [float(given)] * count if given not in (None, "") else [draw() for _ in range(count)]
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: expected numbers in seconds,jobs,service_seconds") from None
            if at < 0 or count < 0 or min(seconds, default=0) < 0:
                raise ValueError(f"{path}:{line}: seconds, jobs and service_seconds must be >= 0")
            jobs.extend((at, s) for s in seconds)
    return Trace.of(path.stem, jobs, f"read from {path}")


# ---- the built-in traces (generators with fixed seeds) ---------------------------------------

HOUR = 3600.0
DAY = 24 * HOUR


def _poisson(rng: random.Random, rate: Callable[[float], float], peak: float, start: float, end: float) -> list[float]:
    """Arrival times of a Poisson process with time-varying `rate` (<= peak), by thinning."""
    times, t = [], start
    while True:
        t += rng.expovariate(peak)
        if t >= end:
            return times
        if rng.random() * peak < rate(t):
            times.append(t)


def steady(seed: int = 11) -> Trace:
    rng = random.Random(seed)
    service = distribution("lognormal:45:0.5", rng)
    arrivals = _poisson(rng, lambda t: 0.1, 0.1, 0.0, 2 * HOUR)
    return Trace.of("steady", ((a, service()) for a in arrivals),
                    "Poisson arrivals, 6 jobs/min for 2 h; service lognormal, median 45 s")


def bursts(seed: int = 12) -> Trace:
    rng = random.Random(seed)
    service = distribution("lognormal:60:0.4", rng)
    arrivals = _poisson(rng, lambda t: 1 / 120, 1 / 120, 0.0, 4 * HOUR)
    for start in range(600, int(4 * HOUR), 1800):
        arrivals += [start + rng.uniform(0, 20) for _ in range(40)]
    return Trace.of("bursts", ((a, service()) for a in arrivals),
                    "40 jobs within 20 s every 30 min over a trickle of 1 job/2 min, 4 h; "
                    "service lognormal, median 60 s", learning=1800.0)


def diurnal(seed: int = 13) -> Trace:
    rng = random.Random(seed)
    service = distribution("lognormal:60:0.5", rng)
    low, high = 0.005, 0.3

    def rate(t: float) -> float:
        return low + (high - low) * (1 - math.cos(2 * math.pi * t / (24 * HOUR))) / 2

    arrivals = _poisson(rng, rate, high, 0.0, 24 * HOUR)
    return Trace.of("diurnal", ((a, service()) for a in arrivals),
                    "24 h day curve: 0.3 jobs/min at midnight to 18 jobs/min at noon; "
                    "service lognormal, median 60 s")


def spike(seed: int = 14) -> Trace:
    rng = random.Random(seed)
    service = distribution("lognormal:90:0.3", rng)
    return Trace.of("spike", ((600 + rng.uniform(0, 60), service()) for _ in range(80)),
                    "nothing for 10 min, then 80 jobs within 1 min, then nothing; "
                    "service lognormal, median 90 s")


def long_tail(seed: int = 15) -> Trace:
    rng = random.Random(seed)
    service = distribution("pareto:20:1.5", rng)
    arrivals = _poisson(rng, lambda t: 0.05, 0.05, 0.0, 3 * HOUR)
    return Trace.of("long-tail", ((a, min(service(), HOUR)) for a in arrivals),
                    "Poisson arrivals, 3 jobs/min for 3 h; service Pareto (20 s minimum, "
                    "alpha 1.5, mean 60 s, capped at 1 h)")


def trickle(seed: int = 16) -> Trace:
    rng = random.Random(seed)
    service = distribution("uniform:20:40", rng)
    arrivals = _poisson(rng, lambda t: 1 / 240, 1 / 240, 0.0, 6 * HOUR)
    return Trace.of("trickle", ((a, service()) for a in arrivals),
                    "one job every 4 min on average (Poisson) for 6 h; service 20-40 s")


def _daily(rng: random.Random, days: int, noise: float, shift: float) -> list[tuple[float, float]]:
    """Per day, a (height factor, phase shift in seconds) drawn around (1, 0): day-to-day noise."""
    return [(rng.uniform(1 - noise, 1 + noise), rng.uniform(-shift, shift)) for _ in range(days)]


def _day_curve(t: float, days: list[tuple[float, float]], power: float) -> float:
    """0 at midnight, 1 at noon, raised to `power` (higher: a shorter, sharper peak); per-day noise."""
    height, shift = days[min(int(t // DAY), len(days) - 1)]
    return height * ((1 - math.cos(2 * math.pi * (t - shift) / DAY)) / 2) ** power


def multi_day(seed: int = 17) -> Trace:
    rng = random.Random(seed)
    service = distribution("lognormal:60:0.5", rng)
    days = _daily(rng, 3, noise=0.2, shift=1800)
    low, high = 0.003, 0.2

    def rate(t: float) -> float:
        return low + (high - low) * _day_curve(t, days, power=1)

    arrivals = _poisson(rng, rate, low + high * 1.2, 0.0, 3 * DAY)
    return Trace.of("multi-day", ((a, service()) for a in arrivals),
                    "3 days of a day curve: 0.2 jobs/min at night to about 12 jobs/min at noon, each "
                    "day's height +-20% and its timing +-30 min at random; service lognormal, median 60 s",
                    learning=DAY, rate=rate)


def periodic_batch(seed: int = 18) -> Trace:
    rng = random.Random(seed)
    service = distribution("lognormal:90:0.3", rng)
    arrivals = _poisson(rng, lambda t: 1 / 180, 1 / 180, 0.0, 2 * DAY)
    for hour in range(48):
        start = hour * HOUR + 17 * 60  # minute 17 of every hour, like a cron job
        arrivals += [start + rng.uniform(0, 10) for _ in range(round(30 * rng.uniform(0.8, 1.2)))]
    return Trace.of("periodic-batch", ((a, service()) for a in arrivals),
                    "2 days: a batch of 24-36 jobs within 10 s at minute 17 of every hour, over a "
                    "trickle of 1 job/3 min; service lognormal, median 90 s", learning=DAY)


def week(seed: int = 19) -> Trace:
    """The scale trace (not in the benchmark): a week, about 330,000 jobs, peaks of 160/min."""
    rng = random.Random(seed)
    service = distribution("lognormal:30:0.5", rng)
    days = _daily(rng, 7, noise=0.1, shift=1800)
    days = [(height * (0.65 if day in (5, 6) else 0.9), shift) for day, (height, shift) in enumerate(days)]
    peak = 160 / 60

    def rate(t: float) -> float:
        return peak * (0.02 + 0.98 * _day_curve(t, days, power=6))

    arrivals = _poisson(rng, rate, peak, 0.0, 7 * DAY)
    return Trace.of("week", ((a, service()) for a in arrivals),
                    "7 days, weekdays and a quieter weekend: 3 jobs/min at night, up to 160 jobs/min "
                    "at noon (a sharp peak); service lognormal, median 30 s", learning=DAY)


BUILT_IN: dict[str, Callable[[], Trace]] = {
    "steady": steady,
    "bursts": bursts,
    "diurnal": diurnal,
    "spike": spike,
    "long-tail": long_tail,
    "trickle": trickle,
    "multi-day": multi_day,
    "periodic-batch": periodic_batch,
}
#: Traces for `simulate --week` only: too long for the benchmark's minute.
SCALE: dict[str, Callable[[], Trace]] = {"week": week}
