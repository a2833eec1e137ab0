"""`vast-queue-scaler demo`: emulator, queue, consumers, producer and the real controller, end to end.

The order of a run: pick the queue, start the emulator (one endpoint `demo`, null worker
processes, the reference consumer beside each), write demo-out/config.yaml and start
`python -m controller run` on it, play the load shape, wait (bounded) for the queue to drain and
everything to return to zero, SIGTERM the controller, stop the emulator, write the outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import secrets
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as redis
import yaml

from controller.demo.live import Display, Snapshot
from controller.demo.load import Job, TraceError, from_csv, trapezoid
from controller.demo.observe import ObserveError, Observer, billing, sessions_held, settled_state
from controller.demo.processes import ControllerProcess, DemoError
from controller.demo.producer import Producer, create_group, pending, read_results
from controller.demo.queue import open_queue
from controller.demo.report import Sample, at_zero, plot, succeeded, summarize
from controller.emulator.config import build_config
from controller.emulator.testing import running_emulator
from controller.ports import free_port
from controller.sources import from_url

SCALER = ENDPOINT = "demo"
GROUP = "demo-consumers"
#: The endpoint settings Vast's null-worker tests were run with (issue 5).
ENDPOINT_PARAMS = {
    "target_util": 1.0,
    "min_load": 0,
    "max_queue_time": 1,
    "target_queue_time": 0.5,
    "inactivity_timeout": 10,
    "max_workers": 20,
    # No spare workers booted ahead of demand (Vast's default is 5): a laptop runs every worker.
    "cold_workers": 0,
}
CONSUMER = Path(__file__).resolve().parents[2] / "examples" / "consumer" / "consumer.py"
#: The default load: ramp to PEAK_RATE jobs/s of about JOB_SECONDS each (~6 units in flight).
PEAK_RATE = 1.5
JOB_SECONDS = 4.0
SAMPLE_EVERY = 1.0
#: After the load: the last jobs finish, then idle workers stop after inactivity_timeout.
DRAIN_TIMEOUT = 90.0
#: With work outstanding and nothing moving for this long (plus the cold start): no job completed,
#: no session opened, no worker newly ready, the run has failed: stop and say why.
STALL_SECONDS = 30.0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


@dataclass
class Options:
    duration: float = 60.0
    live: bool = True
    json: bool = False
    seed: int = 1
    trace: Path | None = None
    out: Path = Path("demo-out")
    cold_start: float = 3.0
    stall_seconds: float = STALL_SECONDS

    @property
    def stall_limit(self) -> float:
        return self.stall_seconds + self.cold_start


@dataclass
class Run:
    """What one run collected."""

    jobs: list[Job]
    scenario: str
    load_seconds: float
    samples: list[Sample] = field(default_factory=list)
    phase: str = "starting"


def load_jobs(options: Options) -> tuple[list[Job], str, float]:
    """The jobs, the scenario's name and the load's length in seconds."""
    # The name titles the plot and the summary: with the seed, it is enough to run it again.
    if options.trace is not None:
        jobs = from_csv(options.trace, JOB_SECONDS, options.seed)
        last = max((job.at for job in jobs), default=0.0)
        return jobs, f"trace {options.trace.name}, {last:g} s, seed {options.seed}", last
    jobs = trapezoid(options.duration, PEAK_RATE, JOB_SECONDS, options.seed)
    return (
        jobs,
        f"trapezoid load, {options.duration:g} s, peak {PEAK_RATE:g} jobs/s of ~{JOB_SECONDS:g} s, "
        f"seed {options.seed}",
        options.duration,
    )


def controller_config(
    *, source: str, emulator_url: str, api_key: str, out: Path, port: int
) -> dict[str, Any]:
    """The controller's config: nothing in it is specific to the demo but the addresses."""
    return {
        "vast": {"api_key": api_key, "url": emulator_url},
        "metrics_host": "127.0.0.1",
        "metrics_port": port,
        "state_dir": str(out / "state"),
        "log_format": "text",
        "scalers": [
            {
                "name": SCALER,
                "source": source,
                "endpoint": ENDPOINT,
                "poll_interval": "500ms",
                "policy": {"max_sessions": ENDPOINT_PARAMS["max_workers"]},
                # Releases arrive as on_close callbacks at the controller's own server.
                "session": {"callback_url": f"http://127.0.0.1:{port}"},
            }
        ],
    }


def emulator_config(*, source: str, results_key: str, cold_start: float, api_key: str) -> Any:
    # The consumer runtime beside each worker. Jobs last seconds: a stopped worker's job is taken
    # over within a 10 s lease, and one still running when its worker is stopped is handed back
    # before the emulator's SIGKILL.
    command = shlex.join([
        sys.executable, "-m", "vqs_consumer", "run", f"{CONSUMER}:work", "--results", results_key,
        "--lease", "10", "--grace", "2",
    ])  # fmt: skip
    return build_config(
        {
            "api_key": api_key,
            "workers": "process",
            "cold_start_seconds": cold_start,
            "endpoints": [{"name": ENDPOINT, **ENDPOINT_PARAMS}],
            # Each consumer serves /health on its own port (HEALTH_PORT), the worker's BACKEND_HEALTH_URL.
            "consumer": {"command": command, "queue_url": source, "health": True},
        }
    )


async def run_demo(options: Options, display: Display) -> dict[str, Any]:
    """One whole run; returns the summary (also written to OUT/summary.json)."""
    begun = time.monotonic()
    run = Run(*load_jobs(options))
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    # A ledger left by an earlier run names sessions of an emulator that is gone.
    shutil.rmtree(out / "state", ignore_errors=True)
    queue = await open_queue()
    display.message(f"queue: {queue.description}")
    run_id = secrets.token_hex(4)
    stream, results_key = f"vqs-demo:{run_id}:jobs", f"vqs-demo:{run_id}:results"
    source = f"{queue.url}?stream={stream}&group={GROUP}"
    client = redis.from_url(queue.url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5)
    try:
        await create_group(client, stream, GROUP)
        api_key = f"demo-{secrets.token_hex(8)}"
        config = emulator_config(
            source=source, results_key=results_key, cold_start=options.cold_start, api_key=api_key
        )
        async with running_emulator(config) as emulator:
            display.message(
                f"emulator: {emulator.url} (null worker processes, cold start {options.cold_start:g}s)"
            )
            summary = await _with_emulator(
                run, options, display, client=client, source=source, stream=stream,
                results_key=results_key, emulator=emulator,
            )  # fmt: skip
    finally:
        with contextlib.suppress(redis.RedisError, OSError):
            await client.delete(stream, results_key)
        await client.aclose()
        await queue.close()
    summary = {"scenario": summary.pop("scenario"), "seconds": round(time.monotonic() - begun, 1),
               "queue": queue.kind, **summary}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(
        run.samples,
        out / "timeline.png",
        f"vast-queue-scaler demo: {run.scenario}",
        load_end=run.load_seconds,
    )
    return summary


async def _with_emulator(
    run: Run,
    options: Options,
    display: Display,
    *,
    client: redis.Redis,
    source: str,
    stream: str,
    results_key: str,
    emulator: Any,
) -> dict[str, Any]:
    out = options.out
    port = free_port()
    config_path = out / "config.yaml"
    config = controller_config(
        source=source, emulator_url=emulator.url, api_key=emulator.api_key, out=out, port=port
    )
    config_path.write_text(
        "# The controller config `vast-queue-scaler demo` ran with. Its emulator and stream lived only\n"
        "# during the run; point vast.url/api_key, source and endpoint at yours and run it with\n"
        f"#   vast-queue-scaler run --config {config_path}\n" + yaml.safe_dump(config, sort_keys=False)
    )
    controller = ControllerProcess(config_path, out / "controller.log", port)
    display.message(f"controller: {controller.url}/metrics, config {config_path}, log {controller.log_path}")
    producer = Producer(client, stream, run.jobs)
    observer = Observer(
        source=from_url(source), results=client, results_key=results_key, metrics_url=controller.url,
        emulator_url=emulator.url, scaler=SCALER, endpoint=ENDPOINT,
    )  # fmt: skip
    try:
        await controller.start()
        taken_again = await _watch(run, producer, observer, controller, display, options.stall_limit)
        session_seconds = observer.metrics.get("vqs_session_seconds_total", 0.0)
    except Stalled as exc:
        # Stopping the controller closes its sessions (on_shutdown: release); say whether it did.
        await controller.stop()
        left = sessions_held(await settled_state(emulator, ENDPOINT), ENDPOINT)
        ending = "every session is closed" if left == 0 else f"{left} sessions were still open when the emulator stopped"
        raise DemoError(f"{await exc.cause(client, stream, run.samples)}; stopped, {ending}") from None
    finally:
        run.phase = "stopping"
        code = await controller.stop()
        await observer.close()
        await observer.source.close()
    if code not in (0, None):
        display.message(f"the controller exited with {code}; see {controller.log_path}")
    state = await settled_state(emulator, ENDPOINT)
    # The emulator's view (workers, billing, every session event) for a closer look afterwards.
    (out / "emulator-state.json").write_text(json.dumps(state, indent=1) + "\n")
    unfinished = await pending(client, stream, GROUP)
    by_entry = producer.entries
    summary = summarize(
        scenario=run.scenario,
        samples=run.samples,
        produced=producer.produced,
        results=await read_results(client, results_key),
        taken_again={by_entry[e] for e in taken_again if e in by_entry},
        unfinished={by_entry[p.entry_id] for p in unfinished if p.entry_id in by_entry},
        billing=billing(state, ENDPOINT),
        session_seconds=session_seconds,
        sessions_left=sessions_held(state, ENDPOINT),
    )
    summary["unfinished_jobs"] = [
        {
            "job": by_entry.get(p.entry_id, p.entry_id),
            "worker": p.consumer,
            "times_delivered": p.times_delivered,
        }
        for p in unfinished
    ]
    return summary


class Stalled(Exception):
    """Work was outstanding and no job completed for `seconds`."""

    def __init__(self, seconds: float, log_path: Path):
        super().__init__(f"no job completed in {seconds:g}s")
        self.seconds, self.log_path = seconds, log_path

    async def cause(self, client: redis.Redis, stream: str, samples: list[Sample]) -> str:
        """One line naming the first part of the chain that did not do its job."""
        within = f"in {self.seconds:g}s"
        if not any(s.sessions_open for s in samples):
            if any(s.sessions_opening for s in samples):
                return f"sessions were requested but none opened {within}: no worker became ready"
            return f"the controller opened no session {within} (see {self.log_path})"
        try:
            readers = await client.xinfo_consumers(stream, GROUP)
        except redis.RedisError:
            readers = []
        if not readers:
            return f"sessions were open but no consumer read from the stream {within}: the consumers cannot read the queue"
        return f"consumers took jobs but none completed {within}"


async def _watch(
    run: Run, producer: Producer, observer: Observer, controller: ControllerProcess, display: Display,
    stall_limit: float,
) -> set[str]:
    """Play the load and sample every second until back at zero (or the drain time runs out).

    Returns the stream entries seen delivered more than once; raises Stalled when outstanding work
    sees no job complete for `stall_limit` seconds.
    """
    t0 = time.monotonic()
    run.phase = "load"
    playing = asyncio.create_task(producer.run())
    taken_again: set[str] = set()
    drain_deadline: float | None = None
    progress_at, best = t0, (0, 0, 0)
    try:
        while True:
            controller.check_alive()
            sample = await _sample(observer, t0, display)
            if sample is not None:
                run.samples.append(sample)
                now = time.monotonic()
                # Progress is a job done, or the system still coming up (a session opened, a worker
                # ready beyond the most seen): a slow machine boots slowly, a broken chain does not move.
                mark = (sample.jobs_done, sample.sessions_open, sample.ready_workers)
                if any(seen > most for seen, most in zip(mark, best, strict=True)) or sample.waiting + sample.in_flight == 0:
                    progress_at, best = now, tuple(map(max, mark, best))
                elif now - progress_at > stall_limit:
                    raise Stalled(stall_limit, controller.log_path)
                pending_now = await pending(producer.client, producer.stream, GROUP)
                taken_again |= {p.entry_id for p in pending_now if p.times_delivered > 1}
                elapsed = time.monotonic() - t0
                display.show(
                    Snapshot(sample, run.phase, producer.sent, len(run.jobs), elapsed, run.load_seconds)
                )
            if playing.done():
                playing.result()  # a producer failure ends the run here
                if drain_deadline is None:
                    run.phase = "draining"
                    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
                elif sample is not None and at_zero(sample) and sample.jobs_done >= producer.sent:
                    return taken_again
                elif time.monotonic() > drain_deadline:
                    display.message(f"not back at zero within {DRAIN_TIMEOUT:g}s after the load ended")
                    return taken_again
            await asyncio.sleep(SAMPLE_EVERY - (time.monotonic() - t0) % SAMPLE_EVERY)
    finally:
        playing.cancel()


async def _sample(observer: Observer, t0: float, display: Display) -> Sample | None:
    try:
        return await observer.sample(t0)
    except ObserveError as exc:
        display.message(f"skipped a sample: {exc}")
        return None


def print_summary(summary: dict[str, Any], out: Path, stream: TextIO) -> None:
    lines = [
        f"{summary['scenario']}: {summary['seconds']}s in all, queue: {summary['queue']}",
        f"jobs: {summary['jobs_produced']} produced, {summary['jobs_completed']} completed, "
        f"{summary['jobs_lost']} lost, {summary['jobs_interrupted']} interrupted",
        _queue_wait(summary),
        f"session-seconds {summary['session_seconds']}, "
        f"worker-seconds billed {summary['worker_seconds_billed']}",
        f"|sessions open - in flight|: max {summary['max_abs_sessions_minus_in_flight']}, "
        f"mean {summary['mean_abs_sessions_minus_in_flight']}",
        f"returned to zero: {'yes' if summary['returned_to_zero'] else 'NO'}",
        f"wrote {out / 'summary.json'}, {out / 'timeline.png'}, {out / 'config.yaml'}",
    ]
    print("\n".join(lines), file=stream, flush=True)


def _queue_wait(summary: dict[str, Any]) -> str:
    if summary["queue_wait_p50_seconds"] is None:
        return "queue wait: none measured (no job started)"
    return f"queue wait: p50 {summary['queue_wait_p50_seconds']}s, p95 {summary['queue_wait_p95_seconds']}s"


async def _until_stopped(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """`run`, cancelled on SIGTERM as asyncio.run cancels it on Ctrl-C, so its cleanup runs."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run


def main(
    *,
    duration: float = 60.0,
    live: bool = True,
    json_output: bool = False,
    seed: int = 1,
    trace: str | Path | None = None,
    out: str | Path = "demo-out",
    cold_start: float = 3.0,
) -> int:
    """Run the demo; 0 when every job completed once and everything returned to zero."""
    options = Options(
        duration=duration, live=live, json=json_output, seed=seed,
        trace=Path(trace) if trace is not None else None, out=Path(out), cold_start=cold_start,
    )  # fmt: skip
    if not CONSUMER.is_file():
        print(
            f"vast-queue-scaler demo: the reference consumer {CONSUMER} is missing (run from a clone)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if importlib.util.find_spec("vqs_consumer") is None:
        print(
            "vast-queue-scaler demo: the consumer runtime is not installed: pip install -e './consumer[redis]' "
            "(make demo does it)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    display = Display(sys.stderr, live=options.live)
    try:
        summary = asyncio.run(_until_stopped(run_demo(options, display)))
    except (DemoError, TraceError) as exc:
        display.close()
        print(f"vast-queue-scaler demo: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):
        display.close()
        print("vast-queue-scaler demo: interrupted; everything it started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        display.close()
    if options.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, options.out, sys.stdout)
    return 0 if succeeded(summary) else EXIT_FAILED
