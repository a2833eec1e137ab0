"""A local Vast Serverless that the unchanged `vastai` SDK cannot tell from the real one.

Modules: config (settings, defaults, validation), engine (per-endpoint routing, scaling, billing;
no I/O), workers (the pool and the two worker kinds), inprocess (virtual workers' HTTP side),
process_workers + null_worker (real null worker processes), faults, app (routes and the server),
testing (an async context manager for tests).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from controller.emulator.config import EmulatorConfig, EmulatorConfigError, build_config, load_config

__all__ = ["EmulatorConfig", "EmulatorConfigError", "build_config", "load_config", "serve"]


async def serve(args: argparse.Namespace) -> int:
    """Run the emulator from the CLI's parsed flags until SIGINT or SIGTERM."""
    from controller.emulator.app import EmulatorServer

    config = load_config(
        args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        cold_start_seconds=args.cold_start,
        worker_flavor=getattr(args, "worker_flavor", None),
    )
    server = EmulatorServer(config)
    await server.start()
    names = ", ".join(e.name for e in config.endpoints)
    print(f"vast-queue-scaler emulator: {server.url} ({config.workers} workers, endpoints: {names}); "
          f"state at {server.url}/_emulator/state", file=sys.stderr, flush=True)  # fmt: skip
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await server.stop()
    return 0
