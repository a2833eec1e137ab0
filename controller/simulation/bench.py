"""The benchmark: every policy on every trace, and the acceptance checks on the results.

A policy row is a name, a label, a `PolicyFactory` and a kind: `ours` rows are checked against
the acceptance rules (our policy with its defaults, and with one tuned config used on every
trace), `feature` rows show one cost-for-wait setting on top of the defaults and are compared
with them, not checked; then the KEDA baselines and the oracle. Adding a variant of ours (a
PolicyConfig) or another baseline is one more entry in `POLICIES`.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from controller.config import PolicyConfig
from controller.simulation.measure import PolicyFactory, Result, simulate
from controller.simulation.oracle import Oracle
from controller.simulation.policies import KedaScaledJob, KedaScaledObject, Ours
from controller.simulation.traces import BUILT_IN, Trace
from controller.simulation.world import Model

#: The endpoint every policy runs against.
MODEL = Model()


def ours(**fields: Any) -> PolicyFactory:
    """Our policy with these PolicyConfig fields; max_sessions is the endpoint's cap, as for all."""
    return lambda model: Ours(PolicyConfig(max_sessions=model.max_workers, **fields))


#: "ours (tuned)": one PolicyConfig for every trace, not tuned per trace (why: bench/notes.md).
#: drain_time lets a backlog share sessions (one start-up fewer per ~13 queued units);
#: seconds_per_unit is the unit time it needs, and also turns on pre-warming at its defaults.
TUNED: dict[str, Any] = {"seconds_per_unit": 60.0, "drain_time": 5.0}


@dataclass(frozen=True)
class Policy:
    label: str
    factory: PolicyFactory
    # ours: the acceptance checks apply; feature: compared with DEFAULTS, not checked.
    kind: Literal["ours", "feature", "baseline", "oracle"] = "baseline"


#: The row the feature rows are compared with.
DEFAULTS = "ours"

POLICIES: dict[str, Policy] = {
    DEFAULTS: Policy("ours (defaults)", ours(), "ours"),
    "ours-tuned": Policy("ours (tuned)", ours(**TUNED), "ours"),
    # Issue 8's cost-for-wait features, one row each on top of the defaults.
    "ours+buffer": Policy("ours + buffer_sessions 1", ours(buffer_sessions=1), "feature"),
    "ours+prewarm": Policy(
        "ours + pre-warm (60 s/unit, 10 min)", ours(seconds_per_unit=60, rate_window=600), "feature"
    ),
    "ours+prewarm+lead": Policy(
        "ours + pre-warm with lead_time 180 s",
        ours(seconds_per_unit=60, rate_window=600, lead_time=180),
        "feature",
    ),
    "ours+prewarm+buffer": Policy(
        "ours + pre-warm + buffer 1",
        ours(seconds_per_unit=60, rate_window=600, buffer_sessions=1),
        "feature",
    ),
    "ours+staffing": Policy(
        "ours + square-root staffing (60 s/unit, 10 min, safety 0.6)",
        ours(seconds_per_unit=60, rate_window=600, prewarm_safety=0.6),
        "feature",
    ),
    "keda-scaledobject": Policy(
        "KEDA ScaledObject+HPA", lambda m: KedaScaledObject(m.max_workers, m.seed)
    ),
    "keda-scaledjob": Policy("KEDA ScaledJob default", lambda m: KedaScaledJob("default", m.max_workers)),
    "keda-scaledjob-accurate": Policy(
        "KEDA ScaledJob accurate", lambda m: KedaScaledJob("accurate", m.max_workers)
    ),
    "oracle": Policy("oracle", Oracle, "oracle"),
}
BASELINES = ("keda-scaledobject", "keda-scaledjob", "keda-scaledjob-accurate")
#: Traces where ours must beat every KEDA baseline on both p95 wait and cost.
BOTH_TRACES = ("bursts", "diurnal", "spike")
#: Traces where ours must cost at most ORACLE_MARGIN times the oracle.
ORACLE_TRACES = ("bursts", "diurnal")
#: "Losing no more than 10% on the other".
MARGIN = 1.10
ORACLE_MARGIN = 1.15
#: Closer than this (relative) is a tie, not a win: simulated billing moves by fractions of a
#: second with event order, which is no difference anyone would pay for.
TIE = 0.005


@cache
def built_in(name: str) -> Trace:
    return BUILT_IN[name]()


def as_trace(trace: Trace | str) -> Trace:
    """A trace, or a built-in one by name (built where it runs: cheaper than pickling it)."""
    return built_in(trace) if isinstance(trace, str) else trace


def run_one(job: tuple[Trace | str, str, Model]) -> Result:
    """One (trace, policy name, model) job; a trace named by a string is built here."""
    trace, policy, model = job
    return simulate(as_trace(trace), POLICIES[policy].factory, model, policy)


def run_all(traces: list[Trace | str], policies: list[str], model: Model = MODEL) -> list[Result]:
    """Every policy on every trace, in parallel processes; results in trace, then policy order."""
    jobs = [(trace, policy, model) for trace in traces for policy in policies]
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [run_one(job) for job in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(run_one, jobs))


@dataclass(frozen=True)
class Check:
    trace: str
    policy: str  # a row of kind "ours"
    against: str  # a baseline, or the oracle
    rule: str
    passed: bool
    detail: str


def checks(results: list[Result]) -> list[Check]:
    """The acceptance rules, for each checked row of ours on each trace."""
    found: list[Check] = []
    by_key = {(r.trace, r.policy): r for r in results}
    for (trace, name), result in by_key.items():
        if POLICIES[name].kind != "ours":
            continue
        for baseline in BASELINES:
            other = by_key.get((trace, baseline))
            if other is not None:
                found.append(_against_baseline(result, other, both=trace in BOTH_TRACES))
        oracle = by_key.get((trace, "oracle"))
        if oracle is not None and trace in ORACLE_TRACES:
            ratio = _ratio(result.cost, oracle.cost)
            found.append(
                Check(trace, name, "oracle", f"cost <= {ORACLE_MARGIN:.2f} x oracle",
                      ratio <= ORACLE_MARGIN, f"cost ratio {ratio:.3f}")
            )
    return found


def _against_baseline(ours_: Result, other: Result, both: bool) -> Check:
    wait_ratio = _ratio(ours_.wait_p95, other.wait_p95)
    cost_ratio = _ratio(ours_.cost, other.cost)
    wins_wait, wins_cost = wait_ratio < 1 - TIE, cost_ratio < 1 - TIE
    detail = f"p95 {ours_.wait_p95:.1f} vs {other.wait_p95:.1f} s, cost ratio {cost_ratio:.3f}"
    if both:
        return Check(ours_.trace, ours_.policy, other.policy, "better p95 and cost",
                     wins_wait and wins_cost, detail)
    passed = (wins_wait and cost_ratio <= MARGIN) or (wins_cost and wait_ratio <= MARGIN)
    return Check(ours_.trace, ours_.policy, other.policy,
                 f"better p95 or cost, the other within {MARGIN - 1:.0%}", passed, detail)


def _ratio(value: float, base: float) -> float:
    if base == 0:
        return 1.0 if value == 0 else float("inf")
    return value / base
