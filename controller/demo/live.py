"""What the demo shows while it runs: a rich live panel, or one plain line per second (--no-live)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from controller.demo.report import Sample


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one frame shows."""

    sample: Sample
    phase: str  # starting, load, draining, stopping
    produced: int  # jobs enqueued so far
    planned: int  # jobs the load shape holds
    load_elapsed: float  # seconds of the load shape played
    load_seconds: float  # the load shape's length


def render(snap: Snapshot) -> RenderableType:
    """One frame: the load's progress, then the queue, the sessions and the workers side by side."""
    s = snap.sample
    table = Table.grid(padding=(0, 3))
    for _ in range(4):
        table.add_column()
    workers = ", ".join(f"{state} {n}" for state, n in sorted(s.workers.items()) if n) or "none"
    table.add_row(
        _cell("waiting", s.waiting),
        _cell("in flight", s.in_flight),
        _cell("sessions open", s.sessions_open),
        _cell("sessions opening", s.sessions_opening),
    )
    table.add_row(
        _cell("jobs produced", f"{snap.produced}/{snap.planned}"),
        _cell("jobs done", s.jobs_done),
        _cell("ready workers", s.ready_workers),
        _cell("workers", workers),
    )
    load = min(snap.load_elapsed, snap.load_seconds)
    progress = Table.grid(padding=(0, 1))
    progress.add_row(
        Text("load", style="bold"),
        ProgressBar(total=max(snap.load_seconds, 1e-9), completed=load, width=40),
        Text(f"{load:4.0f}/{snap.load_seconds:.0f} s  {snap.phase}"),
    )
    return Panel(Group(progress, Text(""), table), title="vast-queue-scaler demo", expand=False)


def _cell(label: str, value: object) -> Text:
    return Text.assemble((f"{label}\n", "dim"), (str(value), "bold"))


def line(snap: Snapshot) -> str:
    """The same frame as one log line."""
    s = snap.sample
    workers = " ".join(f"{state}={n}" for state, n in sorted(s.workers.items()) if n) or "none"
    return (
        f"t={s.t:5.1f}s {snap.phase:<8} produced={snap.produced}/{snap.planned} waiting={s.waiting} "
        f"in_flight={s.in_flight} sessions_open={s.sessions_open} opening={s.sessions_opening} "
        f"workers[{workers}] done={s.jobs_done}"
    )


class Display:
    """Shows snapshots on `stream`: a live panel on a terminal, else (or with live=False) lines."""

    def __init__(self, stream: TextIO, live: bool):
        self.console = Console(file=stream)
        self.live = live and self.console.is_terminal
        self._live: Live | None = None

    def message(self, text: str) -> None:
        """A line above the live panel (or in the log)."""
        if self._live is not None:
            self._live.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.console.file, flush=True)

    def show(self, snap: Snapshot) -> None:
        if not self.live:
            print(line(snap), file=self.console.file, flush=True)
        elif self._live is None:
            self._live = Live(render(snap), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        else:
            self._live.update(render(snap), refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
