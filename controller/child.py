"""`python -m controller run --config FILE` as a child process, for the demo, tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import IO, Any


def clean_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without VQS_*/VAST_* variables (they would override the file)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("VQS_", "VAST_"))}
    return {**env, **(extra or {})}


async def start_controller(
    config_path: Path, output: IO[bytes] | int, *, env: dict[str, str] | None = None, **options: Any
) -> asyncio.subprocess.Process:
    """Start the controller on `config_path`, its output to `output`; `env` adds variables."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller", "run", "--config", str(config_path),
        stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.STDOUT,
        env=clean_environment(env), **options,
    )  # fmt: skip
