"""`vqs-consumer run module:function --source URL`: the runtime from the command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vqs_consumer import serve
from vqs_consumer.health import Monitor
from vqs_consumer.queues import QueueError
from vqs_consumer.runner import Runner
from vqs_consumer.settings import Settings

EXIT_SETUP = 1
EXIT_USAGE = 2
#: Settings that also come from the environment the null PyWorker's template sets.
ENVIRONMENT = {"source": "QUEUE_URL", "control_port": "NULL_CONTROL_PORT", "health_port": "HEALTH_PORT"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqs-consumer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="consume a queue with a handler function until SIGTERM")
    run.add_argument("target", metavar="module:function", help="the handler, e.g. myapp.work:render or path/to/file.py:render")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    for name, field in Settings.model_fields.items():
        variable = ENVIRONMENT.get(name)
        help_text = field.description or ""
        if variable:
            help_text += f" (env {variable})"
        if field.default is not None and not field.is_required() and field.default_factory is None:
            help_text += f" (default {field.default})"
        run.add_argument("--" + name.replace("_", "-"), dest=name, metavar=name.upper(), help=help_text)
    return parser


def load_handler(target: str) -> Any:
    """The function named by `module:function` (or `path/file.py:function`), imported from the working directory."""
    module_name, colon, attribute = target.rpartition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"handler {target!r}: expected module:function, e.g. myapp.work:render")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        sys.path.insert(0, str(path.parent))
        module_name = path.stem
    elif os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"handler {target!r}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"handler {target!r}: module {module_name!r} has no {attribute!r}") from None


def settings_from(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(args, name)
        if value is None and name in ENVIRONMENT:
            value = os.environ.get(ENVIRONMENT[name]) or None
        if value is not None:
            values[name] = value
    return Settings(**values)


def _settings_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        flag = "--" + name.replace("_", "-") if name else "settings"
        if name in ENVIRONMENT:
            flag += f" (or {ENVIRONMENT[name]})"
        problems.append(f"{flag}: {error['msg']}")
    return "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s vqs-consumer %(levelname)s %(message)s")
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        return _fail(_settings_error(exc), EXIT_USAGE)
    # /health first: the worker library checks it once ready, and a handler may take long to import.
    monitor = Monitor(settings)
    try:
        monitor.start()
    except OSError as exc:
        return _fail(f"cannot serve /health on {settings.health_host}:{settings.health_port}: {exc}", EXIT_SETUP)
    try:
        try:
            runner = Runner(settings, load_handler(args.target), monitor=monitor)
        except (ValueError, TypeError) as exc:  # QueueURLError is a ValueError; TypeError: not a usable handler
            return _fail(str(exc), EXIT_USAGE)
        asyncio.run(serve(runner))
    except QueueError as exc:
        return _fail(str(exc), EXIT_SETUP)
    finally:
        monitor.stop()
    return 0


def _fail(message: str, code: int) -> int:
    print(f"vqs-consumer: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
