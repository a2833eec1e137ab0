"""`check`: read every scaler's source once and print one table row per scaler; then, given a
Vast client, each endpoint's parameters that differ from what sessions-equal-work needs."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TextIO

from controller.config import Config, ScalerConfig
from controller.endpoint_params import mismatches
from controller.masking import redact
from controller.sources import QueueDepth, from_url
from controller.vast import VastClient, VastError

#: A read that takes longer than this counts as failed (sources have their own, shorter timeouts).
READ_TIMEOUT_SECONDS = 15.0
#: Vast refuses the API key or an endpoint does not exist (as `run` exits at start).
EXIT_REFUSED = 2
_COLUMNS = ("SCALER", "SOURCE", "ENDPOINT", "WAITING", "IN_FLIGHT", "TOTAL")


@dataclass(frozen=True)
class Reading:
    scaler: ScalerConfig
    display_url: str
    depth: QueueDepth | None = None
    error: str | None = None


async def read_source(scaler: ScalerConfig, url: str, timeout: float = READ_TIMEOUT_SECONDS) -> Reading:
    """One depth read of one of the scaler's queues; a failure becomes the reading's error text."""
    display_url = redact(url)
    try:
        source = from_url(url)
    except Exception as exc:  # a source that cannot even be built is a failed row, not a crash
        return Reading(scaler, display_url, error=_describe(exc))
    display_url = source.display_url
    try:
        depth = await asyncio.wait_for(source.depth(), timeout)
    except TimeoutError:
        return Reading(scaler, display_url, error=f"no answer within {timeout:g}s")
    except Exception as exc:
        return Reading(scaler, display_url, error=_describe(exc))
    finally:
        try:
            await asyncio.wait_for(source.close(), timeout)
        except Exception:  # closing is best effort; the reading is what check reports
            pass
    return Reading(scaler, display_url, depth=depth)


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return redact(" ".join(text.split()))


def format_table(readings: list[Reading]) -> str:
    rows = [list(_COLUMNS)]
    notes = [""]
    for reading in readings:
        cells = [reading.scaler.name, reading.display_url, reading.scaler.endpoint]
        if reading.depth is not None:
            depth = reading.depth
            cells += [str(depth.waiting), str(depth.in_flight), str(depth.total)]
        else:
            cells.append(f"ERROR: {reading.error}")
        rows.append(cells)
        notes.append(f"  WARNING: {reading.depth.missing}; read as empty" if reading.depth and reading.depth.missing else "")
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(_COLUMNS))]
    numeric = {3, 4, 5}

    def line(row: list[str]) -> str:
        if len(row) < len(_COLUMNS):  # an error row: the message spans the number columns
            return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        return "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()

    return "\n".join(line(row) + note for row, note in zip(rows, notes, strict=True))


async def endpoint_report(vast: VastClient, name: str) -> tuple[bool, str]:
    """(readable, one line) about one endpoint's parameters."""
    try:
        params = await vast.endpoint(name).parameters()
    except VastError as exc:
        return False, f"endpoint {name}: ERROR: cannot read its parameters: {exc}"
    found = mismatches(params)
    if not found:
        return True, f"endpoint {name}: parameters as recommended"
    return True, f"endpoint {name}: " + "; ".join(map(str, found))


async def check(config: Config, out: TextIO | None = None, vast: VastClient | None = None) -> int:
    """Read every source (and with `vast`, every endpoint) once, concurrently; 0 when all answered."""
    out = out or sys.stdout
    readings = list(
        await asyncio.gather(*(read_source(s, spec.url) for s in config.scalers for spec in s.source_specs))
    )
    failed = sum(reading.error is not None for reading in readings)
    missing = sum(reading.depth is not None and reading.depth.missing is not None for reading in readings)
    print(format_table(readings), file=out)
    total = len(readings)
    unreadable = 0
    if vast is not None:
        names = sorted({s.endpoint for s in config.scalers})
        try:
            await vast.preflight(names)
        except VastError as exc:
            if exc.fatal:
                # Nothing can work until someone fixes the key or the endpoint: one line, exit 2.
                print(f"\nvast: {exc}", file=out)
                return EXIT_REFUSED
            # Vast unreachable: each endpoint's line below says so.
        reports = await asyncio.gather(*(endpoint_report(vast, name) for name in names))
        print("", *(line for _, line in reports), sep="\n", file=out)
        unreadable = sum(not readable for readable, _ in reports)
    problems = [f"{failed} of {total} source{'s' * (total != 1)} failed"] if failed else []
    if unreadable:
        problems.append(f"{unreadable} endpoint{'s' * (unreadable != 1)} unreadable")
    if problems:
        print(f"\n{'; '.join(problems)}", file=out)
        return 1
    warned = f" ({missing} read as empty: see WARNING)" if missing else ""
    print(f"\nconfig ok; {total} source{'s' * (total != 1)} read{warned}", file=out)
    return 0
