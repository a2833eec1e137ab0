"""Layer YAML, environment and flags into a Config, and turn every problem into one line.

Precedence, lowest first: the YAML file (or the single-scaler env-only form), `VQS_VAST_URL`,
`VQS_*` variables (nested with `__`, list entries by index), then command-line flags.
`VAST_API_KEY` / `VAST_API_KEY_FILE` are used only when nothing else names the key.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError

from controller.config import Config, ScalerConfig
from controller.masking import redact

PREFIX = "VQS_"
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_NO_SCALERS = (
    "required: pass --config FILE, set VQS_CONFIG=FILE, "
    "or set VQS_SOURCE and VQS_ENDPOINT for a single scaler"
)


class ConfigError(Exception):
    """The configuration is invalid; str() is a header line plus one line per problem."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        header = f"invalid configuration {self.origin} ({count} problem{'s' * (count != 1)}):"
        return "\n".join([header, *(f"  {problem}" for problem in self.problems)])


def load_config(path: str | Path | None = None, metrics_port: int | None = None) -> Config:
    """Load the YAML file (or $VQS_CONFIG, or the env-only form) with environment overrides.

    `metrics_port` (the --metrics-port flag) beats both. Raises ConfigError listing every problem.
    """
    env = {name.upper(): value for name, value in os.environ.items()}
    path = path or env.get("VQS_CONFIG") or None
    problems: list[str] = []
    lines: dict[str, int] = {}
    origins: dict[str, str] = {}
    if path is not None:
        origin = f"in {path}"
        data, lines = read_yaml(Path(path))
    else:
        origin = "from the environment"
        data, origins = single_scaler_from_env(env)
    problems += unknown_variables(env, single_scaler_form=path is None)

    if "VQS_VAST_URL" in env:
        data = merge(data, {"vast": {"url": env["VQS_VAST_URL"]}}, "", problems)
        origins["vast.url"] = "VQS_VAST_URL"
    try:
        overlay = EnvSettingsSource(Config)()
    except SettingsError as exc:
        # Raised for a whole-field JSON value (VQS_SCALERS='[...]') that does not parse.
        field = re.search(r'field "(\w+)"', str(exc))
        name = PREFIX + field.group(1).upper() if field else "a VQS_ variable"
        raise ConfigError(origin, [*problems, f"{name}: expected a JSON value"]) from None
    data = merge(data, overlay, "", problems)
    origins.update(_env_paths(env))
    _fill_api_key(data, env, origins)
    if metrics_port is not None:
        data["metrics_port"] = metrics_port
        origins["metrics_port"] = "--metrics-port"

    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Messages never show input values (they may be secrets), but for a number out of bounds.
        errors = exc.errors(include_url=False)
        problems += [line for error in errors for line in describe(error, lines, origins)]
    if problems:
        raise ConfigError(origin, list(dict.fromkeys(problems)))
    return config


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's mapping and the line of every key path in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"in {path}", [f"cannot read {path}: {reason}"]) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.MarkedYAMLError as exc:
        # Only the problem text: PyYAML's full message quotes the line, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"in {path}", [f"{where}: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError:
        raise ConfigError(f"in {path}", [f"{path}: not valid YAML"]) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"in {path}", [f"{path}: expected a mapping of settings, got a {kind}"])
    lines: dict[str, int] = {}
    _record_lines(node, "", lines)
    return data, lines


def _record_lines(node: yaml.Node | None, path: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            lines[child] = key.start_mark.line + 1
            _record_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            lines[child] = item.start_mark.line + 1
            _record_lines(item, child, lines)


def single_scaler_variables() -> dict[str, tuple[str, ...]]:
    """`VQS_<FIELD>` -> the field's path inside a scaler, for the env-only form."""
    names: dict[str, tuple[str, ...]] = {}
    for field, info in ScalerConfig.model_fields.items():
        model = _strip(info.annotation)
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update({PREFIX + sub.upper(): (field, sub) for sub in model.model_fields})
        else:
            names[PREFIX + field.upper()] = (field,)
    return names


def single_scaler_from_env(env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The env-only form: one scaler from VQS_SOURCE, VQS_ENDPOINT and any VQS_<FIELD>."""
    if "VQS_SOURCE" not in env:
        return {}, {}
    scaler: dict[str, Any] = {"name": "default"}
    origins: dict[str, str] = {}
    for name, field_path in single_scaler_variables().items():
        if name in env:
            target = scaler
            for part in field_path[:-1]:
                target = target.setdefault(part, {})
            target[field_path[-1]] = env[name]
            origins["scalers[0]." + ".".join(field_path)] = name
    return {"scalers": [scaler]}, origins


def unknown_variables(env: dict[str, str], single_scaler_form: bool) -> list[str]:
    """Every VQS_ variable nothing reads: a typo must not pass silently."""
    roots = {PREFIX + field.upper() for field in Config.model_fields} | {"VQS_CONFIG", "VQS_VAST_URL"}
    scaler_level = set(single_scaler_variables())
    problems = []
    for name in sorted(env):
        if not name.startswith(PREFIX) or name.split("__")[0] in roots:
            continue
        if name in scaler_level:
            if not single_scaler_form:
                nested = "__".join(single_scaler_variables()[name]).upper()
                problems.append(
                    f"{name}: only read without a config file; "
                    f"to override a scaler in the file use VQS_SCALERS__<index>__{nested}"
                )
            continue
        hint = difflib.get_close_matches(name, sorted(roots | scaler_level), n=1)
        problems.append(f"{name}: unknown setting" + (f" (did you mean {hint[0]}?)" if hint else ""))
    return problems


def _env_paths(env: dict[str, str]) -> dict[str, str]:
    """YAML path -> the VQS_ variable that set it, for nested `__` variables."""
    top = {field.upper() for field in Config.model_fields}
    paths = {}
    for name in env:
        parts = name[len(PREFIX):].split("__") if name.startswith(PREFIX) else []
        if parts and parts[0] in top:
            path = parts[0].lower()
            for part in parts[1:]:
                path += f"[{part}]" if part.isdigit() else f".{part.lower()}"
            paths[path] = name
    return paths


def _fill_api_key(data: dict[str, Any], env: dict[str, str], origins: dict[str, str]) -> None:
    vast = data.get("vast")
    if vast is None:
        vast = data["vast"] = {}
    if not isinstance(vast, dict) or "api_key" in vast or "api_key_file" in vast:
        return
    for name, field in (("VAST_API_KEY", "api_key"), ("VAST_API_KEY_FILE", "api_key_file")):
        if name in env:
            vast[field] = env[name]
            origins[f"vast.{field}"] = name


def merge(base: Any, overlay: Any, path: str, problems: list[str]) -> Any:
    """Overlay wins; mappings merge key by key; `{"0": ...}` updates list entry 0."""
    if not isinstance(overlay, dict):
        return overlay
    if isinstance(base, list):
        merged = list(base)
        for key, value in overlay.items():
            if not str(key).isdigit() or int(key) >= len(base):
                problems.append(f"{path}[{key}]: no such entry to override (there are {len(base)})")
                continue
            merged[int(key)] = merge(merged[int(key)], value, f"{path}[{key}]", problems)
        return merged
    if base is None and overlay and all(str(key).isdigit() for key in overlay):
        count = len(overlay)
        if sorted(int(key) for key in overlay) != list(range(count)):
            problems.append(f"{path}: entries must be numbered 0..{count - 1} without gaps")
            return None
        return [overlay[key] for key in sorted(overlay, key=int)]
    result = dict(base) if isinstance(base, dict) else {}
    for key, value in overlay.items():
        result[key] = merge(result.get(key), value, f"{path}.{key}" if path else key, problems)
    return result


def describe(error: dict[str, Any], lines: dict[str, int], origins: dict[str, str]) -> list[str]:
    """One pydantic error -> `path: message [where]` lines (a model validator may give several)."""
    loc = tuple(error["loc"])
    path = render(loc)
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    model = _model_at(loc[:-1]) if loc else None
    if error["type"] == "extra_forbidden" and model is not None:
        message = _unknown_key(str(loc[-1]), list(model.model_fields))
    elif error["type"] == "missing":
        message = _NO_SCALERS if loc == ("scalers",) else "required"
    elif error["type"] in _BOUNDS:
        bound = next(iter(error["ctx"].values()))
        message = f"must be {_BOUNDS[error['type']]} {_number(bound)}"
        given = error.get("input")
        if isinstance(given, (int, float)) and not isinstance(given, bool):
            message += f", got {_number(given)}"
    if _model_at(loc) is None:
        return [_finish(path, message, lines, origins)]
    described = []
    for line in message.splitlines():
        # Model validators name the field they blame as "field: message".
        field, sep, rest = line.partition(": ")
        if sep and field.replace("[", ".").replace("]", "").replace(".", "_").isidentifier():
            line_path = f"{path}.{field}" if path else field
            described.append(_finish(line_path, rest, lines, origins))
        else:
            described.append(_finish(path, line, lines, origins))
    return described


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else value


def _unknown_key(key: str, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(key, allowed, n=1)
    guess = f"did you mean {hint[0]!r}? " if hint else ""
    return f"unknown key; {guess}expected one of: {', '.join(allowed)}"


def _finish(path: str, message: str, lines: dict[str, int], origins: dict[str, str]) -> str:
    where = ""
    for prefix in _prefixes(path):
        if prefix in origins:
            where = f" [from {origins[prefix]}]"
            break
        if prefix in lines:
            where = f" [line {lines[prefix]}]"
            break
    return redact(f"{path or '(top level)'}: {message}{where}")


def _prefixes(path: str) -> list[str]:
    """`a[0].b` -> [`a[0].b`, `a[0]`, `a`]: the most specific first."""
    out = [path]
    while path:
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
        if path:
            out.append(path)
    return out


def render(loc: tuple[Any, ...]) -> str:
    """("scalers", 0, "policy") -> "scalers[0].policy"."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validates the value at `loc`, if it is a model."""
    annotation: Any = Config
    for part in loc:
        annotation = _strip(annotation)
        if isinstance(part, int):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            annotation = field.annotation if field else None
        else:
            return None
    annotation = _strip(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _strip(annotation: Any) -> Any:
    """Unwrap Annotated[...] and Optional[...] down to the type inside."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation
