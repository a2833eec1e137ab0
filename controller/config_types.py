"""The configuration's value types: durations, names, URLs, and the checks that name what is wrong."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import AfterValidator, BeforeValidator

from controller.masking import redact

PRODUCTION_WEBSERVER_URL = "https://console.vast.ai"
PRODUCTION_AUTOSCALER_URL = "https://run.vast.ai"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`30s`, `5m`, `1h`, `250ms` or plain seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or plain seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 5m or plain seconds, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration such as 30s, 5m or plain seconds, got {value!r}")
    if seconds < 0:
        raise ValueError("must be a duration >= 0")
    return seconds


class _DurationJsonSchema:
    """A number of seconds (with the field's bounds) or a string with a unit."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        number = {"minimum": 0, **handler(core_schema)}
        return {
            "anyOf": [number, {"type": "string", "pattern": _DURATION.pattern}],
            "description": "seconds, or a number with a unit: 250ms, 30s, 5m, 1h",
        }


Duration = Annotated[float, BeforeValidator(parse_duration), _DurationJsonSchema()]

NAME_RULE = (
    "3-63 characters of lowercase letters, digits and hyphens, starting with a letter, "
    "with no '--' and no trailing hyphen"
)
_NAME = re.compile(r"[a-z][a-z0-9-]{1,61}[a-z0-9]")


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or "--" in name:
        raise ValueError(f"must be {NAME_RULE}, got {name!r}")
    return name


def _check_http_url(url: str) -> str:
    # Secrets can ride in URLs, so the error shows the URL redacted.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"expected an http(s) URL such as http://127.0.0.1:8080, got {redact(url)!r}"
        )
    return url.rstrip("/")


def _check_source(url: str) -> str:
    from controller.sources import SourceURLError, from_url

    try:
        from_url(url)  # parses only; nothing connects
    except SourceURLError as exc:
        raise ValueError(str(exc)) from None
    return url


#: `?prefix=NAME` on `state_url`: the ledger's key prefix, not a redis-py connection option.
LEDGER_PREFIX_PARAM = "prefix"


def split_ledger_prefix(url: str, default: str) -> tuple[str, str]:
    """`redis://h/0?prefix=farm&db=1` -> (`redis://h/0?db=1`, `farm`)."""
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    prefix = next((v for k, v in pairs if k == LEDGER_PREFIX_PARAM), default)
    rest = urlencode([(k, v) for k, v in pairs if k != LEDGER_PREFIX_PARAM])
    return (f"{base}?{rest}" if rest else base), prefix


def _check_redis_url(url: str, extra_params: tuple[str, ...] = ()) -> str:
    """A URL redis-py accepts, checked without connecting (errors show it redacted)."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS, parse_url

    example = "such as redis://127.0.0.1:6379/0, rediss://host:6380/0 or unix:///run/redis.sock"
    try:
        parts = urlsplit(url)
        options = parse_url(url)
    except ValueError as exc:
        raise ValueError(f"expected a Redis URL {example}, got {redact(url)!r} ({exc})") from None
    if parts.scheme in ("redis", "rediss") and not parts.hostname:
        raise ValueError(f"expected a Redis URL with a host, {example}, got {redact(url)!r}")
    allowed = [*URL_QUERY_ARGUMENT_PARSERS, *extra_params]
    unknown = sorted(set(options) - {"host", "port", "db", "path", "username", "password",
                                     "connection_class", *allowed})
    if unknown:
        raise ValueError(f"unknown URL parameter {unknown[0]!r}; expected one of: {', '.join(allowed)}")
    if LEDGER_PREFIX_PARAM in options and not options[LEDGER_PREFIX_PARAM]:
        raise ValueError(f"URL parameter {LEDGER_PREFIX_PARAM!r} must not be empty")
    return url


ScalerName = Annotated[str, AfterValidator(_check_name)]
HttpURL = Annotated[str, AfterValidator(_check_http_url)]
RedisURL = Annotated[str, AfterValidator(_check_redis_url)]
StateURL = Annotated[str, AfterValidator(lambda url: _check_redis_url(url, (LEDGER_PREFIX_PARAM,)))]
SourceURL = Annotated[str, AfterValidator(_check_source)]
LogLevel = Annotated[
    Literal["debug", "info", "warning", "error", "critical"],
    BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
]
