"""The demo: load shapes, producer, queue choice, report, live view; then one short real run."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from rich.console import Console
from support import eventually, free_port

from controller.cli import main as cli_main
from controller.demo.live import Display, Snapshot, line, render
from controller.demo.load import Job, TraceError, from_csv, trapezoid
from controller.demo.observe import billing, parse_metrics, sessions_held, settled_state, workers_by_state
from controller.demo.processes import DemoError
from controller.demo.producer import Producer, create_group, pending, read_results
from controller.demo.queue import Queue, open_queue, start_embedded
from controller.demo.report import Sample, at_zero, percentile, plot, succeeded, summarize
from controller.demo.run import Options, load_jobs, print_summary, run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sample(t: float = 0.0, **fields: object) -> Sample:
    values = dict(waiting=0, in_flight=0, sessions_open=0, sessions_opening=0, workers={}, jobs_done=0)
    values.update(fields)
    return Sample(t=t, **values)  # type: ignore[arg-type]


# -- load shapes -------------------------------------------------------------------------------


def test_trapezoid_is_reproducible_and_follows_its_shape() -> None:
    jobs = trapezoid(400, 2.0, 4.0, seed=7)
    assert jobs == trapezoid(400, 2.0, 4.0, seed=7)
    assert jobs != trapezoid(400, 2.0, 4.0, seed=8)
    assert all(0 <= job.at < 400 for job in jobs)
    assert [job.at for job in jobs] == sorted(job.at for job in jobs)
    assert all(4.0 * 0.7 <= job.seconds <= 4.0 * 1.3 for job in jobs)
    # The plateau (middle half) runs at the peak; each ramp averages half of it.
    plateau = sum(100 <= job.at < 300 for job in jobs)
    ramps = len(jobs) - plateau
    assert 0.8 * 400 < plateau < 1.2 * 400
    assert 0.8 * 200 < ramps < 1.2 * 200
    assert sum(job.at < 10 for job in jobs) < sum(100 <= job.at < 110 for job in jobs)


def test_from_csv_reads_counts_service_times_and_comments(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("seconds,jobs\n# a comment\n0,2\n1.5,1,0.25\n\n3,0\n")
    jobs = from_csv(trace, job_seconds=2.0, seed=1)
    assert [job.at for job in jobs] == [0.0, 0.0, 1.5]
    assert all(1.4 <= job.seconds <= 2.6 for job in jobs[:2])
    assert jobs[2].seconds == 0.25


@pytest.mark.parametrize(
    ("text", "message"),
    [("0,two\n", "trace.csv:1: expected"), ("0,1\n-1,1\n", "trace.csv:2: seconds and jobs must be >= 0")],
)
def test_from_csv_names_the_bad_line(tmp_path: Path, text: str, message: str) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    with pytest.raises(TraceError, match=message):
        from_csv(trace, 1.0, 1)


def test_from_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read trace"):
        from_csv(tmp_path / "nope.csv", 1.0, 1)


def test_the_scenario_name_says_how_to_run_it_again(tmp_path: Path) -> None:
    jobs, name, seconds = load_jobs(Options(duration=60, seed=3))
    assert name == "trapezoid load, 60 s, peak 1.5 jobs/s of ~4 s, seed 3"
    assert (jobs, seconds) == (trapezoid(60, 1.5, 4.0, 3), 60)
    trace = tmp_path / "burst.csv"
    trace.write_text("0,2\n7.5,1\n")
    jobs, name, seconds = load_jobs(Options(trace=trace, seed=2))
    assert (name, seconds, len(jobs)) == ("trace burst.csv, 7.5 s, seed 2", 7.5, 3)


# -- report --------------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 95) == 10.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def test_summarize_counts_jobs_waits_and_gaps() -> None:
    produced = {"a": 100.0, "b": 100.0, "c": 101.0, "d": 102.0, "e": 103.0}
    results = [
        {"id": "a", "started_at": 101.0},
        {"id": "b", "started_at": 103.0},
        {"id": "c", "started_at": 101.5},
        {"id": "c", "started_at": 110.0},  # finished twice: interrupted
    ]
    samples = [
        sample(0, waiting=2, in_flight=1, sessions_open=3),
        sample(1, in_flight=2, sessions_open=2, sessions_opening=1, workers={"idle": 2}),
        sample(2, workers={"stopped": 2}),
    ]
    summary = summarize(
        scenario="test", samples=samples, produced=produced, results=results, taken_again={"d"},
        unfinished={"d", "e"},
        billing={"ready_seconds": 10.0, "loading_seconds": 2.5, "inactive_seconds": 7.0, "cost": 0.01},
        session_seconds=9.04,
    )  # fmt: skip
    assert summary["jobs_produced"] == 5
    assert summary["jobs_completed"] == 3
    assert summary["jobs_lost"] == 2
    assert summary["jobs_interrupted"] == 3  # c twice, d taken again, e never acked
    assert summary["queue_wait_p50_seconds"] == 1.0  # waits 1.0, 3.0, 0.5 (the first of c's)
    assert summary["queue_wait_p95_seconds"] == 3.0
    assert summary["worker_seconds_billed"] == 12.5  # ready + loading; stopped workers cost storage only
    assert summary["session_seconds"] == 9.0
    assert summary["max_abs_sessions_minus_in_flight"] == 2
    assert summary["mean_abs_sessions_minus_in_flight"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["returned_to_zero"] is True
    assert summary["final"]["workers"] == {"stopped": 2}
    assert not succeeded(summary)


def test_a_session_the_emulator_still_holds_is_not_zero() -> None:
    summary = summarize(
        scenario="test", samples=[sample()], produced={}, results=[], taken_again=set(), unfinished=set(),
        billing={}, session_seconds=0.0, sessions_left=1,
    )  # fmt: skip
    assert summary["final"]["emulator_sessions_after_stop"] == 1
    assert summary["returned_to_zero"] is False


def test_at_zero_needs_an_empty_queue_no_sessions_and_no_ready_or_loading_worker() -> None:
    assert at_zero(sample(workers={"stopped": 3}))
    assert not at_zero(sample(in_flight=1))
    assert not at_zero(sample(sessions_opening=1))
    assert not at_zero(sample(workers={"loading": 1}))
    assert not at_zero(sample(workers={"idle": 1}))


def test_succeeded_only_when_every_job_completed_once_and_back_at_zero() -> None:
    good = {"jobs_lost": 0, "jobs_interrupted": 0, "returned_to_zero": True}
    assert succeeded(good)
    assert not succeeded({**good, "jobs_lost": 1})
    assert not succeeded({**good, "jobs_interrupted": 1})
    assert not succeeded({**good, "returned_to_zero": False})


def test_plot_writes_a_png(tmp_path: Path) -> None:
    samples = [
        sample(t, waiting=t % 3, in_flight=t % 4, sessions_open=t % 4, workers={"idle": 2}) for t in range(20)
    ]
    plot(samples, tmp_path / "timeline.png", "test")
    assert (tmp_path / "timeline.png").read_bytes().startswith(PNG_MAGIC)


# -- observe and live view -------------------------------------------------------------------------

METRICS = """\
# TYPE vqs_sessions_open gauge
vqs_sessions_open{scaler="demo"} 3.0
vqs_sessions_open{scaler="other"} 9.0
# TYPE vqs_sessions_opening gauge
vqs_sessions_opening{scaler="demo"} 1.0
# TYPE vqs_session_seconds_total counter
vqs_session_seconds_total{scaler="demo"} 42.5
# TYPE vqs_sessions_closed_total counter
vqs_sessions_closed_total{reason="released",scaler="demo"} 4.0
"""


def test_parse_metrics_keeps_the_scalers_unlabelled_series() -> None:
    values = parse_metrics(METRICS, "demo")
    assert values["vqs_sessions_open"] == 3.0
    assert values["vqs_sessions_opening"] == 1.0
    assert values["vqs_session_seconds_total"] == 42.5
    assert "vqs_sessions_closed_total" not in values


def test_emulator_state_reading() -> None:
    state = {
        "endpoints": [
            {"name": "other", "workers": [{"state": "idle"}], "billing": {"ready_seconds": 99}},
            {
                "name": "demo",
                "workers": [{"state": "idle"}, {"state": "idle"}, {"state": "loading"}, {"state": "stopped"}],
                "billing": {"ready_seconds": 12, "loading_seconds": 3.5},
            },
        ]
    }
    assert workers_by_state(state, "demo") == {"idle": 2, "loading": 1, "stopped": 1}
    assert sessions_held(state, "demo") == 0
    state["endpoints"][1]["workers"][0]["sessions"] = [{"session_id": "s1"}]
    assert sessions_held(state, "demo") == 1
    assert billing(state, "demo") == {"ready_seconds": 12.0, "loading_seconds": 3.5}
    assert workers_by_state(state, "missing") == {}


class ReportingEmulator:
    """An emulator whose workers report the sessions ended at stop one read at a time."""

    def __init__(self, held: list[int]):
        self.held, self.reads = held, 0

    async def state(self) -> dict[str, object]:
        held = self.held[min(self.reads, len(self.held) - 1)]
        self.reads += 1
        return {"endpoints": [{"name": "demo", "workers": [{"sessions": [{"session_id": "s"}] * held}]}]}


async def test_sessions_closed_at_stop_are_not_said_left_open_before_their_workers_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A controller that closes its sessions and exits at once: the emulator hears of the ends
    within a worker report (0.1 s), not by the time the demo reads it (gc.freeze made this show)."""
    monkeypatch.setattr("controller.demo.observe.SETTLE_POLL", 0.0)
    emulator = ReportingEmulator([4, 1, 0])
    assert sessions_held(await settled_state(emulator, "demo"), "demo") == 0
    assert emulator.reads == 3
    # A session the controller did leave open still shows once the bound has passed.
    left_open = ReportingEmulator([1])
    assert sessions_held(await settled_state(left_open, "demo", within=0.0), "demo") == 1
    assert left_open.reads == 1


SNAPSHOT = Snapshot(
    sample(12.0, waiting=3, in_flight=5, sessions_open=4, sessions_opening=2,
           workers={"idle": 4, "loading": 2}, jobs_done=17),
    phase="load", produced=25, planned=60, load_elapsed=30.0, load_seconds=60.0,
)  # fmt: skip


def test_live_view_shows_every_number() -> None:
    console = Console(record=True, width=120)
    console.print(render(SNAPSHOT))
    text = console.export_text()
    for expected in ("waiting", "in flight", "sessions open", "sessions opening", "jobs done", "25/60",
                     "idle 4, loading 2", "30/60 s", "load"):  # fmt: skip
        assert expected in text
    assert line(SNAPSHOT).split() == [
        "t=", "12.0s", "load", "produced=25/60", "waiting=3", "in_flight=5", "sessions_open=4", "opening=2",
        "workers[idle=4", "loading=2]", "done=17",
    ]  # fmt: skip


def test_display_without_a_terminal_prints_lines(tmp_path: Path) -> None:
    with (tmp_path / "out.txt").open("w") as stream:
        display = Display(stream, live=True)  # not a terminal: falls back to lines
        display.message("queue: here")
        display.show(SNAPSHOT)
        display.close()
    assert (tmp_path / "out.txt").read_text().splitlines() == ["queue: here", line(SNAPSHOT)]


# -- queue and producer against real servers ------------------------------------------------------


@pytest.fixture
def client(redis_client: aioredis.Redis) -> aioredis.Redis:
    return redis_client


@pytest.fixture
async def stream(client: aioredis.Redis) -> AsyncIterator[str]:
    name = f"vqs-test-demo:{uuid.uuid4().hex}"
    yield name
    await client.delete(name, f"{name}:results")


async def test_producer_plays_jobs_with_their_fields(client: aioredis.Redis, stream: str) -> None:
    await create_group(client, stream, "g")
    await create_group(client, stream, "g")  # a second call is fine
    jobs = [Job(0.0, 1.5), Job(0.0, 2.0), Job(0.1, 0.5)]
    producer = Producer(client, stream, jobs)
    await producer.run()
    assert producer.sent == 3
    entries = await client.xrange(stream)
    assert [fields["id"] for _, fields in entries] == ["job-00000", "job-00001", "job-00002"]
    assert [float(fields["seconds"]) for _, fields in entries] == [1.5, 2.0, 0.5]
    assert {entry_id: fields["id"] for entry_id, fields in entries} == producer.entries
    for _, fields in entries:
        assert float(fields["enqueued_at"]) == producer.produced[fields["id"]]
    assert producer.produced["job-00002"] >= producer.produced["job-00000"] + 0.1


async def test_pending_and_results(client: aioredis.Redis, stream: str) -> None:
    await create_group(client, stream, "g")
    first = await client.xadd(stream, {"id": "a"})
    await client.xadd(stream, {"id": "b"})
    await client.xreadgroup("g", "7", {stream: ">"}, count=1)
    await client.xclaim(stream, "g", "8", 0, [first])  # delivered a second time
    assert [(p.entry_id, p.consumer, p.times_delivered) for p in await pending(client, stream, "g")] == [
        (first, "8", 2)
    ]
    await client.rpush(f"{stream}:results", json.dumps({"id": "a", "started_at": 1.0}))
    assert await read_results(client, f"{stream}:results") == [{"id": "a", "started_at": 1.0}]


async def test_open_queue_prefers_a_reachable_redis(redis_url: str) -> None:
    queue = await open_queue(redis_url)
    assert (queue.kind, queue.url, queue.process) == ("redis", redis_url.split("?")[0], None)
    await queue.close()


async def test_open_queue_starts_an_embedded_server_when_no_redis_answers() -> None:
    queue = await open_queue(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert queue.kind == "embedded"
        assert "embedded valkey-server" in queue.description
        assert "no Redis answered at redis://127.0.0.1:" in queue.description
        client = aioredis.from_url(queue.url, decode_responses=True)
        reader = aioredis.from_url(queue.url, decode_responses=True)
        await create_group(client, "s", "g")
        # The reference consumer's read (COUNT 1, BLOCK) waits instead of answering empty at once...
        read = asyncio.create_task(reader.xreadgroup("g", "c", {"s": ">"}, count=1, block=5000))
        await asyncio.sleep(0.3)
        assert not read.done()
        await client.xadd("s", {"id": "x"})
        # ...and returns the entry as soon as it arrives.
        reply = await asyncio.wait_for(read, 5)
        assert reply[0][1][0][1] == {"id": "x"}
        assert (await client.config_get("save"))["save"] == ""
        await client.aclose()
        await reader.aclose()
    finally:
        await queue.close()
    assert queue.process is not None and queue.process.returncode is not None


async def test_open_queue_without_an_embedded_server_says_how_to_get_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("controller.demo.queue.valkey_server_binary", lambda: None)
    with pytest.raises(DemoError, match=r"^no Redis answered at redis://127\.0\.0\.1:\d+/0, and this platform .*REDIS_URL"):
        await open_queue(f"redis://127.0.0.1:{free_port()}/0")


async def _blocked_clients(client: aioredis.Redis, count: int) -> bool:
    return (await client.info("clients"))["blocked_clients"] == count


def _resp(*args: str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)


async def test_embedded_server_gives_nothing_to_a_reader_that_went_away() -> None:
    """A stopped worker's consumer may leave mid-read; its entry must stay for the others."""
    queue = await start_embedded()
    try:
        client = aioredis.from_url(queue.url, decode_responses=True)
        await create_group(client, "s", "g")
        _, writer = await asyncio.open_connection("127.0.0.1", urlsplit(queue.url).port)
        read = ("XREADGROUP", "GROUP", "g", "gone", "COUNT", "1", "BLOCK", "3000", "STREAMS", "s", ">")
        writer.write(_resp(*read))
        await writer.drain()
        await eventually(lambda: _blocked_clients(client, 1), what="the reader to block")
        writer.close()
        await writer.wait_closed()
        await eventually(lambda: _blocked_clients(client, 0), what="the server to drop the reader")
        await client.xadd("s", {"id": "x"})
        assert (await client.xpending("s", "g"))["pending"] == 0
        reply = await client.xreadgroup("g", "alive", {"s": ">"}, count=1)
        assert reply[0][1][0][1] == {"id": "x"}
        await client.aclose()
    finally:
        await queue.close()


def test_queue_descriptions_hide_passwords() -> None:
    assert Queue("redis://:hunter2@db:6379/0", "redis").description == "Redis at redis://:***@db:6379/0"
    embedded = Queue("redis://127.0.0.1:5000/0", "embedded", tried="redis://u:hunter2@db:6379/0")
    assert "no Redis answered at redis://u:***@db:6379/0" in embedded.description


async def test_embedded_server_stops_cleanly() -> None:
    queue = await start_embedded()
    await queue.close()
    assert queue.process is not None and queue.process.returncode == 0


# -- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--duration", "0"], ["--cold-start", "-1"]])
def test_demo_rejects_bad_flags(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", *flags]) == 2
    assert flags[0] in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """A short run on the embedded queue (the fresh-machine path): every job done, back to zero."""
    out = tmp_path / "demo-out"
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--duration", "12", "--cold-start", "1", "--no-live",
         "--json", "--out", str(out)],
        capture_output=True, text=True, timeout=150, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["queue"] == "embedded"
    assert summary["scenario"] == "trapezoid load, 12 s, peak 1.5 jobs/s of ~4 s, seed 1"
    assert summary["jobs_produced"] > 5
    assert summary["jobs_completed"] == summary["jobs_produced"]
    assert summary["jobs_lost"] == summary["jobs_interrupted"] == 0
    assert summary["returned_to_zero"] is True
    assert summary["final"]["sessions_open"] == summary["final"]["sessions_opening"] == 0
    assert summary["queue_wait_p50_seconds"] <= summary["queue_wait_p95_seconds"]
    assert summary["session_seconds"] > 0 and summary["worker_seconds_billed"] > 0
    assert summary["unfinished_jobs"] == []
    assert (out / "timeline.png").read_bytes().startswith(PNG_MAGIC)
    config = (out / "config.yaml").read_text()
    assert "stream=vqs-demo:" in config and "callback_url" in config
    assert "queue: embedded" in proc.stderr and "done=" in proc.stderr


async def test_a_demo_whose_consumers_cannot_read_stops_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumers that never read: the run stops within its bound, names the cause, leaves no session."""
    idle = tmp_path / "idle_consumer.py"
    # A handler whose import never ends: the consumer runtime answers its worker's health check
    # from the start (so the worker becomes ready), and never reads.
    idle.write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.setattr("controller.demo.run.CONSUMER", idle)
    # Readiness reaches Vast with the worker library's next report (up to 10 s): a longer bound.
    options = Options(duration=4, live=False, out=tmp_path / "out", cold_start=0.5, stall_seconds=20)
    with open(os.devnull, "w") as quiet:
        with pytest.raises(DemoError) as raised:
            await run_demo(options, Display(quiet, live=False))
    assert str(raised.value) == (
        "sessions were open but no consumer read from the stream in 20.5s: the consumers cannot read the queue; "
        "stopped, every session is closed"
    )


def test_a_summary_without_waits_says_so(tmp_path: Path) -> None:
    summary = summarize(
        scenario="s", samples=[sample()], produced={}, results=[], taken_again=set(), unfinished=set(),
        billing={}, session_seconds=0.0,
    )  # fmt: skip
    stream = io.StringIO()
    print_summary({**summary, "seconds": 1.0, "queue": "redis"}, tmp_path, stream)
    assert "None" not in stream.getvalue() and "queue wait: none measured (no job started)" in stream.getvalue()
