"""The demo's outputs: summary.json's numbers and timeline.png."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the whole system, `t` seconds after the load started."""

    t: float
    waiting: int
    in_flight: int
    sessions_open: int
    sessions_opening: int
    workers: dict[str, int]  # state -> count, as the emulator reports it
    jobs_done: int

    @property
    def ready_workers(self) -> int:
        return self.workers.get("idle", 0)


#: Worker states (as the emulator reports them) that hold a GPU: billed and not back at zero.
ACTIVE_WORKER_STATES = ("idle", "loading")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summarize(
    *,
    scenario: str,
    samples: list[Sample],
    produced: dict[str, float],
    results: list[dict[str, Any]],
    taken_again: set[str],
    unfinished: set[str],
    billing: dict[str, float],
    session_seconds: float,
    sessions_left: int = 0,
) -> dict[str, Any]:
    """The run's numbers.

    `produced`: job id -> enqueue time; `results`: the consumers' records of finished jobs;
    `taken_again`: jobs delivered more than once; `unfinished`: jobs taken but never acked;
    `billing`: the emulator's seconds per worker state (and cost); `sessions_left`: sessions the
    emulator still held once the controller had stopped.
    """
    finished: dict[str, int] = {}
    waits = []
    for result in results:
        job_id = str(result["id"])
        finished[job_id] = finished.get(job_id, 0) + 1
        if job_id in produced and finished[job_id] == 1:
            waits.append(float(result["started_at"]) - produced[job_id])
    interrupted = taken_again | unfinished | {job_id for job_id, n in finished.items() if n > 1}
    gaps = [abs(s.sessions_open - s.in_flight) for s in samples]
    last = samples[-1] if samples else None
    completed = sum(1 for job_id in produced if job_id in finished)
    return {
        "scenario": scenario,
        "jobs_produced": len(produced),
        "jobs_completed": completed,
        "jobs_lost": len(produced) - completed,
        "jobs_interrupted": len(interrupted & produced.keys()),
        "queue_wait_p50_seconds": _round(percentile(waits, 50)),
        "queue_wait_p95_seconds": _round(percentile(waits, 95)),
        "queue_wait_max_seconds": _round(max(waits, default=None)),
        "session_seconds": round(session_seconds, 1),
        "worker_seconds_billed": round(
            billing.get("ready_seconds", 0.0) + billing.get("loading_seconds", 0.0), 1
        ),
        "worker_billing": {key: round(value, 3) for key, value in billing.items()},
        "max_abs_sessions_minus_in_flight": max(gaps, default=0),
        "mean_abs_sessions_minus_in_flight": round(statistics.fmean(gaps), 3) if gaps else 0.0,
        "final": _final(last, sessions_left),
        "returned_to_zero": last is not None and at_zero(last) and sessions_left == 0,
    }


def _final(last: Sample | None, sessions_left: int) -> dict[str, Any] | None:
    """The last sample's numbers: what "returned to zero" was judged on."""
    if last is None:
        return None
    return {
        "waiting": last.waiting,
        "in_flight": last.in_flight,
        "sessions_open": last.sessions_open,
        "sessions_opening": last.sessions_opening,
        "workers": dict(last.workers),
        "emulator_sessions_after_stop": sessions_left,
    }


def at_zero(sample: Sample) -> bool:
    """Nothing queued, no session open or opening, no worker ready or loading."""
    return (
        sample.waiting + sample.in_flight == 0
        and sample.sessions_open + sample.sessions_opening == 0
        and sum(sample.workers.get(state, 0) for state in ACTIVE_WORKER_STATES) == 0
    )


def succeeded(summary: dict[str, Any]) -> bool:
    """Every job done exactly once and everything back at zero."""
    return summary["jobs_lost"] == 0 and summary["jobs_interrupted"] == 0 and summary["returned_to_zero"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plot(samples: list[Sample], path: Path, title: str, load_end: float | None = None) -> None:
    """Queue depth, in-flight work, sessions and ready workers over time on one figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display: always write a file
    import matplotlib.pyplot as plt

    t = [s.t for s in samples]
    fig, ax = plt.subplots(figsize=(11, 5), dpi=120)
    ax.plot(t, [s.waiting for s in samples], label="waiting in queue", color="tab:gray")
    ax.plot(t, [s.in_flight for s in samples], label="in flight (being worked)", color="tab:blue", lw=2)
    ax.step(
        t, [s.sessions_open for s in samples], where="post", label="sessions open", color="tab:green", lw=2
    )
    ax.step(
        t,
        [s.sessions_open + s.sessions_opening for s in samples],
        where="post",
        label="sessions open + opening",
        color="tab:green",
        ls="--",
    )
    ax.step(t, [s.ready_workers for s in samples], where="post", label="ready workers", color="tab:orange")
    if load_end is not None:
        ax.axvline(load_end, color="black", ls=":", lw=1, label="load ends")
    ax.set_title(title)
    ax.set_xlabel("time since the load started (s)")
    ax.set_ylabel("units of work / sessions / workers")
    ax.grid(alpha=0.3)
    # Beside the axes, not on them: a trace may peak anywhere, and no line may hide behind it.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    ax.set_ylim(bottom=0)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
