"""Command line: parse commands and flags, then call into the module that does the work."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from controller import __version__

#: Exit code for bad input (config, URL, flags), as argparse uses.
EXIT_USAGE = 2


def _fail(message: str) -> int:
    print(f"vast-queue-scaler: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_depth(args: argparse.Namespace) -> int:
    from controller.sources import SourceError, SourceURLError, read_once

    try:
        depth = asyncio.run(read_once(args.url, timeout=args.timeout))
    except SourceURLError as exc:
        return _fail(str(exc))
    except SourceError as exc:
        print(f"vast-queue-scaler: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(depth.as_dict()))
    else:
        print(f"waiting={depth.waiting} in_flight={depth.in_flight} total={depth.total}")
    return 0


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from controller.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from controller.config_load import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc))
    from controller.check import check
    from controller.vast import VastClient

    async def checked() -> int:
        vast = VastClient(config.vast.api_key.get_secret_value(), webserver_url=config.vast.webserver_url,
                          autoscaler_url=config.vast.autoscaler_url)  # fmt: skip
        try:
            return await check(config, vast=vast)
        finally:
            await vast.close()

    return asyncio.run(checked())


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.config import Config
    from controller.config_load import ConfigError, load_config
    from controller.service import run

    def load() -> Config:
        return load_config(args.config, metrics_port=args.metrics_port)

    try:
        config = load()
    except ConfigError as exc:
        return _fail(str(exc))
    return asyncio.run(run(config, reload=load))


def _cmd_emulator(args: argparse.Namespace) -> int:
    from controller.emulator import EmulatorConfigError, serve

    try:
        return asyncio.run(serve(args))
    except EmulatorConfigError as exc:
        return _fail(str(exc))


def _cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import main as demo

    if args.duration <= 0:
        return _fail("--duration: must be > 0 seconds")
    if args.cold_start < 0:
        return _fail("--cold-start: must be >= 0 seconds")
    return demo(
        duration=args.duration, live=not args.no_live, json_output=args.json, seed=args.seed,
        trace=args.trace, out=args.out, cold_start=args.cold_start,
    )  # fmt: skip


def _cmd_simulate(args: argparse.Namespace) -> int:
    from controller.simulation.report import run_cli

    try:
        return run_cli(
            everything=args.all, traces=args.trace, policies=args.policy, out=args.out,
            frontier=args.frontier, week=args.week,
        )
    except ValueError as exc:
        return _fail(str(exc))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vast-queue-scaler",
        description="Keep Vast.ai Serverless sessions equal to the work in your own queue.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config_help = "YAML config file (default: $VQS_CONFIG, else environment variables only)"

    p = sub.add_parser("run", help="run the controller: keep sessions equal to queued work")
    p.add_argument("--config", help=config_help)
    p.add_argument("--metrics-port", type=int, default=None, help="metrics/health port (default 9464)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("check", help="validate the config and read every source once")
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("depth", help="read one queue's depth from a source URL")
    p.add_argument("url", help="source URL, e.g. 'redis://127.0.0.1:6379/0?stream=jobs&group=g'")
    p.add_argument("--json", action="store_true", help='print {"waiting", "in_flight", "total"}')
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before the read fails (default 5)")
    p.set_defaults(func=_cmd_depth)

    p = sub.add_parser("config-schema", help="print the config file's JSON Schema")
    p.set_defaults(func=_cmd_config_schema)

    p = sub.add_parser("emulator", help="serve a local Vast Serverless emulator")
    p.add_argument("--host", default=None, help="listen address (default: the config's, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: the config's, else 8080)")
    p.add_argument("--config", help="emulator YAML (endpoints, workers, faults)")
    p.add_argument("--workers", choices=["process", "inprocess"], default=None,
                   help="worker kind (default: the config's, else inprocess)")  # fmt: skip
    p.add_argument("--cold-start", type=float, default=None, metavar="SECONDS", help="new workers' boot time")
    p.add_argument("--worker-flavor", choices=["sessions", "reserve"], default=None,
                   help="null worker flavor (default: the config's, else sessions)")  # fmt: skip
    p.set_defaults(func=_cmd_emulator)

    p = sub.add_parser(
        "demo", help="the whole system on this machine: emulator, queue, consumers, producer, controller"
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--no-live", action="store_true", help="plain log lines instead of the live view")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the text summary")
    p.add_argument("--seed", type=int, default=1, help="seed of the load's arrivals and job lengths")
    p.add_argument("--trace", metavar="FILE", help="play a CSV of seconds,jobs[,service_seconds] instead")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="where outputs go (default demo-out)")
    p.add_argument(
        "--cold-start", type=float, default=3.0, metavar="SECONDS",
        help="emulated worker cold start (default 3)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "simulate", help="replay job traces against our policy and KEDA-style baselines (virtual time)"
    )
    p.add_argument(
        "--all", action="store_true",
        help="every built-in trace and policy; write results.md, results.png and traces/ to --out",
    )
    p.add_argument(
        "--trace", action="append", metavar="NAME|FILE.csv",
        help="a built-in trace or a CSV of seconds,jobs[,service_seconds] (repeatable; default: all)",
    )
    p.add_argument("--policy", action="append", metavar="NAME", help="a policy (repeatable; default: all)")
    p.add_argument(
        "--frontier", action="store_true",
        help="sweep our fixed settings and wait targets on every trace (or each --trace) against the "
        "KEDA baselines and the oracle; write frontier.md and frontier.png to --out (default bench)",
    )  # fmt: skip
    p.add_argument(
        "--week", action="store_true",
        help="every policy on the week-long trace, each in its own process, with its wall "
        "time and peak memory; write week.md to --out (default bench)",
    )  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="write the report here (default with --all, --frontier or --week: bench)")
    p.set_defaults(func=_cmd_simulate)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
