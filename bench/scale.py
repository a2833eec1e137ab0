"""The controller at scale: CPU, memory, tick time and expiries at 1,000, 5,000 and 10,000 sessions.

Runs the real controller (`run`, a subprocess) against the emulator (another subprocess, so its
CPU is not counted) and one Redis list per scaler, each holding 200 waiting units: the controller
keeps 200 sessions per scaler open, renewing each lease (60 s) by one request per lease. Measured
from outside: the controller's CPU time and RSS from /proc, its metrics (open sessions, tick time,
closes by reason), the emulator's state and the controller's ledger files.

Then a starved run: the same controller held to a fraction of one CPU (stopped and continued
in a duty cycle, as `cpulimit` does) while it ramps up. It must fall behind, say so, stop opening
until renewals catch up, and lose no session for want of a renewal.

Writes bench/scale.md. Needs a Redis on 127.0.0.1:6379 (or REDIS_URL). About 11 minutes.

    python bench/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis
import yaml

from controller.child import clean_environment, start_controller
from controller.demo.observe import Samples, metric_samples
from controller.ledger import FileLedger
from controller.ports import free_port

HERE = Path(__file__).resolve().parent
PER_SCALER = 200
LEASE = 60.0
#: The emulator packs sessions onto fewer workers: the controller's work is the same per session,
#: and the emulator stays far from being the bottleneck.
SESSIONS_PER_WORKER = 10
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    sessions: int
    ramp_seconds: float | None = None
    cpu_share: float = 0.0  # of one core, over the steady window
    rss_mb: float = 0.0  # the most seen
    tick_ms: float = 0.0  # mean scaler tick over the steady window
    opened: int = 0
    expired: int = 0  # closed because the lease ran out (expired) or the worker vanished (lost)
    ledger_equal: bool = False
    behind_episodes: int = 0
    gauge_off: int = 0  # the worst |vqs_sessions_open - sessions on the workers| over the steady scrapes
    notes: list[str] = field(default_factory=list)


class Process:
    """CPU seconds and RSS of one process, from /proc."""

    def __init__(self, pid: int):
        self.pid = pid

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class Throttle:
    """Hold a process to `share` of the wall clock: SIGSTOP and SIGCONT every `period` seconds."""

    def __init__(self, pid: int, share: float, period: float = 0.1):
        self.pid, self.share, self.period = pid, share, period
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.period * self.share)
                os.kill(self.pid, signal.SIGSTOP)
                await asyncio.sleep(self.period * (1 - self.share))
                os.kill(self.pid, signal.SIGCONT)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def __enter__(self) -> Throttle:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url + "/metrics") as response:
        return metric_samples(await response.text())


def total(metrics: dict, name: str, **labels: str) -> float:
    """The sum over scalers of one metric's samples with these labels."""
    want = tuple(sorted(labels.items()))
    return sum(v for (n, lab), v in metrics.items() if n == name and all(item in lab for item in want))


async def emulator_sessions(http: aiohttp.ClientSession, url: str) -> set[str]:
    async with http.get(url + "/_emulator/state") as response:
        state = await response.json()
    return {s["session_id"] for e in state["endpoints"] for w in e["workers"] for s in w["sessions"]}


async def run_size(name: str, scalers: int, steady: float, *, throttle: float | None = None) -> Result:
    result = Result(name, scalers * PER_SCALER)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    tag = uuid.uuid4().hex[:8]
    lists = [f"bench:scale:{tag}:{i}" for i in range(scalers)]
    client = redis.Redis.from_url(redis_url)
    for key in lists:
        client.rpush(key, *range(PER_SCALER))
    with tempfile.TemporaryDirectory(prefix="vqs-scale-") as tmp:
        work = Path(tmp)
        emulator_port, controller_port = free_port(), free_port()
        emulator_url, controller_url = f"http://127.0.0.1:{emulator_port}", f"http://127.0.0.1:{controller_port}"
        workers = PER_SCALER // SESSIONS_PER_WORKER
        (work / "emulator.yaml").write_text(yaml.safe_dump({
            "api_key": "bench-key", "workers": "inprocess", "max_sessions": SESSIONS_PER_WORKER,
            "cold_start_seconds": 1.0, "resume_seconds": 0.5, "web_api_rate_limit": None,
            "endpoints": [{"name": f"ep{i}", "max_workers": workers, "cold_workers": 0, "cold_mult": 1.0,
                           "min_load": 0, "target_util": 1.0, "max_queue_time": 3600, "target_queue_time": 0,
                           "inactivity_timeout": 600} for i in range(scalers)],
        }))  # fmt: skip
        emulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", "emulator", "--config", str(work / "emulator.yaml"),
            "--port", str(emulator_port), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=(work / "emulator.log").open("wb"), env=clean_environment(),
        )  # fmt: skip
        (work / "config.yaml").write_text(yaml.safe_dump({
            "vast": {"api_key": "bench-key", "url": emulator_url}, "state_dir": str(work / "state"),
            "metrics_port": controller_port, "log_format": "json",
            "scalers": [{"name": f"scaler-{i}", "source": f"{redis_url}?list={key}", "endpoint": f"ep{i}",
                         "poll_interval": 1.0,
                         "policy": {"max_sessions": PER_SCALER, "max_opens_per_tick": PER_SCALER},
                         "session": {"lease_seconds": LEASE, "callback_url": controller_url}}
                        for i, key in enumerate(lists)],
        }))  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await _until_up(http, emulator_url + "/_emulator/state")
            with (work / "controller.log").open("wb") as log:
                controller = await start_controller(work / "config.yaml", log)
            proc = Process(controller.pid)
            throttled = Throttle(controller.pid, throttle) if throttle else None
            try:
                await _until_up(http, controller_url + "/healthz")
                if throttled:
                    throttled.__enter__()
                started = time.monotonic()
                while time.monotonic() - started < 180:
                    metrics = await scrape(http, controller_url)
                    result.rss_mb = max(result.rss_mb, proc.rss_mb())
                    if total(metrics, "vqs_sessions_open") >= result.sessions:
                        result.ramp_seconds = time.monotonic() - started
                        break
                    await asyncio.sleep(1)
                if result.ramp_seconds is None:
                    result.notes.append(f"ramp incomplete after 180 s: {total(metrics, 'vqs_sessions_open'):.0f} open")
                before, cpu0, wall0 = metrics, proc.cpu_seconds(), time.monotonic()
                while time.monotonic() - wall0 < steady:
                    await asyncio.sleep(5)
                    result.rss_mb = max(result.rss_mb, proc.rss_mb())
                    # Nothing opens or closes at steady state, so the gauge must read what the workers hold.
                    gauge = total(await scrape(http, controller_url), "vqs_sessions_open")
                    held = len(await emulator_sessions(http, emulator_url))
                    result.gauge_off = max(result.gauge_off, abs(round(gauge) - held))
                after, cpu1, wall1 = await scrape(http, controller_url), proc.cpu_seconds(), time.monotonic()
                result.cpu_share = (cpu1 - cpu0) / (wall1 - wall0)
                ticks = total(after, "vqs_loop_duration_seconds_count") - total(before, "vqs_loop_duration_seconds_count")
                seconds = total(after, "vqs_loop_duration_seconds_sum") - total(before, "vqs_loop_duration_seconds_sum")
                result.tick_ms = 1000 * seconds / max(ticks, 1)
                result.opened = int(total(after, "vqs_sessions_opened_total"))
                result.expired = int(total(after, "vqs_sessions_closed_total", reason="expired")
                                     + total(after, "vqs_sessions_closed_total", reason="lost"))  # fmt: skip
                if throttled:
                    throttled.__exit__()
                    throttled = None
                held = {r.session_id for i in range(scalers) for r in FileLedger(work / "state", f"scaler-{i}").load()}
                on_workers = await emulator_sessions(http, emulator_url)
                result.ledger_equal = held == on_workers
                if not result.ledger_equal:
                    result.notes.append(f"ledger {len(held)}, emulator {len(on_workers)}, "
                                        f"common {len(held & on_workers)}")  # fmt: skip
                result.behind_episodes = (work / "controller.log").read_text().count("renewals are behind")
            finally:
                if throttled:
                    throttled.__exit__()
                    await asyncio.sleep(0.2)
                exited = controller.returncode
                for child in (controller, emulator):
                    if child.returncode is None:
                        child.send_signal(signal.SIGTERM)
                        await asyncio.wait_for(child.wait(), 30)
                client.delete(*lists)
                client.close()
                if exited is not None:
                    tail = (work / "controller.log").read_text()[-2000:]
                    raise RuntimeError(f"the controller exited with {exited}:\n{tail}")
    return result


async def _until_up(http: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


def report(results: list[Result], starved: Result, share: float) -> str:
    rows = [
        "| sessions (scalers x 200) | lease | ramp | CPU (one core) | RSS | mean tick | opened | expired or lost "
        "| ledger = workers | open gauge - workers (worst scrape) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [*results, starved]:
        ramp = f"{r.ramp_seconds:.0f} s" if r.ramp_seconds is not None else "incomplete"
        rows.append(
            f"| {r.name} | {LEASE:.0f} s | {ramp} | {100 * r.cpu_share:.1f}% | {r.rss_mb:.0f} MB | {r.tick_ms:.1f} ms "
            f"| {r.opened:,} | {r.expired} | {'yes' if r.ledger_equal else 'no'} | {r.gauge_off} |"
        )
    notes = [f"- {r.name}: {note}" for r in [*results, starved] for note in r.notes]
    return "\n".join([
        "# The controller at scale", "",
        "`make bench-scale` (bench/scale.py): the real controller against the in-process emulator (a",
        "process of its own), one Redis list of 200 waiting units per scaler, 200 sessions per scaler",
        f"at a {LEASE:.0f} s lease, close callbacks on. CPU is the controller's own over a steady window of",
        "two leases after the ramp (utime + stime from /proc), RSS the most seen; the tick is the scaler loop's",
        "(read, decide, act); expired or lost counts sessions that ended for want of a renewal; the",
        "ledger files are compared with the sessions on the emulator's workers at the end, and the",
        "`vqs_sessions_open` gauge with them at every scrape of the steady window.", "",
        *rows, "",
        f"The starved run holds the controller to {share:.1%} of one CPU (SIGSTOP/SIGCONT every 100 ms)",
        f"from its start: {STARVED_HEADROOM:g} x what its renewals need at steady state (twice the 1,000 run's CPU),",
        "so they fit, and the ramp's opens compete with them. Its pools said they were behind",
        f"(`renewals are behind`: no opens until renewals catch up) {starved.behind_episodes} time(s);",
        f"{starved.expired} session(s) expired or were lost, {starved.opened:,} were opened for {starved.sessions:,} wanted.", "",
        *(["Notes:", *notes, ""] if notes else []),
        f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (other work shares it);",
        f"Python {sys.version.split()[0]}.",
        "",
    ])  # fmt: skip


#: The starved run gets this many times the CPU its renewals need at steady state: enough for them,
#: too little for them and a ramp of opens, so the pool must put the opens off.
STARVED_HEADROOM = 1.5


async def main(quick: bool) -> int:
    sizes = [("1,000 (5 x 200)", 5), ("5,000 (25 x 200)", 25), ("10,000 (50 x 200)", 50)]
    # Whole leases: sessions opened in one ramp renew in waves a lease apart, so a window of 1.5
    # leases would hold two waves and read a third more renewals than steady state has.
    steady = 30.0 if quick else 2 * LEASE
    results = []
    for name, scalers in sizes[:1] if quick else sizes:
        print(f"{name}: ramp, then {steady:.0f} s steady", file=sys.stderr, flush=True)
        results.append(await run_size(name, scalers, steady))
        print(f"  {results[-1]}", file=sys.stderr, flush=True)
    print("starved: 2,000 (10 x 200)", file=sys.stderr, flush=True)
    share = min(0.5, STARVED_HEADROOM * 2 * results[0].cpu_share)
    starved = await run_size(f"2,000 (10 x 200), starved to {share:.1%} CPU", 10, steady, throttle=share)
    print(f"  {starved}", file=sys.stderr, flush=True)
    text = report(results, starved, share)
    if not quick:
        (HERE / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 sessions and a shorter window; no scale.md")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
