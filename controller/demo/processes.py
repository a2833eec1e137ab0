"""The demo's child processes: the controller it runs, and a guard so none outlives the demo."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import time
from pathlib import Path

import aiohttp

from controller.child import start_controller

CONTROLLER_START_TIMEOUT = 30.0
CONTROLLER_STOP_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1


class DemoError(Exception):
    """The demo could not run; the message says which part failed and where its log is."""


def die_with_parent() -> None:
    """Runs in a child before exec (Linux): SIGTERM it when the demo's process dies unexpectedly."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ControllerProcess:
    """`python -m controller run --config FILE` with its output in a log file."""

    def __init__(self, config_path: Path, log_path: Path, port: int):
        self.config_path, self.log_path, self.port = config_path, log_path, port
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # Its own process group: a Ctrl-C reaches the demo alone, which stops everything in order.
        with self.log_path.open("wb") as log:
            self.process = await start_controller(
                self.config_path, log, process_group=0, preexec_fn=die_with_parent
            )
        deadline = time.monotonic() + CONTROLLER_START_TIMEOUT
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise DemoError(
            f"the controller did not come up within {CONTROLLER_START_TIMEOUT:g}s; see {self.log_path}"
        )

    def check_alive(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise DemoError(
                f"the controller exited with {self.process.returncode}; see {self.log_path}:\n{self.tail()}"
            )

    def tail(self, size: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-size:]
        return ""

    async def stop(self) -> int | None:
        """SIGTERM (it releases its sessions), SIGKILL if it overstays."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), CONTROLLER_STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


