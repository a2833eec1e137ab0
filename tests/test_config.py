"""Config loading: YAML, environment overrides, the env-only form, and errors with paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.child import clean_environment
from controller.config import PRODUCTION_AUTOSCALER_URL, PRODUCTION_WEBSERVER_URL, Config, parse_duration
from controller.config_load import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "controller"]
SECRET = "sk-vast-0123456789abcdef"
MINIMAL = """
vast: {{api_key: {key}}}
scalers:
  - name: orders
    source: "redis://127.0.0.1:6379/0?list=orders"
    endpoint: ep
{extra}"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("VQS_", "VAST_API_KEY")):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(tmp_path: Path, extra: str = "", key: str = SECRET) -> Path:
    return write(tmp_path, MINIMAL.format(key=key, extra=extra))


def problems(path: Path | None = None, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value.problems


# --- YAML files ---------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted((ROOT / "deploy/examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", SECRET)
    config = load_config(example)
    assert config.scalers
    assert config.vast.api_key.get_secret_value() == SECRET


def test_defaults(tmp_path: Path) -> None:
    config = load_config(minimal(tmp_path))
    scaler = config.scalers[0]
    assert (config.metrics_port, config.metrics_host, config.state_dir) == (9464, "127.0.0.1", Path("state"))
    assert (config.log_level, config.log_format) == ("info", "text")
    assert scaler.poll_interval == 1.0
    session = scaler.session
    assert (session.lease_seconds, session.session_cost, session.open_timeout) == (60, 100, 600)
    assert (session.max_concurrent_opens, session.callback_url) == (16, None)
    assert (session.on_shutdown, session.reservation, session.reserve_duration) == ("release", "session", 3600)
    assert config.vast.webserver_url == PRODUCTION_WEBSERVER_URL
    assert config.vast.autoscaler_url == PRODUCTION_AUTOSCALER_URL


def test_vast_url_serves_both_apis(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.format(key=SECRET, extra="").replace(
        "vast: {api_key", "vast: {url: 'http://127.0.0.1:8080/', api_key"))
    vast = load_config(path).vast
    assert vast.webserver_url == vast.autoscaler_url == "http://127.0.0.1:8080"


def test_many_mistakes_are_all_reported_with_paths(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
vast: {{api_key: {SECRET}}}
log_format: xml
scalers:
  - name: orders
    source: "redis://127.0.0.1:6379/0?list=orders"
    endpoint: ep
    policy: {{min_sessions: 5, max_sessions: 2}}
  - name: Bad--Name-
    source: "redis://127.0.0.1:6379/0?list=x"
    endpoint: ep
    polcy: {{}}
    session: {{lease_seconds: 5s, on_shutdown: maybe}}
""")
    found = problems(path)
    expected = [
        "scalers[0].policy.max_sessions: must be >= min_sessions (5)",
        "scalers[1].name: must be 3-63 characters",
        "scalers[1].polcy: unknown key; did you mean 'policy'?",
        "scalers[1].session.lease_seconds: must be >= 10",
        "scalers[1].session.on_shutdown: Input should be 'release' or 'keep'",
        "log_format: Input should be 'json' or 'text'",
    ]
    for start in expected:
        assert any(p.startswith(start) for p in found), (start, found)
    assert len(found) == len(expected)
    assert "[line 8]" in next(p for p in found if p.startswith("scalers[0].policy"))


def test_cli_prints_every_mistake_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
vast: {{api_key: {SECRET}, url: ftp://nowhere}}
metrics_port: 99999
scalers:
  - name: x
    source: "redis://:hunter2@127.0.0.1:6379/0?list=orders"
    endpoint: ""
    poll_interval: soon
""")
    result = subprocess.run(
        [*CLI, "check", "--config", str(path)], capture_output=True, text=True, env=clean_environment(), timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"vast-queue-scaler: error: invalid configuration in {path} (5 problems):"
    for prefix in ("vast.url:", "metrics_port: must be <= 65535", "scalers[0].name:",
                   "scalers[0].endpoint:", "scalers[0].poll_interval:"):
        assert any(line.strip().startswith(prefix) for line in lines[1:]), (prefix, lines)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert SECRET not in result.stderr and "hunter2" not in result.stderr


def test_duplicate_names(tmp_path: Path) -> None:
    scaler = '  - {name: same, source: "redis://127.0.0.1:6379/0?list=a", endpoint: ep}\n'
    path = write(tmp_path, f"vast: {{api_key: k}}\nscalers:\n{scaler * 3}")
    assert problems(path) == [
        "scalers[1].name: duplicate name 'same' (also scalers[0]) [line 4]",
        "scalers[2].name: duplicate name 'same' (also scalers[0]) [line 5]",
    ]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"vast:\n  api_key: {SECRET}: oops\nscalers: []\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:2:") and SECRET not in problem


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = minimal(tmp_path, extra="metrics_port: 1\nmetrics_port: 2\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:") and "duplicate key 'metrics_port'" in problem


@pytest.mark.parametrize("text", ["- a\n- b\n", "just words\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "expected a mapping of settings" in problems(write(tmp_path, text))[0]


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"cannot read {tmp_path / 'nope.yaml'}: No such file or directory"]


def test_no_configuration_at_all_says_how_to_give_one() -> None:
    assert problems(None)[0] == (
        "scalers: required: pass --config FILE, set VQS_CONFIG=FILE, "
        "or set VQS_SOURCE and VQS_ENDPOINT for a single scaler"
    )


# --- secrets ------------------------------------------------------------------------------


def test_api_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    key_file = write(tmp_path, f"\n  {SECRET}\n", name="key")
    path = write(tmp_path, MINIMAL.format(key=SECRET, extra="").replace(
        f"api_key: {SECRET}", f"api_key_file: {key_file}"))
    assert load_config(path).vast.api_key.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("vast", "expected"),
    [
        ("{api_key: a, api_key_file: /etc/hostname}", "vast.api_key: set either api_key or api_key_file, not both"),
        ("{api_key_file: /nonexistent/key}", "vast.api_key_file: cannot read /nonexistent/key: No such file or directory"),
        ("{}", "vast.api_key: required: set vast.api_key, vast.api_key_file, or the VAST_API_KEY"),
        ("{api_key: ' '}", "vast.api_key: must not be empty"),
    ],
)
def test_api_key_rules(tmp_path: Path, vast: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL.format(key="k", extra="").replace("vast: {api_key: k}", f"vast: {vast}"))
    [problem] = problems(path)
    assert problem.startswith(expected), problem


def test_empty_api_key_file(tmp_path: Path) -> None:
    key_file = write(tmp_path, " \n", name="key")
    path = write(tmp_path, MINIMAL.format(key="k", extra="").replace("api_key: k", f"api_key_file: {key_file}"))
    assert problems(path)[0].startswith(f"vast.api_key_file: {key_file} is empty")


def test_vast_api_key_variable_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "from-env")
    assert load_config(minimal(tmp_path, key="from-file")).vast.api_key.get_secret_value() == "from-file"
    path = write(tmp_path, MINIMAL.format(key="x", extra="").replace("vast: {api_key: x}\n", ""))
    assert load_config(path).vast.api_key.get_secret_value() == "from-env"


def test_secrets_never_appear_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQS_VAST__URL", f"http://user:{SECRET}@")
    monkeypatch.setenv("VQS_METRICS_PORT", "not-a-port")
    path = write(tmp_path, f"""
vast: {{api_key: [{SECRET}]}}
scalers:
  - name: orders
    source: "nats://user:{SECRET}@"
    endpoint: ep
    session: {{callback_url: "https://u:{SECRET}@/x"}}
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert len(info.value.problems) >= 3
    assert SECRET not in text and "***" in text
    assert "vast.api_key: Input should be a valid string" in text


def test_config_repr_hides_the_key(tmp_path: Path) -> None:
    config = load_config(minimal(tmp_path))
    assert SECRET not in repr(config) and SECRET not in str(config.model_dump())


# --- environment --------------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = minimal(tmp_path, extra="metrics_port: 1000\n")
    monkeypatch.setenv("VQS_CONFIG", str(path))
    monkeypatch.setenv("VQS_METRICS_PORT", "9500")
    monkeypatch.setenv("VQS_VAST__URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("VQS_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("VQS_SCALERS__0__POLICY__MAX_SESSIONS", "5")
    monkeypatch.setenv("VQS_SCALERS__0__SESSION__LEASE_SECONDS", "2m")
    config = load_config(None)
    assert (config.metrics_port, config.vast.url, config.log_level) == (9500, "http://127.0.0.1:8080", "debug")
    scaler = config.scalers[0]
    assert (scaler.name, scaler.policy.max_sessions, scaler.session.lease_seconds) == ("orders", 5, 120.0)
    assert load_config(None, metrics_port=7000).metrics_port == 7000


def test_environment_error_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQS_SCALERS__0__POLICY__MAX_SESSIONS", "lots")
    monkeypatch.setenv("VQS_SCALERS__3__ENDPOINT", "x")
    found = problems(minimal(tmp_path))
    assert "scalers[3]: no such entry to override (there are 1)" in found
    assert any(p.startswith("scalers[0].policy.max_sessions: Input should be a valid integer")
               and p.endswith("[from VQS_SCALERS__0__POLICY__MAX_SESSIONS]") for p in found), found


def test_unknown_variables_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQS_METRIC_PORT", "1")
    monkeypatch.setenv("VQS_MAX_SESSIONS", "3")
    assert problems(minimal(tmp_path)) == [
        "VQS_MAX_SESSIONS: only read without a config file; "
        "to override a scaler in the file use VQS_SCALERS__<index>__POLICY__MAX_SESSIONS",
        "VQS_METRIC_PORT: unknown setting (did you mean VQS_METRICS_PORT?)",
    ]


def test_scalers_from_indexed_variables_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAST_API_KEY", "k")
    for index, name in enumerate(["first", "second"]):
        monkeypatch.setenv(f"VQS_SCALERS__{index}__NAME", name)
        monkeypatch.setenv(f"VQS_SCALERS__{index}__SOURCE", "redis://127.0.0.1:6379/0?list=a")
        monkeypatch.setenv(f"VQS_SCALERS__{index}__ENDPOINT", f"ep-{name}")
    assert [(s.name, s.endpoint) for s in load_config(None).scalers] == [("first", "ep-first"), ("second", "ep-second")]
    monkeypatch.setenv("VQS_SCALERS", "[{not json")
    assert problems(None) == ["VQS_SCALERS: expected a JSON value"]


def test_env_only_single_scaler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {
        "VQS_SOURCE": "redis://127.0.0.1:6379/0?stream=s&group=g",
        "VQS_ENDPOINT": "my-endpoint",
        "VAST_API_KEY": SECRET,
        "VQS_VAST_URL": "http://127.0.0.1:8080",
        "VQS_MAX_SESSIONS": "5",
        "VQS_POLL_INTERVAL": "250ms",
        "VQS_LEASE_SECONDS": "30",
        "VQS_SCALE_DOWN_DELAY": "30s",
        "VQS_ON_SHUTDOWN": "keep",
        "VQS_STATE_DIR": str(tmp_path / "state"),
        "VQS_METRICS_PORT": "9999",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    config = load_config(None)
    [scaler] = config.scalers
    assert (scaler.name, scaler.endpoint, scaler.source) == ("default", "my-endpoint", settings["VQS_SOURCE"])
    assert (scaler.poll_interval, scaler.policy.max_sessions, scaler.policy.scale_down_delay) == (0.25, 5, 30.0)
    assert (scaler.session.lease_seconds, scaler.session.on_shutdown) == (30.0, "keep")
    assert (config.state_dir, config.metrics_port) == (tmp_path / "state", 9999)
    assert config.vast.autoscaler_url == "http://127.0.0.1:8080"
    assert config.vast.api_key.get_secret_value() == SECRET
    monkeypatch.setenv("VQS_NAME", "jobs-1")
    assert load_config(None).scalers[0].name == "jobs-1"


def test_env_only_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQS_SOURCE", "redis://127.0.0.1:6379/0?list=a")
    monkeypatch.setenv("VQS_MIN_SESSIONS", "3")
    monkeypatch.setenv("VQS_MAX_SESSIONS", "2")
    found = problems(None)
    assert found == [
        "scalers[0].endpoint: required",
        "scalers[0].policy.max_sessions: must be >= min_sessions (3) [from VQS_MAX_SESSIONS]",
        "vast.api_key: required: set vast.api_key, vast.api_key_file, "
        "or the VAST_API_KEY environment variable",
    ]


def test_env_only_field_names_do_not_collide() -> None:
    from controller.config import ScalerConfig
    from controller.config_load import single_scaler_variables

    fields = sum(len(getattr(ScalerConfig.model_fields[f].annotation, "model_fields", {None: 0}))
                 for f in ScalerConfig.model_fields)
    names = single_scaler_variables()
    assert len(names) == fields
    assert not {name[4:].lower() for name in names} & set(Config.model_fields)


# --- durations and names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (" 1.5 m ", 90), (7, 7), (2.5, 2.5), ("10", 10)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 minutes", "-3", -1, True, "1d", ""])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def follows_name_rule(name: str) -> bool:
    """The rule written out plainly, independently of the regex in config.py."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return (
        3 <= len(name) <= 63
        and all(c in allowed for c in name)
        and name[0].isalpha()
        and not name.endswith("-")
        and "--" not in name
    )


@given(st.text(alphabet="abz09-A_.", min_size=0, max_size=70) | st.from_regex(r"[a-z][a-z0-9-]{1,62}", fullmatch=True))
def test_name_rule(name: str) -> None:
    from controller.config import ScalerConfig

    data = {"name": name, "source": "redis://127.0.0.1:6379/0?list=a", "endpoint": "ep"}
    try:
        ScalerConfig.model_validate(data)
        valid = True
    except ValueError as exc:
        assert "3-63 characters" in str(exc)
        valid = False
    assert valid == follows_name_rule(name)


# --- schema and docs ----------------------------------------------------------------------


def test_config_schema_prints_valid_json() -> None:
    result = subprocess.run([*CLI, "config-schema"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    defs = schema["$defs"]
    assert schema["required"] == ["scalers"]
    assert defs["VastConfig"]["properties"]["api_key"]["type"] == "string"
    assert "api_key" not in defs["VastConfig"].get("required", [])
    lease = defs["SessionConfig"]["properties"]["lease_seconds"]
    assert {alt["type"] for alt in lease["anyOf"]} == {"number", "string"}
    assert set(defs["ScalerConfig"]["properties"]) == {
        "name", "source", "sources", "endpoint", "poll_interval", "policy", "session"
    }
    assert set(defs["SourceSpec"]["properties"]) == {"url", "name", "weight", "reserve"}


def numeric_fields() -> list[tuple[str, object]]:
    """(YAML path under one scaler or the top level, FieldInfo) of every int, float or duration field."""
    from pydantic import BaseModel

    from controller.config import LeaderConfig, ScalerConfig, SourceSpec

    found = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            inner = getattr(info.annotation, "model_fields", None)
            if inner is not None:
                walk(info.annotation, f"{prefix}{name}.")
            elif {int, float} & {*getattr(info.annotation, "__args__", ()), info.annotation}:
                found.append((prefix + name, info))

    walk(ScalerConfig, "scalers[0].")
    walk(SourceSpec, "scalers[0].sources[0].")
    walk(LeaderConfig, "leader.")
    walk(Config, "")
    return [(path, info) for path, info in found if not path.startswith("leader.leader")]


def upper_bound(info: object) -> float | None:
    import annotated_types

    return next((b.le for b in info.metadata if isinstance(b, annotated_types.Le)), None)  # type: ignore[attr-defined]


def test_every_count_and_duration_has_an_upper_bound() -> None:
    unbounded = [path for path, info in numeric_fields() if upper_bound(info) is None]
    assert unbounded == []


def _yaml_for(path: str, value: float) -> str:
    """A config that sets the field at `path` to `value` (a leader field needs its kind)."""
    base = {"vast": {"api_key": SECRET}, "leader": {"kind": "redis", "url": "redis://127.0.0.1:6379/0"},
            "scalers": [{"name": "orders", "source": "redis://127.0.0.1:6379/0?list=orders", "endpoint": "ep"}]}  # fmt: skip
    parts = re.split(r"\.|\[(\d+)\]\.?", path)
    keys = [int(p) if p.isdigit() else p for p in parts if p]
    if keys[:3] == ["scalers", 0, "sources"]:
        scaler = base["scalers"][0]
        scaler["sources"] = [{"url": scaler.pop("source")}]
    node: object = base
    for key in keys[:-1]:
        node = node[key] if isinstance(key, int) else node.setdefault(key, {})  # type: ignore[index,union-attr]
    node[keys[-1]] = value  # type: ignore[index]
    return json.dumps(base)


def whole(value: float) -> float:
    return int(value) if float(value).is_integer() else value


@pytest.mark.parametrize(("path", "info"), numeric_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_value_over_its_bound_is_refused_naming_field_value_and_limit(tmp_path: Path, path: str, info: object) -> None:
    limit = upper_bound(info)
    assert limit is not None
    too_big = int(limit * 10 + 1) if isinstance(limit, int) else limit * 10 + 1
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, _yaml_for(path, too_big)))
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: must be <= {whole(limit)}, got {whole(too_big)} ["), problem


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_infinite_durations_and_numbers_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy = f"{{max_cost_per_hour: {value}, price_per_session_hour: 1}}"
        load_config(minimal(tmp_path, f"    poll_interval: {value}\n    policy: {policy}\n"))
    problems = "\n".join(caught.value.problems)
    assert "scalers[0].poll_interval: " in problems and "scalers[0].policy.max_cost_per_hour: " in problems


DOC = ROOT / "docs/configuration.md"


def _type_of(prop: dict) -> str:
    if prop.get("format") == "password":
        return "secret"
    if "anyOf" in prop:
        kinds = [_type_of(alt) for alt in prop["anyOf"] if alt.get("type") != "null"]
        if set(kinds) == {"number", "string"}:
            return "duration"
        return " or ".join(kinds)
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "$ref" in prop:
        return "mapping"
    return {"integer": "int", "boolean": "bool", "array": "list"}.get(prop.get("type"), prop.get("format", prop.get("type", "?")))


def _env_forms(path: str) -> str:
    from controller.config_load import single_scaler_variables

    if path.startswith("scalers[]."):
        parts = path.removeprefix("scalers[].").split(".")
        single = next(name for name, field in single_scaler_variables().items() if list(field) == parts)
        return f"`{single}`, `VQS_SCALERS__<i>__{'__'.join(parts).upper()}`"
    forms = [f"`VQS_{path.replace('.', '__').upper()}`"]
    forms += {"vast.url": ["`VQS_VAST_URL`"], "vast.api_key": ["`VAST_API_KEY`"],
              "vast.api_key_file": ["`VAST_API_KEY_FILE`"]}.get(path, [])
    return ", ".join(forms)


def _default_of(info, kind: str) -> str:
    if info.is_required():
        return "required"
    value = info.default
    if info.default_factory is not None or value is None:
        return ""
    if kind == "duration":
        return f"`{value:g}s`"
    return f"`{str(value).lower()}`" if isinstance(value, bool) else f"`{value}`"


def _range_of(info, kind: str) -> str:
    """`10s..1h`, `1..10000`, `> 0s, <= 5m`: the field's bounds as the table shows them."""
    import annotated_types

    low, high, strict = None, None, False
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = bound.ge
        elif isinstance(bound, annotated_types.Gt):
            low, strict = bound.gt, True
        elif isinstance(bound, annotated_types.Le):
            high = bound.le
    if high is None:
        return "" if low is None else f"{'>' if strict else '>='} {_shown(low, kind)}"
    if strict:
        return f"> {_shown(low, kind)}, <= {_shown(high, kind)}"
    return f"{_shown(low or 0, kind)}..{_shown(high, kind)}"


def _shown(value: float, kind: str) -> str:
    if kind != "duration":
        return f"{value:g}"
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= seconds and value % seconds == 0:
            return f"{value / seconds:g}{unit}"
    return f"{value:g}s"


def field_table() -> str:
    """The reference table in docs/configuration.md, generated from the models."""
    from pydantic import BaseModel

    rows = ["| field | type | range | default | environment | description |", "|---|---|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        props = model.model_json_schema()["properties"]
        for name, info in model.model_fields.items():
            path = prefix + name
            inner = getattr(info.annotation, "model_fields", None)
            if name == "scalers":
                from controller.config import ScalerConfig

                walk(ScalerConfig, "scalers[].")
            elif inner is not None:
                walk(info.annotation, path + ".")
            else:
                kind = _type_of(props[name])
                rows.append(f"| `{path}` | {kind} | {_range_of(info, kind)} | {_default_of(info, kind)} | "
                            f"{_env_forms(path)} | {info.description} |")

    walk(Config, "")
    return "\n".join(rows)


def test_docs_list_every_field() -> None:
    table = field_table()
    text = DOC.read_text()
    if os.environ.get("UPDATE_CONFIG_DOCS"):
        start, end = text.index("<!-- fields:start -->"), text.index("<!-- fields:end -->")
        DOC.write_text(text[: start + len("<!-- fields:start -->")] + "\n" + table + "\n" + text[end:])
        text = DOC.read_text()
    assert table in text, "docs/configuration.md is stale: run UPDATE_CONFIG_DOCS=1 pytest tests/test_config.py -k docs"
    assert re.search(r"<!-- fields:start -->\n\| field", text)


def test_a_scaler_reads_several_queues_with_weights_and_reserves(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"""
vast: {{api_key: {SECRET}}}
scalers:
  - name: render
    endpoint: ep
    policy: {{max_sessions: 4}}
    sources:
      - {{url: "redis://127.0.0.1:6379/0?list=urgent", name: urgent, weight: 2, reserve: 1}}
      - {{url: "redis://127.0.0.1:6379/0?list=batch"}}
"""))
    (scaler,) = config.scalers
    assert [(s.label, s.weight, s.reserve) for s in scaler.source_specs] == [
        ("urgent", 2.0, 1), ("redis://127.0.0.1:6379/0?list=batch", 1.0, 0)
    ]


def test_source_and_sources_are_exclusive_and_reserves_fit(tmp_path: Path) -> None:
    found = problems(write(tmp_path, f"""
vast: {{api_key: {SECRET}}}
scalers:
  - name: both
    endpoint: ep
    source: "redis://127.0.0.1:6379/0?list=a"
    sources: [{{url: "redis://127.0.0.1:6379/0?list=b"}}]
  - name: neither
    endpoint: ep
  - name: greedy
    endpoint: ep
    policy: {{max_sessions: 2}}
    sources:
      - {{url: "redis://127.0.0.1:6379/0?list=a", name: a, reserve: 2}}
      - {{url: "redis://127.0.0.1:6379/0?list=b", name: a, reserve: 1}}
  - name: badurl
    endpoint: ep
    sources: [{{url: "kafka://broker/topic"}}]
"""))
    assert any(p.startswith("scalers[0].source: set exactly one of source") for p in found), found
    assert any(p.startswith("scalers[1].source: set exactly one of source") for p in found), found
    assert any(p.startswith("scalers[2].sources: names must be unique, a repeats") for p in found), found
    assert any(p.startswith("scalers[3].sources[0].url: unknown source URL scheme") for p in found), found
