"""`check`: reads every scaler's real source once, prints a table, exits 1 on any failure."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from controller.check import check
from controller.child import clean_environment
from controller.config import Config
from controller.emulator.testing import running_emulator
from controller.endpoint_params import RECOMMENDED
from controller.vast import VastClient

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "pw-never-shown-42"


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def queues(redis_client: aioredis.Redis) -> AsyncIterator[dict[str, str]]:
    """A list queue with 3 waiting and 2 in a processing list; a stream group with lag 2, pending 1."""
    tag = uuid.uuid4().hex[:10]
    names = {"list": f"check:{tag}:jobs", "processing": f"check:{tag}:jobs:processing",
             "stream": f"check:{tag}:stream", "group": "workers"}
    await redis_client.rpush(names["list"], *[f"job-{i}" for i in range(5)])
    for _ in range(2):
        await redis_client.lmove(names["list"], names["processing"], "LEFT", "RIGHT")
    await redis_client.xgroup_create(names["stream"], names["group"], id="0", mkstream=True)
    for i in range(3):
        await redis_client.xadd(names["stream"], {"n": i})
    await redis_client.xreadgroup(names["group"], "consumer-1", {names["stream"]: ">"}, count=1)
    yield names
    await redis_client.delete(names["list"], names["processing"], names["stream"])


def redis_source(query: str) -> str:
    return f"{REDIS_URL}?{query}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_for(*scalers: tuple[str, str]) -> Config:
    return Config.model_validate({
        "vast": {"api_key": "k"},
        "scalers": [{"name": name, "source": source, "endpoint": f"ep-{name}"} for name, source in scalers],
    })


def rows(output: str) -> dict[str, list[str]]:
    """Table rows by scaler name (the first column)."""
    table = output.strip().split("\n\n")[0].splitlines()
    assert table[0].split() == ["SCALER", "SOURCE", "ENDPOINT", "WAITING", "IN_FLIGHT", "TOTAL"]
    return {line.split()[0]: line.split() for line in table[1:]}


async def test_check_reads_every_source(queues: dict[str, str]) -> None:
    config = config_for(
        ("list-queue", redis_source(f"list={queues['list']}&processing={queues['processing']}")),
        ("stream-queue", redis_source(f"stream={queues['stream']}&group={queues['group']}")),
    )
    out = io.StringIO()
    assert await check(config, out=out) == 0
    table = rows(out.getvalue())
    assert table["list-queue"][2:] == ["ep-list-queue", "3", "2", "5"]
    assert table["stream-queue"][2:] == ["ep-stream-queue", "2", "1", "3"]
    assert "config ok; 2 sources read" in out.getvalue()


async def test_a_failed_source_is_a_row_and_exit_1(queues: dict[str, str]) -> None:
    config = config_for(
        ("down", f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0?list=jobs"),
        ("missing-group", redis_source(f"stream={queues['stream']}&group=nobody")),
        ("fine", redis_source(f"list={queues['list']}")),
    )
    out = io.StringIO()
    assert await check(config, out=out) == 1
    text = out.getvalue()
    table = rows(text)
    assert table["down"][1].startswith("redis://:***@127.0.0.1:")
    assert table["down"][3] == "ERROR:"
    assert table["missing-group"][3:7] == ["0", "0", "0", "WARNING:"]
    assert "has no consumer group 'nobody' (groups: 'workers'); read as empty" in text
    assert table["fine"][3:] == ["3", "0", "3"]
    assert "1 of 3 sources failed" in text
    assert PASSWORD not in text


async def test_a_missing_stream_is_a_warning_not_a_failure() -> None:
    config = config_for(("typo", redis_source(f"stream=check:{uuid.uuid4().hex}:no-such-stream&group=workers")))
    out = io.StringIO()
    assert await check(config, out=out) == 0
    assert "does not exist'; read as empty" not in out.getvalue()
    assert "no-such-stream' does not exist; read as empty" in out.getvalue()
    assert "config ok; 1 source read (1 read as empty: see WARNING)" in out.getvalue()


async def test_cli_check_prints_the_table_and_the_endpoints_parameters(tmp_path: Path, queues: dict[str, str]) -> None:
    recommended = {"name": "ep", **RECOMMENDED}
    vast_defaults = {"name": "other"}  # a new Vast endpoint: nothing set
    async with running_emulator(api_key="k", endpoints=[recommended, vast_defaults]) as emu:
        path = tmp_path / "config.yaml"
        source = redis_source("list=" + queues["list"])
        path.write_text(
            f"vast: {{api_key_file: key, url: '{emu.url}'}}\nscalers:\n"
            f"  - {{name: jobs, source: '{source}', endpoint: ep}}\n"
            f"  - {{name: more, source: '{source}', endpoint: other}}\n"
        )
        (tmp_path / "key").write_text("k\n")
        env = clean_environment()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", "check", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert rows(text)["jobs"][2:] == ["ep", "3", "0", "3"]
    assert "endpoint ep: parameters as recommended" in text
    other = next(line for line in text.splitlines() if line.startswith("endpoint other:"))
    for field, value in (("target_util", "0.9"), ("min_load", "1"), ("max_queue_time", "30"),
                         ("target_queue_time", "10"), ("inactivity_timeout", "unset")):  # fmt: skip
        assert f"{field} is {value} (recommended {RECOMMENDED[field]:g}" in other, other


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("k", "vast: no Vast endpoint named 'ep-jobs' in this account"),
        ("wrong", "vast: Vast refused the API key (HTTP 401): check VAST_API_KEY"),
    ],
)
async def test_a_missing_endpoint_or_a_refused_key_is_exit_2_with_one_line(queues, key, said) -> None:
    async with running_emulator(api_key="k") as emu:
        vast = VastClient(key, webserver_url=emu.url, autoscaler_url=emu.url)
        out = io.StringIO()
        try:
            assert await check(config_for(("jobs", redis_source("list=" + queues["list"]))), out=out, vast=vast) == 2
        finally:
            await vast.close()
    assert out.getvalue().rstrip().splitlines()[-1] == said
    assert "endpoint ep-jobs:" not in out.getvalue()
