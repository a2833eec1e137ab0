"""The `process` worker kind: each emulated worker is one real null worker process.

A worker is `python -m controller.emulator.null_worker` (the real `vastai` worker library) with
its own free ports, temporary working directory and `CONTAINER_ID`, reporting to the emulator
through `REPORT_ADDR`, plus an optional consumer command started beside it (the queue consumer
an instance would run). Both share one process group, so stopping the worker kills both; they
also get SIGTERM if the emulator itself dies, so a crashed test leaves no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from controller.ports import free_port

STOP_GRACE_SECONDS = 3.0
LOG_TAIL_BYTES = 2000
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the emulator's process goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class WorkerPorts:
    worker: int  # the library's public port (WORKER_PORT): handlers and /session/*
    internal: int  # the library's plain-http port for in-instance calls (WORKER_HTTP_PORT)
    control: int  # the null worker's control server (NULL_CONTROL_PORT)
    health: int  # the consumer's /health (HEALTH_PORT), when it serves one

    @classmethod
    def pick(cls) -> WorkerPorts:
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        return cls(*sorted(ports))


class NullWorkerProcess:
    """One null worker process (and its consumer), started and stopped as a unit."""

    def __init__(
        self,
        worker_id: int,
        report_addr: str,
        *,
        flavor: str = "sessions",
        consumer: str | list[str] | None = None,
        queue_url: str | None = None,
        env: dict[str, str] | None = None,
        consumer_env: dict[str, str] | None = None,
        consumer_health: bool = False,
    ):
        self.worker_id = worker_id
        self.report_addr = report_addr
        self.flavor = flavor
        self.consumer_command = shlex.split(consumer) if isinstance(consumer, str) else consumer
        self.queue_url = queue_url
        self.extra_env = env or {}
        self.consumer_env = consumer_env or {}
        self.consumer_health = consumer_health and self.consumer_command is not None
        self.ports = WorkerPorts.pick()
        self.workdir: Path | None = None
        self._worker: asyncio.subprocess.Process | None = None
        self._consumer: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The worker's address as the library reports it (`url` in /worker_status/)."""
        return f"http://127.0.0.1:{self.ports.worker}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.control}"

    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.returncode is None

    @property
    def exit_code(self) -> int | None:
        return None if self._worker is None else self._worker.returncode

    def environment(self) -> dict[str, str]:
        """What an instance gives the worker, plus where to find the emulator."""
        return {
            **os.environ,
            "WORKER_PORT": str(self.ports.worker),
            f"VAST_TCP_PORT_{self.ports.worker}": str(self.ports.worker),
            "WORKER_HTTP_PORT": str(self.ports.internal),
            "NULL_CONTROL_PORT": str(self.ports.control),
            "NULL_CONTROL_URL": self.control_url,
            "PUBLIC_IPADDR": "127.0.0.1",
            "CONTAINER_ID": str(self.worker_id),
            "VAST_WORKER_ID": str(self.worker_id),
            "REPORT_ADDR": self.report_addr,
            "MASTER_TOKEN": f"emulator-{self.worker_id}",
            "USE_SSL": "false",
            "UNSECURED": "true",
            "NULL_WORKER_FLAVOR": self.flavor,
            **({"QUEUE_URL": self.queue_url} if self.queue_url else {}),
            **({"HEALTH_PORT": str(self.ports.health),
                "BACKEND_HEALTH_URL": f"http://127.0.0.1:{self.ports.health}/health"} if self.consumer_health else {}),
            **self.extra_env,
        }  # fmt: skip

    async def start(self) -> None:
        """Spawn the worker, then its consumer in the same process group."""
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vqs-worker-{self.worker_id}-"))
        env = self.environment()
        command = [sys.executable, "-m", "controller.emulator.null_worker", "--flavor", self.flavor]
        self._worker = await spawn(command, self.workdir / "worker.log", env, cwd=self.workdir)
        if self.consumer_command:
            self._consumer = await spawn(
                self.consumer_command, self.workdir / "consumer.log", {**env, **self.consumer_env},
                process_group=self._worker.pid,
            )

    async def stop(self) -> None:
        """Kill the worker's process group (worker + consumer): SIGTERM, then SIGKILL."""
        if self._worker is not None:
            await stop_group(self._worker, [p for p in (self._worker, self._consumer) if p is not None])
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """Crash the worker at once (SIGKILL to its group); `stop()` still reaps it."""
        if self._worker is not None:
            signal_group(self._worker.pid, signal.SIGKILL)

    def log_tail(self, name: str = "worker.log") -> str:
        """The end of the worker's (or consumer's) output, for error messages."""
        if self.workdir is None:
            return ""
        try:
            data = (self.workdir / name).read_bytes()
        except OSError:
            return ""
        return data[-LOG_TAIL_BYTES:].decode(errors="replace")


async def spawn(
    command: list[str], log_path: Path, env: dict[str, str], *, cwd: Path | None = None, process_group: int = 0
) -> asyncio.subprocess.Process:
    """Start `command` with output to `log_path`, in a new (or the given) process group.

    Without `cwd` it runs where the emulator was started: a consumer given as a relative path
    (a script beside the emulator's config) is found where the user sees it.
    """
    with open(log_path, "wb") as log:
        return await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log,
            stderr=asyncio.subprocess.STDOUT, process_group=process_group, preexec_fn=_die_with_parent,
        )  # fmt: skip


async def stop_group(leader: asyncio.subprocess.Process, processes: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM the leader's process group, SIGKILL it after a grace period; reap `processes`."""
    signal_group(leader.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), STOP_GRACE_SECONDS)
    except TimeoutError:
        signal_group(leader.pid, signal.SIGKILL)
        await asyncio.gather(*(p.wait() for p in processes))


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
