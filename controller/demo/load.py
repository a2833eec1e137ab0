"""The demo's load shapes: when each job arrives and how long it takes."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Job:
    at: float  # seconds after the start
    seconds: float  # how long the consumer works on it


class TraceError(ValueError):
    """A trace file is unreadable or malformed; the message names the file and line."""


def trapezoid(duration: float, peak_rate: float, job_seconds: float, seed: int) -> list[Job]:
    """Ramp up over the first quarter, hold for half, ramp down to zero over the last quarter.

    Arrivals are Poisson with that rate; service times vary +-30% around `job_seconds`.
    """
    rng = random.Random(seed)
    ramp = duration / 4

    def rate(t: float) -> float:
        if t < ramp:
            return peak_rate * t / ramp
        if t > duration - ramp:
            return peak_rate * max(0.0, duration - t) / ramp
        return peak_rate

    jobs, t = [], 0.0
    # Thinning: draw at the peak rate, keep each arrival with probability rate(t) / peak.
    while True:
        t += rng.expovariate(peak_rate)
        if t >= duration:
            return jobs
        if rng.random() * peak_rate < rate(t):
            jobs.append(Job(round(t, 3), round(job_seconds * rng.uniform(0.7, 1.3), 3)))


def from_csv(path: Path, job_seconds: float, seed: int) -> list[Job]:
    """`seconds,jobs` rows: `jobs` arrivals at `seconds` (an optional third column: service time)."""
    rng = random.Random(seed)
    jobs = []
    try:
        with path.open(newline="") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or row[0].strip().startswith("#") or (line == 1 and not _is_number(row[0])):
                    continue
                try:
                    at, count = float(row[0]), int(row[1])
                    seconds = float(row[2]) if len(row) > 2 and row[2].strip() else None
                except (ValueError, IndexError):
                    raise TraceError(f"{path}:{line}: expected 'seconds,jobs[,service_seconds]'") from None
                if at < 0 or count < 0:
                    raise TraceError(f"{path}:{line}: seconds and jobs must be >= 0")
                for _ in range(count):
                    service = seconds if seconds is not None else job_seconds * rng.uniform(0.7, 1.3)
                    jobs.append(Job(at, round(service, 3)))
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from None
    return sorted(jobs, key=lambda job: job.at)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
