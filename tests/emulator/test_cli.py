"""`vast-queue-scaler emulator`: flags over the config file, a clean stop, config errors named."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import yaml
from emulator_support import call
from support import eventually

from controller.cli import main as cli_main
from controller.ports import free_port


async def test_the_cli_serves_the_configured_endpoints_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "emulator.yaml"
    config.write_text(yaml.safe_dump({
        "api_key": "cli-key", "port": 1, "cold_start_seconds": 9,
        "endpoints": [{"name": "jobs", "max_workers": 3, "inactivity_timeout": 4}],
    }))  # fmt: skip
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller", "emulator", "--config", str(config), "--port", str(port),
        "--cold-start", "0.25", "--worker-flavor", "reserve", stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        state = await eventually(lambda: _state(url), 20, "the emulator to listen")
        (endpoint,) = state["endpoints"]
        assert (endpoint["name"], endpoint["params"]["max_workers"]) == ("jobs", 3)
        assert endpoint["params"]["cold_start_seconds"] == 0.25, "the flag wins over the file"
        assert (state["workers_kind"], state["worker_flavor"]) == ("inprocess", "reserve")
        status, listing = await call("GET", f"{url}/api/v0/endptjobs/", headers={"Authorization": "Bearer cli-key"})
        assert status == 200 and listing["results"][0]["inactivity_timeout"] == 4
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, stderr.decode()
    assert "cli-key" not in stderr.decode(), "the account key is not logged"


async def _state(url: str) -> dict | None:
    try:
        status, state = await call("GET", f"{url}/_emulator/state")
    except aiohttp.ClientError:
        return None
    return state if status == 200 else None


def test_a_bad_config_exits_2_naming_the_field(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"endpoints": [{"name": "jobs", "target_util": 2}], "workres": "x"}))
    assert cli_main(["emulator", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "endpoints.0.target_util" in error and "workres" in error
    assert cli_main(["emulator", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
