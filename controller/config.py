"""The settings models and their rules (bounds, relations); config_load.py fills them from YAML and the environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from controller.config_types import (
    NAME_RULE,
    PRODUCTION_AUTOSCALER_URL,
    PRODUCTION_WEBSERVER_URL,
    Duration,
    HttpURL,
    LogLevel,
    RedisURL,
    ScalerName,
    SourceURL,
    StateURL,
    parse_duration,
    split_ledger_prefix,
)
from controller.masking import redact

#: Upper bounds of every value that spends money or time: a typo (or an infinity) must not
#: hold sessions for ever, poll once a week, or let a crash leave GPUs reserved for days.
HOUR, DAY = 3600.0, 86400.0
MAX_COUNT = 10_000  # sessions, units, reserves
MAX_CONCURRENT = 1_000
MAX_POLL_INTERVAL = 300.0
MAX_DOLLARS_PER_HOUR = 1_000_000.0
MAX_COST_UNITS = 1_000_000

#: act: apply decisions; advise: decide and record only (a dry run).
Mode = Literal["act", "advise"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: The most bins a forecast profile may have: a week of 10-second bins.
MAX_FORECAST_BINS = 60480


_QUANTILE_KEY = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")
_WAIT_TARGET_FORM = "a quantile and a duration, e.g. {p95: 15s}, 'p95 15s' or {quantile: 0.95, seconds: 15}"


class WaitTarget(_Strict):
    """A wait to meet: this quantile of units starts within this many seconds of arriving."""

    model_config = ConfigDict(json_schema_extra={"description": f"{_WAIT_TARGET_FORM}"})

    quantile: float = Field(gt=0, lt=1, description="share of units that must start within `seconds`, e.g. 0.95")
    seconds: Duration = Field(gt=0, le=DAY, description="the wait those units must not exceed")

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        # {p95: 15s} and 'p95 15s' (or 'p95: 15s') are the forms a person writes.
        if isinstance(data, str):
            parts = data.replace(":", " ").split()
            if len(parts) != 2:
                raise ValueError(f"expected {_WAIT_TARGET_FORM}, got {data!r}")
            data = {parts[0]: parts[1]}
        if isinstance(data, dict) and len(data) == 1:
            (key, value), = data.items()
            match = _QUANTILE_KEY.match(str(key))
            if match is None and key not in ("quantile", "seconds"):
                raise ValueError(f"expected {_WAIT_TARGET_FORM}, got key {key!r}")
            if match is not None:
                percent = float(match.group(1))
                if not 0 < percent < 100:
                    raise ValueError(f"{key}: the percentile must be between 0 and 100 exclusive")
                return {"quantile": percent / 100, "seconds": value}
        return data

    def __str__(self) -> str:
        return f"p{self.quantile * 100:g} {self.seconds:g}s"


class PolicyConfig(_Strict):
    """How many sessions a scaler wants for a queue depth (see controller/policy.py)."""

    work_per_session: int = Field(1, ge=1, le=MAX_COUNT, description="units of work one session serves")
    min_sessions: int = Field(0, ge=0, le=MAX_COUNT, description="floor while the source reads fine")
    max_sessions: int = Field(20, ge=1, le=MAX_COUNT, description="hard cap on open + opening sessions")
    activation: int = Field(
        1, ge=1, le=MAX_COUNT, description="units of work (waiting + in flight) that wake a scaler at zero"
    )
    max_opens_per_tick: int = Field(20, ge=1, le=MAX_COUNT, description="scale-up step per tick")
    scale_down_delay: Duration = Field(
        10.0, le=HOUR, description="target is the max over this window before sessions are closed"
    )
    error_hold: Duration = Field(
        60.0, le=DAY, description="after a failed read, hold the current count this long"
    )
    fallback_sessions: int | None = Field(
        None, ge=0, le=MAX_COUNT, description="sessions to keep once error_hold has passed (unset: keep holding)"
    )
    max_cost_per_hour: float | None = Field(None, gt=0, le=MAX_DOLLARS_PER_HOUR, description="budget cap, $/hour")
    price_per_session_hour: float | None = Field(
        None, gt=0, le=MAX_DOLLARS_PER_HOUR, description="$/hour one session costs; needed with max_cost_per_hour"
    )
    paused: bool = Field(False, description="freeze the session count (at start and on SIGHUP; the admin API changes it at runtime)")
    mode: Mode = Field(
        "act",
        description="act: apply decisions; advise: decide and record only, a dry run (at start and on SIGHUP; "
        "the admin API changes it at runtime)",
    )
    buffer_sessions: int = Field(
        0,
        ge=0,
        le=MAX_COUNT, description="extra sessions while there is work, kept for scale_down_delay after it (none at idle)",
    )
    seconds_per_unit: Duration | None = Field(
        None,
        gt=0,
        le=DAY, description="mean seconds one session spends on one unit; pre-warms for the arrival rate: "
        "target >= ceil(rate x seconds_per_unit / work_per_session)",
    )
    prewarm_safety: float = Field(
        0.0,
        ge=0,
        le=10, description="with seconds_per_unit: square-root staffing, pre-warming asks for load + "
        "prewarm_safety x sqrt(load) units' sessions, load = rate x seconds_per_unit (0.5 to 1 is usual)",
    )
    lead_time: Duration = Field(
        0.0,
        le=HOUR, description="expected session start-up; target also covers the work expected to arrive "
        "within it: ceil((total + rate x lead_time) / work_per_session)",
    )
    rate_window: Duration = Field(
        60.0,
        gt=0,
        le=DAY, description="time constant of the arrival-rate average (with seconds_per_unit or lead_time); "
        "never shorter than seconds_per_unit",
    )
    drain_time: Duration | None = Field(
        None,
        gt=0,
        le=DAY, description="with seconds_per_unit: a backlog shares sessions, at most ceil(total x "
        "seconds_per_unit / (seconds_per_unit + drain_time) / work_per_session) for the work, so it "
        "clears about drain_time later with fewer session starts",
    )
    max_wait: Duration | None = Field(
        None,
        gt=0,
        le=DAY, description="when the oldest waiting unit has waited longer (sources that report ages): a "
        "session per waiting unit on top of the open ones, and no scaling down",
    )
    boot_grace: Duration = Field(
        0.0, le=HOUR, description="a session granted less than this long ago is never closed"
    )
    wait_target: WaitTarget | None = Field(
        None,
        description="the wait to meet at the least cost, e.g. {p95: 15s}: warm spares sized by a "
        "queueing model from the arrival rate and the measured start-up times, its price of a late "
        "unit corrected by the waits seen over wait_window (unset: off)",
    )
    wait_window: Duration = Field(
        3600.0, gt=0, le=7 * DAY, description="with wait_target: the window of observed waits that corrects the model"
    )
    forecast: bool = Field(
        True,
        description="with wait_target: learn the recurring arrival profile (kept in the state store) "
        "and pre-warm one measured start-up ahead of forecast work",
    )
    forecast_period: Duration = Field(
        86400.0, gt=0, le=7 * DAY, description="with forecast: the period that repeats: 24h (default), or 168h for a week"
    )
    forecast_step: Duration = Field(
        10.0, gt=0, le=HOUR, description="with forecast: width of one bin of the profile (period / step bins)"
    )
    forecast_max_sessions: int | None = Field(
        None,
        ge=0,
        le=MAX_COUNT,
        description="with forecast: at most this many sessions beyond what the work asks for now "
        "(unset: max_sessions)",
    )
    forecast_max_cost_per_hour: float | None = Field(
        None,
        gt=0,
        le=MAX_DOLLARS_PER_HOUR,
        description="with forecast: $/hour the forecast sessions may cost at most (needs price_per_session_hour)",
    )

    @model_validator(mode="after")
    def _check_relations(self) -> PolicyConfig:
        if self.max_sessions < self.min_sessions:
            raise ValueError(f"max_sessions: must be >= min_sessions ({self.min_sessions})")
        if self.max_cost_per_hour is not None and self.price_per_session_hour is None:
            raise ValueError("price_per_session_hour: required when max_cost_per_hour is set")
        if "rate_window" in self.model_fields_set and not self.estimates_rate:
            raise ValueError("rate_window: only used with seconds_per_unit or lead_time")
        if self.drain_time is not None and self.seconds_per_unit is None:
            raise ValueError("drain_time: needs seconds_per_unit (how long one unit takes)")
        if self.prewarm_safety and self.seconds_per_unit is None:
            raise ValueError("prewarm_safety: needs seconds_per_unit (pre-warming is off without it)")
        waits = {"wait_window", "forecast", "forecast_period", "forecast_step", "forecast_max_sessions",
                 "forecast_max_cost_per_hour"}  # fmt: skip
        unused = sorted(waits & self.model_fields_set) if self.wait_target is None else []
        if unused:
            raise ValueError(f"{unused[0]}: only used with wait_target (e.g. wait_target: {{p95: 15s}})")
        steps = self.forecast_period / self.forecast_step
        if abs(steps - round(steps)) > 1e-9 or not 1 <= round(steps) <= MAX_FORECAST_BINS:
            raise ValueError(
                f"forecast_step: must divide forecast_period ({self.forecast_period:g}s) into 1 to "
                f"{MAX_FORECAST_BINS} bins, got {self.forecast_step:g}s"
            )
        if self.forecast_max_cost_per_hour is not None and self.price_per_session_hour is None:
            raise ValueError("price_per_session_hour: required when forecast_max_cost_per_hour is set")
        return self

    @property
    def estimates_rate(self) -> bool:
        """Whether the policy tracks the arrival rate (pre-warming is on)."""
        return self.seconds_per_unit is not None or self.lead_time > 0


class SessionConfig(_Strict):
    """How the scaler opens, keeps and ends its Vast sessions (see controller/sessions.py)."""

    lease_seconds: Duration = Field(
        60.0, ge=10, le=HOUR, description="session lifetime, renewed while wanted; bounds leaked GPU time"
    )
    session_cost: int = Field(100, gt=0, le=MAX_COST_UNITS, description="cost units each session asks the endpoint for")
    open_timeout: Duration = Field(
        600.0, gt=0, le=HOUR, description="how long one open waits for a worker before it fails"
    )
    max_concurrent_opens: int = Field(16, ge=1, le=MAX_CONCURRENT, description="opens in progress at once, per endpoint")
    callback_url: HttpURL | None = Field(
        None,
        description="http(s) URL of this controller's HTTP server for on_close_route callbacks "
        "(unset: releases are found by polling)",
    )
    on_shutdown: Literal["release", "keep"] = Field(
        "release", description="release: close every session on exit; keep: let leases expire"
    )
    reservation: Literal["session", "reserve"] = Field(
        "session", description="session: Vast sessions; reserve: the legacy held POST /reserve"
    )
    reserve_duration: Duration = Field(
        3600.0, gt=0, le=DAY, description="longest one reservation is held (reservation: reserve)"
    )


class SourceSpec(_Strict):
    """One queue of a scaler with several (`sources:`)."""

    url: SourceURL = Field(description="queue source URL, as for `source`")
    name: str | None = Field(None, min_length=1, description="label in logs and /decisions (unset: the URL)")
    weight: float = Field(1.0, gt=0, le=1000, description="each unit of this queue counts this many times")
    reserve: int = Field(
        0, ge=0, le=MAX_COUNT, description="sessions held for this queue's work when max_sessions or the budget caps the total"
    )

    @property
    def label(self) -> str:
        return self.name or redact(self.url)


class ScalerConfig(_Strict):
    """One queue source (or several) + one Vast endpoint + one policy."""

    name: ScalerName = Field(description=f"the scaler's name: {NAME_RULE}")
    source: SourceURL | None = Field(
        None, description="queue source URL (redis://, rediss://, sqs://, https://sqs..., nats://)"
    )
    sources: list[SourceSpec] | None = Field(
        None, min_length=1, description="several queues instead of `source`, each with a weight and a reserve"
    )
    endpoint: str = Field(min_length=1, description="name of the Vast Serverless endpoint")
    poll_interval: Duration = Field(1.0, gt=0, le=MAX_POLL_INTERVAL, description="time between depth reads")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="scaling rules")
    session: SessionConfig = Field(default_factory=SessionConfig, description="session handling")

    @model_validator(mode="after")
    def _one_source_form(self) -> ScalerConfig:
        if (self.source is None) == (self.sources is None):
            raise ValueError("source: set exactly one of source (one queue) or sources (a list)")
        labels = [spec.label for spec in self.sources or ()]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"sources: names must be unique, {', '.join(duplicates)} repeats")
        reserved = sum(spec.reserve for spec in self.sources or ())
        if reserved > self.policy.max_sessions:
            raise ValueError(
                f"sources: reserves add up to {reserved}, more than policy.max_sessions ({self.policy.max_sessions})"
            )
        return self

    @property
    def source_specs(self) -> list[SourceSpec]:
        """Every queue of this scaler (one for `source:`)."""
        return self.sources if self.sources is not None else [SourceSpec(url=self.source or "")]


def _api_key_optional_in_schema(schema: dict[str, Any]) -> None:
    # api_key may come from api_key_file or VAST_API_KEY instead.
    schema["required"] = [r for r in schema.get("required", []) if r != "api_key"]


class VastConfig(_Strict):
    """The Vast account and where its API lives."""

    model_config = ConfigDict(json_schema_extra=_api_key_optional_in_schema)

    api_key: SecretStr = Field(
        description="Vast account API key (or api_key_file, or the VAST_API_KEY variable)"
    )
    api_key_file: Path | None = Field(
        None, description="file holding the API key (read at start, whitespace stripped)"
    )
    url: HttpURL | None = Field(
        None,
        description="one base URL for Vast's web API and autoscaler, e.g. the local emulator "
        "http://127.0.0.1:8080 (unset: production)",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_api_key_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        key, key_file = data.get("api_key"), data.get("api_key_file")
        if key is not None and key_file is not None:
            raise ValueError("api_key: set either api_key or api_key_file, not both")
        if key_file is not None:
            return {**data, "api_key": _read_secret_file(key_file)}
        if key is None:
            raise ValueError(
                "api_key: required: set vast.api_key, vast.api_key_file, "
                "or the VAST_API_KEY environment variable"
            )
        if isinstance(key, str) and not key.strip():
            raise ValueError("api_key: must not be empty")
        return data

    @property
    def webserver_url(self) -> str:
        return self.url or PRODUCTION_WEBSERVER_URL

    @property
    def autoscaler_url(self) -> str:
        return self.url or PRODUCTION_AUTOSCALER_URL


def _read_secret_file(path: object, field: str = "api_key_file") -> str:
    try:
        text = Path(str(path)).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{field}: {path} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{field}: {path} is empty")
    return text


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
#: Fields that mean something for one kind of election only.
_LEADER_FIELDS_OF_KIND = {"url": "redis", "key": "redis", "name": "kubernetes", "namespace": "kubernetes"}


class LeaderConfig(_Strict):
    """Which replica acts when several run the same config (see controller/leader.py)."""

    kind: Literal["none", "redis", "kubernetes"] = Field(
        "none",
        description="none: this process always acts (one replica); redis: a lease in Redis; "
        "kubernetes: a coordination.k8s.io/v1 Lease",
    )
    url: RedisURL | None = Field(None, description="Redis URL that holds the lease (kind: redis)")
    key: str = Field(
        "vast-queue-scaler:leader",
        min_length=1,
        description="Redis key of the lease (kind: redis); its fencing counter is KEY:fence",
    )
    name: str = Field(
        "vast-queue-scaler", description="name of the Lease object (kind: kubernetes)"
    )
    namespace: str | None = Field(
        None, description="namespace of the Lease (kind: kubernetes; unset: the pod's own namespace)"
    )
    lease_seconds: Duration = Field(
        15.0, ge=1, le=HOUR, description="a leader that stops renewing is replaced within this"
    )
    renew_every: Duration | None = Field(
        None, gt=0, le=HOUR, description="time between renewals, at most lease_seconds / 2 (unset: lease_seconds / 3)"
    )
    identity: str | None = Field(
        None, min_length=1, description="this replica's name in the lease (unset: HOSTNAME-PID)"
    )

    @model_validator(mode="after")
    def _check_kind(self) -> LeaderConfig:
        problems = [
            f"{field}: only used with kind: {kind}"
            for field, kind in _LEADER_FIELDS_OF_KIND.items()
            if field in self.model_fields_set and self.kind != kind
        ]
        if self.kind == "redis" and self.url is None:
            problems.append("url: required with kind: redis, e.g. redis://127.0.0.1:6379/0")
        if self.kind == "kubernetes":
            for field in ("name", "namespace"):
                value = getattr(self, field)
                if value is not None and (len(value) > 253 or not _K8S_NAME.fullmatch(value)):
                    problems.append(
                        f"{field}: must be a Kubernetes name (lowercase letters, digits, '-' and '.'), "
                        f"got {value!r}"
                    )
            if not float(self.lease_seconds).is_integer():
                problems.append("lease_seconds: must be whole seconds with kind: kubernetes")
        if self.renew_every is not None and self.renew_every > self.lease_seconds / 2:
            problems.append(
                f"renew_every: must be at most half of lease_seconds ({self.lease_seconds / 2:g}s), "
                "so a failed renewal is retried before the lease runs out"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def renew_interval(self) -> float:
        return self.renew_every if self.renew_every is not None else self.lease_seconds / 3


#: Shortest admin_token accepted.
ADMIN_TOKEN_MIN_LENGTH = 16


def _vast_optional_in_schema(schema: dict[str, Any]) -> None:
    # A file needs no vast: block when VAST_API_KEY is set.
    schema["required"] = [r for r in schema.get("required", []) if r != "vast"]


class Config(BaseSettings):
    """The whole controller: its scalers, the Vast account, and where it serves metrics.

    `load_config()` layers the file, environment and flags; the model itself validates exactly
    what it is given (its env settings drive the loader's EnvSettingsSource).
    """

    model_config = SettingsConfigDict(
        env_prefix="VQS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        json_schema_extra=_vast_optional_in_schema,
    )

    scalers: list[ScalerConfig] = Field(
        min_length=1, description="the scalers this controller runs (names unique)"
    )
    vast: VastConfig = Field(description="the Vast account")
    metrics_port: int = Field(9464, ge=1, le=65535, description="port of the HTTP server")
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="address the HTTP server binds (0.0.0.0: all)"
    )
    state_dir: Path = Field(Path("state"), description="directory of the session ledger")
    state_url: StateURL | None = Field(
        None,
        description="Redis URL of the session ledger instead of state_dir, so a new leader adopts "
        "the sessions (?prefix=NAME: key prefix, default vast-queue-scaler)",
    )
    leader: LeaderConfig = Field(
        default_factory=LeaderConfig, description="leader election between replicas"
    )
    log_level: LogLevel = Field("info", description="debug, info, warning, error or critical")
    log_format: Literal["json", "text"] = Field("text", description="json: one object per line")
    admin_token: SecretStr | None = Field(
        None,
        description="bearer token for the admin API's changes (pause, resume, mode; "
        f"at least {ADMIN_TOKEN_MIN_LENGTH} characters); unset: those routes answer 403",
    )
    admin_token_file: Path | None = Field(
        None, description="file holding admin_token (read at start, whitespace stripped)"
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _read_admin_token_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        token, token_file = data.get("admin_token"), data.get("admin_token_file")
        if token is not None and token_file is not None:
            raise ValueError("admin_token: set either admin_token or admin_token_file, not both")
        if token_file is not None:
            token = _read_secret_file(token_file, "admin_token_file")
            data = {**data, "admin_token": token}
        # Whoever holds the token can stop the scaling: a guessable one is refused.
        if isinstance(token, str) and len(token.strip()) < ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(
                f"admin_token: must be at least {ADMIN_TOKEN_MIN_LENGTH} characters, "
                "e.g. the output of `openssl rand -hex 32`"
            )
        return data

    @model_validator(mode="after")
    def _check_unique_names(self) -> Config:
        first: dict[str, int] = {}
        problems = []
        for index, scaler in enumerate(self.scalers):
            if scaler.name in first:
                problems.append(
                    f"scalers[{index}].name: duplicate name {scaler.name!r} "
                    f"(also scalers[{first[scaler.name]}])"
                )
            first.setdefault(scaler.name, index)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _check_state(self) -> Config:
        if self.state_url is not None and "state_dir" in self.model_fields_set:
            raise ValueError("state_dir: set either state_dir or state_url, not both")
        if self.leader.kind != "none" and self.state_url is None:
            raise ValueError(
                f"state_url: required with leader.kind: {self.leader.kind}, so a new leader can "
                "adopt the sessions the old one opened; set state_url: redis://..."
            )
        return self


_BOUND_KEYWORDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, every field's bounds included."""
    return _standard_bounds(Config.model_json_schema())


def _standard_bounds(node: Any) -> Any:
    """pydantic writes an optional field's bounds as `ge`/`le`... beside its anyOf: move them
    into the numeric branches as JSON Schema's own keywords."""
    if isinstance(node, list):
        return [_standard_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    bounds = {_BOUND_KEYWORDS[key]: node[key] for key in _BOUND_KEYWORDS if key in node}
    node = {key: _standard_bounds(value) for key, value in node.items() if key not in _BOUND_KEYWORDS}
    if bounds:
        for branch in _numeric_branches(node):
            branch.update(bounds)
    return node


def _numeric_branches(node: dict[str, Any]) -> list[dict[str, Any]]:
    if node.get("type") in ("number", "integer"):
        return [node]
    return [found for branch in node.get("anyOf", []) for found in _numeric_branches(branch)]


__all__ = [
    "Config",
    "Duration",
    "LeaderConfig",
    "PolicyConfig",
    "ScalerConfig",
    "SessionConfig",
    "VastConfig",
    "WaitTarget",
    "json_schema",
    "parse_duration",
    "split_ledger_prefix",
]
