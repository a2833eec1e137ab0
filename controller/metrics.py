"""Prometheus metric definitions and the methods the loop and the session pools record through.

Every `Metrics()` owns its own CollectorRegistry (never the global one), so one process or one
test can hold many. Per-scaler metrics carry the label `scaler`; a scaler's counters are created
at zero the first time it records anything, so rate() works from its first scrape.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from controller import __version__
from controller.policy import Decision, Supply
from controller.sources import QueueDepth

#: Depth reads and loop ticks: milliseconds when healthy, up to the source timeout when not.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Request to granted: a warm worker answers in well under a second, a cold start takes minutes.
OPEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 450, 600)

DECISION_ACTIONS = ("scale_up", "scale_down", "none")
#: lost: the session's worker stopped answering (crashed or gone) until its lease ran out.
CLOSE_REASONS = ("closed", "cancelled", "released", "expired", "lost", "shutdown")
KEEPALIVE_RESULTS = ("ok", "gone", "error")


def decision_action(decision: Decision) -> str:
    """scale_up when it opens, scale_down when it cancels or closes, else none."""
    if decision.open > 0:
        return "scale_up"
    if decision.cancel > 0 or decision.close > 0:
        return "scale_down"
    return "none"


class Metrics:
    """The controller's metrics, in their own registry (`.registry`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._scalers: set[str] = set()
        # Each labelled series by (metric, labels): `labels()` validates and locks on every call.
        self._children: dict[tuple[Any, ...], Any] = {}
        Info("vqs_build", "Version of the running controller.", registry=self.registry).info(
            {"version": __version__}
        )
        self.leader = Gauge(
            "vqs_leader", "1 while this replica is the one that acts (always 1 without election).",
            registry=self.registry,
        )
        gauge, counter = self._per_scaler(Gauge), self._per_scaler(Counter)
        histogram = self._per_scaler(Histogram)
        # The loop: what the queue holds, what the policy wants, how the reads go.
        self.queue_waiting = gauge("vqs_queue_waiting", "Units of work waiting, at the last good read.")
        self.queue_in_flight = gauge(
            "vqs_queue_in_flight", "Units of work taken, not yet acked, at the last good read."
        )
        self.target_sessions = gauge("vqs_target_sessions", "Sessions the policy wants.")
        self.sessions_open = gauge("vqs_sessions_open", "Sessions granted and held.")
        self.sessions_opening = gauge("vqs_sessions_opening", "Sessions requested, not yet granted.")
        self.decisions = counter("vqs_decisions_total", "Policy decisions, by action.", "action")
        self.read_errors = counter("vqs_source_read_errors_total", "Queue depth reads that failed.")
        self.read_duration = histogram(
            "vqs_source_read_duration_seconds",
            "Queue depth read time, failed reads included.",
            buckets=FAST_BUCKETS,
        )
        self.loop_duration = histogram("vqs_loop_duration_seconds", "Time of one tick.", buckets=FAST_BUCKETS)
        self.last_read = gauge(
            "vqs_last_successful_read_timestamp_seconds", "Unix time of the last good read."
        )
        self.paused = gauge("vqs_paused", "1 while the scaler's policy is paused.")
        self.source_missing = gauge(
            "vqs_source_missing",
            "1 while a queue reads as empty because what its URL names does not exist (stream, group).",
            "source",
        )
        # The session pools: what sessions cost and how they come and go.
        self.opened = counter("vqs_sessions_opened_total", "Sessions granted.")
        self.closed = counter("vqs_sessions_closed_total", "Sessions ended, by reason.", "reason")
        self.open_failures = counter(
            "vqs_session_open_failures_total", "Failed open attempts (each is retried), by reason.", "reason"
        )
        self.reroutes = counter(
            "vqs_session_reroutes_total",
            "Routes again within an open: a worker refused the session (429 when full, 5xx) or was unreachable.",
        )
        self.endpoint_mismatch = gauge(
            "vqs_endpoint_parameter_mismatch",
            "1 while the endpoint's parameter differs from what sessions-equal-work needs (see `check`).",
            "parameter",
        )
        self.open_duration = histogram(
            "vqs_session_open_duration_seconds", "Request to grant: the cold start.", buckets=OPEN_BUCKETS
        )
        self.keepalives = counter(
            "vqs_keepalives_total", "Session keep-alives and checks, by result.", "result"
        )
        self.vast_errors = counter(
            "vqs_vast_errors_total",
            "Failed Vast calls by operation (open, renew, close, adopt) and cause (timeout, http_503, "
            "connection_refused, ...); each is retried with backoff.",
            "op",
            "reason",
        )
        self.renewals_behind = gauge(
            "vqs_renewals_behind",
            "1 while renewals are so late that leases are at risk: the scaler opens no session until they catch up.",
        )
        self.ledger_writes = counter("vqs_ledger_writes_total", "Session ledger writes (each carries every change since the last).")
        self.adopted = counter("vqs_sessions_adopted_total", "Sessions re-adopted from the ledger at start.")
        self.held_seconds = counter("vqs_session_seconds_total", "Session-seconds held: what the GPUs cost.")
        # What the policy learns (controller/policy_startup.py, policy_wait.py, policy_season.py).
        self.startup = gauge(
            "vqs_startup_seconds", "Measured request-to-grant time of a session, by kind (resume, cold).", "kind"
        )
        self.startup_share = gauge(
            "vqs_startup_share", "Share of opens granted warm (kind=warm) and of start-ups that were cold (kind=cold).", "kind"
        )
        self.startup_lead = gauge("vqs_startup_lead_seconds", "Lead time the policy pre-warms by (80% of start-ups).")
        self.late_share = gauge(
            "vqs_wait_late_share", "With wait_target: share of units that waited past the target, over wait_window."
        )
        self.late_share_aim = gauge(
            "vqs_wait_late_share_aim",
            "With wait_target: the late share the price aims at (the allowed share less a margin for a day's units).",
        )
        self.late_share_allowed = gauge(
            "vqs_wait_late_share_allowed", "With wait_target: the late share the target allows (1 - its quantile)."
        )
        self.wait_price = gauge(
            "vqs_wait_price_seconds", "With wait_target: worker-seconds a late unit is worth, as learned."
        )
        self.spares = gauge("vqs_wait_spare_sessions", "With wait_target: warm spare sessions the policy keeps.")
        self.forecast = gauge("vqs_forecast_units", "With wait_target: work the learned profile expects one lead ahead.")
        self.forecast_weight = gauge("vqs_forecast_weight", "With wait_target: trust in the learned profile (0 to 1).")
        # Request-to-grant seconds not yet handed to the policy, per scaler (bounded).
        self._startups: dict[str, deque[float]] = {}

    def _per_scaler(self, kind: Any) -> Callable[..., Any]:
        """A constructor of `kind` metrics in this registry, labelled by scaler (and `labels`)."""

        def make(name: str, documentation: str, *labels: str, **options: Any) -> Any:
            return kind(name, documentation, ["scaler", *labels], registry=self.registry, **options)

        return make

    def _child(self, metric: Any, scaler: str, *labels: str) -> Any:
        """`metric.labels(scaler, *labels)`, looked up once (and the scaler's series created on first sight)."""
        key = (metric, scaler, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self._scaler(scaler), *labels)
        return child

    def _scaler(self, scaler: str) -> str:
        """Create a scaler's series at zero on first sight."""
        if scaler not in self._scalers:
            self._scalers.add(scaler)
            plain = (self.read_errors, self.opened, self.ledger_writes, self.adopted, self.held_seconds, self.reroutes)
            for counter in plain:
                counter.labels(scaler)
            for labelled, values in (
                (self.decisions, DECISION_ACTIONS),
                (self.closed, CLOSE_REASONS),
                (self.keepalives, KEEPALIVE_RESULTS),
            ):
                for value in values:
                    labelled.labels(scaler, value)
            self.paused.labels(scaler)
            self.renewals_behind.labels(scaler)
        return scaler

    def set_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    # -- the loop ------------------------------------------------------------------------------

    def record_read(self, scaler: str, depth: QueueDepth | None, seconds: float, now: float) -> None:
        """One depth read; `depth=None` is a failed read (the queue gauges keep their last value)."""
        self._child(self.read_duration, scaler).observe(seconds)
        if depth is None:
            self._child(self.read_errors, scaler).inc()
            return
        self._child(self.queue_waiting, scaler).set(depth.waiting)
        self._child(self.queue_in_flight, scaler).set(depth.in_flight)
        self._child(self.last_read, scaler).set(now)

    def set_source_missing(self, scaler: str, source: str, missing: bool) -> None:
        self._child(self.source_missing, scaler, source).set(1 if missing else 0)

    def record_decision(self, scaler: str, decision: Decision) -> None:
        self._child(self.target_sessions, scaler).set(decision.target)
        self._child(self.decisions, scaler, decision_action(decision)).inc()
        learned = decision.state.learned
        if learned.startup.measured:
            self._child(self.startup, scaler, "resume").set(learned.startup.resume)
            self._child(self.startup, scaler, "cold").set(learned.startup.cold)
            self._child(self.startup_share, scaler, "warm").set(learned.startup.warm_share)
            self._child(self.startup_share, scaler, "cold").set(learned.startup.cold_share)
            self._child(self.startup_lead, scaler).set(learned.startup.lead)
        terms = dict(decision.terms)
        if learned.wait is not None:
            self._child(self.late_share, scaler).set(learned.wait.late_share)
            self._child(self.wait_price, scaler).set(learned.wait.price)
            if learned.wait.aim is not None:
                self._child(self.late_share_aim, scaler).set(learned.wait.aim)
            if "allowed" in terms:
                self._child(self.late_share_allowed, scaler).set(terms["allowed"])
            self._child(self.spares, scaler).set(terms.get("spares", 0))
        if "forecast" in terms:
            self._child(self.forecast, scaler).set(terms["forecast"])
            self._child(self.forecast_weight, scaler).set(terms["forecast_weight"])

    def watch_supply(self, scaler: str, supply: Callable[[], Supply] | None) -> None:
        """Read the sessions gauges from the pool at scrape time (None: the pool is gone, 0)."""
        read = supply or (lambda: Supply(0, 0))
        self._child(self.sessions_open, scaler).set_function(lambda: read().open)
        self._child(self.sessions_opening, scaler).set_function(lambda: read().opening)

    def record_loop(self, scaler: str, seconds: float) -> None:
        self._child(self.loop_duration, scaler).observe(seconds)

    def set_paused(self, scaler: str, paused: bool) -> None:
        self._child(self.paused, scaler).set(1 if paused else 0)

    # -- the session pools ---------------------------------------------------------------------

    def session_opened(self, scaler: str, seconds: float) -> None:
        """A session was granted `seconds` after it was requested (also kept for the policy)."""
        self._child(self.opened, scaler).inc()
        self._child(self.open_duration, scaler).observe(seconds)
        self._startups.setdefault(scaler, deque(maxlen=256)).append(seconds)

    def take_startups(self, scaler: str) -> tuple[float, ...]:
        """The request-to-grant seconds recorded since the last call: the measured start-ups."""
        recorded = self._startups.get(scaler)
        if not recorded:
            return ()
        taken = tuple(recorded)
        recorded.clear()
        return taken

    def session_closed(self, scaler: str, reason: str) -> None:
        self._child(self.closed, scaler, reason).inc()

    def session_open_failed(self, scaler: str, reason: str) -> None:
        self._child(self.open_failures, scaler, reason).inc()

    def session_rerouted(self, scaler: str) -> None:
        self._child(self.reroutes, scaler).inc()

    def endpoint_parameters(self, scaler: str, mismatched: dict[str, bool]) -> None:
        """Per checked parameter: whether it differs from the recommended value."""
        self._scaler(scaler)
        for parameter, differs in mismatched.items():
            self._child(self.endpoint_mismatch, scaler, parameter).set(1 if differs else 0)

    def keepalive(self, scaler: str, result: str) -> None:
        self._child(self.keepalives, scaler, result).inc()

    def vast_error(self, scaler: str, op: str, reason: str) -> None:
        self._child(self.vast_errors, scaler, op, reason).inc()

    def set_renewals_behind(self, scaler: str, behind: bool) -> None:
        self._child(self.renewals_behind, scaler).set(1 if behind else 0)

    def ledger_written(self, scaler: str) -> None:
        self._child(self.ledger_writes, scaler).inc()

    def sessions_adopted(self, scaler: str, n: int) -> None:
        self._child(self.adopted, scaler).inc(n)

    def session_seconds(self, scaler: str, seconds: float) -> None:
        # A wall clock stepping back yields a negative span; a counter must never go down.
        self._child(self.held_seconds, scaler).inc(max(0.0, seconds))
