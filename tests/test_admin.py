"""The HTTP API (admin, close callback, health) on a real MetricsServer, checked against docs/openapi.yaml."""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from pydantic import SecretStr

from controller.admin import admin_routes
from controller.callbacks import CALLBACK_PATH, CloseCallbacks
from controller.config import PolicyConfig
from controller.config_load import ConfigError, load_config
from controller.decisions import DECISIONS_KEPT, DecisionLog, decision_record
from controller.metrics import Metrics
from controller.policy import PolicyState, Supply, decide, one_queue
from controller.server import MAX_BODY, MetricsServer
from controller.sources import QueueDepth

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "docs/openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
TOKEN = "s3cret-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = aiohttp.ClientTimeout(total=10)


class FakeControl:
    """Two scalers: alpha reads its queue fine, beta's reads fail."""

    def __init__(self) -> None:
        self.scalers: dict[str, dict[str, Any]] = {
            "alpha": {
                "name": "alpha",
                "depth": {"waiting": 3, "in_flight": 1, "total": 4},
                "target": 4,
                "sessions": {"open": 2, "opening": 2},
                "leader": True,
                "paused": False,
                "mode": "act",
                "last_read_ok_at": 1_700_000_000.5,
            },
            "beta": {
                "name": "beta",
                "depth": None,
                "target": None,
                "sessions": {"open": 0, "opening": 0},
                "leader": True,
                "paused": False,
                "mode": "act",
                "last_read_ok_at": None,
            },
        }
        self.log = DecisionLog()
        self.released: list[tuple[str, str]] = []
        self.callback_payload: dict[str, Any] = {}

    def names(self) -> list[str]:
        return list(self.scalers)

    def status(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.scalers.values()))

    def pause(self, name: str) -> None:
        self.scalers[name]["paused"] = True

    def resume(self, name: str) -> None:
        self.scalers[name]["paused"] = False

    def set_mode(self, name: str, mode: str) -> None:
        self.scalers[name]["mode"] = mode

    def decisions(self, scaler: str | None) -> list[dict[str, Any]]:
        return self.log.list(scaler)


def record(scaler: str, tick: int) -> dict[str, Any]:
    depth = QueueDepth(tick, 1, oldest_age=0.5) if tick % 3 else None
    decision = decide(one_queue(depth), Supply(open=2, opening=1), PolicyConfig(), 1_700_000_000.0 + tick, PolicyState())
    return decision_record(scaler, decision, acted=True)


def check_against_spec(method: str, path: str, status: int, body: Any) -> None:
    """The status is documented for the operation and the JSON body fits its schema.

    A method the path does not take is checked against the one it does (its 405 is documented there).
    """
    template = next(t for t in SPEC["paths"] if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", t), path))
    operations = SPEC["paths"][template]
    operation = operations.get(method.lower()) or next(iter(operations.values()))
    assert str(status) in operation["responses"], f"{method} {template} -> {status} is not documented"
    response = operation["responses"][str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    # Local $refs resolve against the schema's own root, so the components ride along.
    OAS30Validator({**schema, "components": SPEC["components"]}).validate(body)


class Client:
    """aiohttp client that checks every answer is JSON and documented."""

    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http, self.base = http, base

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(method, self.base + path, **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            body = await response.json()
        check_against_spec(method, path.partition("?")[0], response.status, body)
        if response.status >= 400:
            assert set(body) == {"error"} and body["error"]
        return response.status, body, response


async def serve(control: FakeControl, token: SecretStr | None) -> MetricsServer:
    """Every route the controller serves: health, metrics, admin and the close callback."""
    callbacks = CloseCallbacks(lambda scaler, session_id: control.released.append((scaler, session_id)))
    control.callback_payload = callbacks.payload("alpha")
    server = MetricsServer(
        Metrics(), "127.0.0.1", 0, readiness=lambda: (True, {}),
        routes=[*callbacks.routes(), *admin_routes(control, token)],
    )  # fmt: skip
    await server.start()
    return server


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
async def client(control: FakeControl) -> AsyncIterator[Client]:
    server = await serve(control, SecretStr(TOKEN))
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            yield Client(http, f"http://127.0.0.1:{server.port}")
    finally:
        await server.stop()


async def test_status_lists_every_scaler(client: Client) -> None:
    status, body, _ = await client.call("GET", "/status")
    assert status == 200
    assert [s["name"] for s in body["scalers"]] == ["alpha", "beta"]
    assert body["scalers"][0]["depth"] == {"waiting": 3, "in_flight": 1, "total": 4}
    assert body["scalers"][1]["depth"] is None


async def test_pause_resume_and_mode_change_the_scaler(client: Client, control: FakeControl) -> None:
    status, body, _ = await client.call("POST", "/scalers/alpha/pause", headers=AUTH)
    assert (status, body["name"], body["paused"]) == (200, "alpha", True)
    assert control.scalers["alpha"]["paused"] and not control.scalers["beta"]["paused"]
    status, body, _ = await client.call("POST", "/scalers/alpha/pause", headers=AUTH)
    assert (status, body["paused"]) == (200, True)  # idempotent

    status, body, _ = await client.call("POST", "/scalers/alpha/resume", headers=AUTH)
    assert (status, body["paused"]) == (200, False)
    assert not control.scalers["alpha"]["paused"]

    status, body, _ = await client.call("POST", "/scalers/beta/mode", headers=AUTH, json={"mode": "advise"})
    assert (status, body["name"], body["mode"]) == (200, "beta", "advise")
    _, body, _ = await client.call("GET", "/status")
    assert [(s["name"], s["mode"]) for s in body["scalers"]] == [("alpha", "act"), ("beta", "advise")]
    status, body, _ = await client.call("POST", "/scalers/beta/mode", headers=AUTH, json={"mode": "act"})
    assert (status, body["mode"]) == (200, "act")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-but-long-enough"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer ünïcode"},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "other-scheme", "longer", "non-ascii", "empty"],
)
async def test_changes_need_the_right_token(
    client: Client, control: FakeControl, headers: dict[str, str]
) -> None:
    for path, kwargs in [
        ("/scalers/alpha/pause", {}),
        ("/scalers/alpha/resume", {}),
        ("/scalers/alpha/mode", {"json": {"mode": "advise"}}),
    ]:
        status, body, response = await client.call("POST", path, headers=headers, **kwargs)
        assert status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in body["error"]
    assert (control.scalers["alpha"]["paused"], control.scalers["alpha"]["mode"]) == (False, "act")


async def test_the_bearer_scheme_is_case_insensitive(client: Client) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    status, _, _ = await client.call("POST", "/scalers/alpha/pause", headers=headers)
    assert status == 200


async def test_changes_are_off_without_a_configured_token(control: FakeControl) -> None:
    server = await serve(control, None)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            client = Client(http, f"http://127.0.0.1:{server.port}")
            for headers in ({}, AUTH):
                status, body, _ = await client.call("POST", "/scalers/alpha/pause", headers=headers)
                assert status == 403
                assert "admin_token" in body["error"]
            status, _, _ = await client.call("GET", "/status")
            assert status == 200  # reads stay open
    finally:
        await server.stop()
    assert not control.scalers["alpha"]["paused"]


async def test_unknown_scaler_is_404_after_auth(client: Client) -> None:
    status, body, _ = await client.call("POST", "/scalers/gamma/pause", headers=AUTH)
    assert status == 404
    assert body["error"] == "unknown scaler 'gamma'; known: alpha, beta"
    # Without the token the name is not even looked up.
    status, _, _ = await client.call("POST", "/scalers/gamma/pause")
    assert status == 401
    status, body, _ = await client.call("GET", "/decisions?scaler=gamma")
    assert (status, body["error"]) == (404, "unknown scaler 'gamma'; known: alpha, beta")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", 'body: expected a JSON object such as {"mode": "advise"}'),
        (b"{not json", 'body: expected a JSON object such as {"mode": "advise"}'),
        (b'["advise"]', 'body: expected a JSON object such as {"mode": "advise"}'),
        (b'{"mode": "advise", "why": 1}', "body: unknown key 'why'; expected only 'mode'"),
        (b"{}", "mode: expected one of 'act', 'advise', got None"),
        (b'{"mode": "dry-run"}', "mode: expected one of 'act', 'advise', got 'dry-run'"),
        (b'{"mode": 1}', "mode: expected one of 'act', 'advise', got 1"),
    ],
)
async def test_a_bad_mode_body_is_400_naming_the_field(
    client: Client, control: FakeControl, body: bytes, error: str
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    status, answer, _ = await client.call("POST", "/scalers/alpha/mode", headers=headers, data=body)
    assert (status, answer["error"]) == (400, error)
    assert control.scalers["alpha"]["mode"] == "act"


async def test_bodies_over_the_cap_are_413(client: Client, control: FakeControl) -> None:
    big = b'{"mode": "advise", "pad": "' + b"x" * MAX_BODY + b'"}'
    status, body, _ = await client.call("POST", "/scalers/alpha/mode", headers=AUTH, data=big)
    assert (status, body["error"]) == (413, f"body: larger than {MAX_BODY} bytes")

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the cap must hold while reading the stream too.
        for _ in range(4):
            yield b"x" * 2048

    status, _, _ = await client.call("POST", "/scalers/alpha/pause", headers=AUTH, data=chunked())
    assert status == 413
    assert not control.scalers["alpha"]["paused"]
    status, _, _ = await client.call("POST", "/scalers/alpha/pause", headers=AUTH, data=b"x" * MAX_BODY)
    assert status == 200  # exactly the cap is fine


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/scalers/alpha/pause", "POST"),
        ("PUT", "/scalers/alpha/mode", "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/decisions", "GET, HEAD"),
    ],
)
async def test_wrong_method_is_a_json_405(client: Client, method: str, path: str, allow: str) -> None:
    status, _, response = await client.call(method, path, headers=AUTH)
    assert status == 405
    assert response.headers["Allow"] == allow


async def test_unknown_query_parameters_are_400(client: Client) -> None:
    status, body, _ = await client.call("GET", "/decisions?scalar=alpha")
    assert (status, body["error"]) == (400, "unknown query parameter 'scalar'; expected: scaler")
    status, body, _ = await client.call("GET", "/status?verbose=1")
    assert (status, body["error"]) == (400, "unknown query parameter 'verbose'; expected: none")


async def test_decisions_are_the_last_200_newest_last_and_filter_by_scaler(
    client: Client, control: FakeControl
) -> None:
    status, body, _ = await client.call("GET", "/decisions")
    assert (status, body) == (200, {"decisions": []})
    for tick in range(250):
        control.log.append(record("alpha" if tick % 2 else "beta", tick))
    assert len(control.log) == DECISIONS_KEPT

    status, body, _ = await client.call("GET", "/decisions")
    assert status == 200
    times = [d["t"] - 1_700_000_000.0 for d in body["decisions"]]
    assert times == list(range(50, 250))
    status, body, _ = await client.call("GET", "/decisions?scaler=alpha")
    assert {d["scaler"] for d in body["decisions"]} == {"alpha"}
    assert [d["t"] - 1_700_000_000.0 for d in body["decisions"]] == list(range(51, 250, 2))
    # Tick 249's read failed: the policy holds the 3 sessions it has.
    assert body["decisions"][-1] == {
        "t": 1_700_000_249.0, "scaler": "alpha", "depth": None, "sources": [],
        "sessions": {"open": 2, "opening": 1}, "target": 3, "to_open": 0, "to_cancel": 0,
        "to_close": 0, "reason": "read failed: holding 3 (no fallback_sessions)", "mode": "act",
        "terms": {}, "acted": True,
    }
    assert body["decisions"][-2]["depth"] == {"waiting": 247, "in_flight": 1, "total": 248, "oldest_age": 0.5}


def test_the_decision_log_keeps_copies() -> None:
    log = DecisionLog(maxlen=3)
    entry = record("alpha", 1)
    log.append(entry)
    entry["reason"] = "changed later"
    log.list()[0]["reason"] = "changed by a reader"
    assert log.list()[0]["reason"] == record("alpha", 1)["reason"]


async def test_the_token_never_appears_in_logs_or_answers(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = []
    for headers in ({}, AUTH, {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        for path in ("/scalers/alpha/pause", "/scalers/gamma/resume", "/scalers/alpha/mode"):
            _, body, response = await client.call("POST", path, headers=headers, json={"mode": "bogus"})
            seen.append(repr(body) + repr(dict(response.headers)))
    assert "admin: scaler paused" in caplog.text and "rejected request" in caplog.text
    assert TOKEN not in caplog.text and TOKEN[:-1] not in caplog.text
    assert not any(TOKEN[:8] in text for text in seen)


async def test_a_failing_controller_gives_a_json_500_without_details(
    control: FakeControl, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("internal detail")

    control.status = broken  # type: ignore[method-assign]
    server = await serve(control, SecretStr(TOKEN))
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            client = Client(http, f"http://127.0.0.1:{server.port}")
            status, body, _ = await client.call("GET", "/status")
    finally:
        await server.stop()
    assert (status, body) == (500, {"error": "internal error; see the controller's log"})
    assert "admin request failed" in caplog.text and "internal detail" in caplog.text


async def test_head_answers_like_get_without_a_body(client: Client) -> None:
    async with client.http.head(client.base + "/status") as response:
        assert (response.status, response.content_type) == (200, "application/json")
        assert await response.read() == b""


# --- the close callback -----------------------------------------------------------------------


async def test_a_close_callback_with_the_token_reports_the_session(client: Client, control: FakeControl) -> None:
    body = {**control.callback_payload, "session_id": "abc123"}
    assert (await client.call("POST", CALLBACK_PATH, json=body))[:2] == (200, {"ok": True})
    assert control.released == [("alpha", "abc123")]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"scaler": "alpha", "token": "wrong", "session_id": "x"}, 401),
        ({"scaler": "alpha", "token": "tök€n", "session_id": "x"}, 401),
        ({"scaler": "alpha", "session_id": "x"}, 400),
        ({"scaler": ["alpha"], "token": "t", "session_id": "x"}, 400),
        ([1, 2], 400),
    ],
)
async def test_a_bad_close_callback_is_rejected_and_reports_nothing(
    client: Client, control: FakeControl, body: Any, status: int
) -> None:
    assert (await client.call("POST", CALLBACK_PATH, json=body))[0] == status
    assert control.released == []


# Every route of the spec with the methods it takes; bodies go to all, to hit whichever parses one.
ROUTES = [
    (method.upper(), re.sub(r"\{\w+\}", "alpha", path))
    for path, operations in SPEC["paths"].items()
    for method in operations
    if method in ("get", "post")
]


def hostile_bodies() -> st.SearchStrategy[bytes]:
    """Deep nesting, huge sizes, broken UTF-8, and plain noise."""
    # Within the size cap, so that the route really parses it.
    deep = st.tuples(st.sampled_from([b"[", b'{"a":', b'{"mode":[']), st.integers(1, MAX_BODY)).map(
        lambda pair: (pair[0] * pair[1])[:MAX_BODY]
    )
    closed_deep = st.integers(1, 2_000).map(lambda n: b"[" * n + b"]" * n)
    huge = st.integers(MAX_BODY - 10, 200_000).map(lambda n: b'{"mode": "' + b"x" * n + b'"}')
    return st.one_of(deep, closed_deep, huge, st.binary(max_size=512), st.just(b"\xff\xfe{"), st.just(b""))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@example(body=b"[" * 4000, route=("POST", "/scalers/alpha/mode"), content_type="application/json")
@example(body=b"[" * 4000, route=("POST", CALLBACK_PATH), content_type="application/json")
@given(body=hostile_bodies(), route=st.sampled_from(ROUTES), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded"]
))
def test_no_body_gets_a_5xx_on_any_route(live_url: str, body: bytes, route: tuple[str, str], content_type: str) -> None:
    method, path = route
    request = urllib.request.Request(
        live_url + path, data=body, method=method, headers={**AUTH, "Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    assert status < 500, (method, path, body[:80])


# --- the config fields ------------------------------------------------------------------------

CONFIG = """\
vast: {api_key: k}
scalers: [{name: alpha, source: "redis://127.0.0.1:6379/0?list=jobs", endpoint: e}]
"""


def test_admin_token_comes_from_the_config_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    assert load_config(path).admin_token is None
    path.write_text(CONFIG + f"admin_token: {TOKEN}\n")
    config = load_config(path)
    assert config.admin_token is not None and config.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(config)
    token_file = tmp_path / "token"
    token_file.write_text(f"\n{TOKEN}\n")
    path.write_text(CONFIG + f"admin_token_file: {token_file}\n")
    assert load_config(path).admin_token.get_secret_value() == TOKEN  # type: ignore[union-attr]
    path.write_text(CONFIG)
    monkeypatch.setenv("VQS_ADMIN_TOKEN", TOKEN)
    assert load_config(path).admin_token.get_secret_value() == TOKEN  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("admin_token: tooShortSecret", "admin_token: must be at least 16 characters"),
        (f"admin_token: {TOKEN}\nadmin_token_file: /etc/hostname", "admin_token: set either admin_token or"),
        ("admin_token_file: /nonexistent/token", "admin_token_file: cannot read /nonexistent/token"),
    ],
)
def test_admin_token_rules(tmp_path: Path, extra: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + extra + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith(expected)
    assert "tooShortSecret" not in str(caught.value) and TOKEN not in str(caught.value)


# --- the whole spec, fuzzed by schemathesis against a live server ------------------------------


class ThreadedServer:
    """The server on its own event loop in a thread, for schemathesis' blocking client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.control = FakeControl()
        for tick in range(5):
            self.control.log.append(record("alpha", tick))

    def __enter__(self) -> str:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(serve(self.control, SecretStr(TOKEN)), self.loop)
        self.server = future.result(timeout=10)
        return f"http://127.0.0.1:{self.server.port}"

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    with ThreadedServer() as url:
        yield url


schema = schemathesis.openapi.from_path(SPEC_PATH)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_spec(case: schemathesis.Case, live_url: str) -> None:
    case.call_and_validate(base_url=live_url, headers=AUTH, timeout=10)
