"""Hundreds of concurrent sessions on in-process workers, through one unchanged SDK client.

The controller at 10,000 sessions is measured by `make bench-scale`; this keeps the emulator honest at
the concurrency one SDK client sees in a test run.
"""

from __future__ import annotations

import asyncio

from emulator_support import endpoint_state, max_concurrent_per_worker, sdk

from controller.emulator.testing import RECOMMENDED_ENDPOINT, running_emulator

SESSIONS = 250


async def test_hundreds_of_concurrent_sessions_each_on_its_own_worker():
    async with running_emulator(**RECOMMENDED_ENDPOINT, max_workers=SESSIONS, cold_start_seconds=0.5) as emu:
        async with sdk(emu, max_poll_interval=2.0) as client:
            endpoint = await client.get_endpoint("demo")
            sessions = await asyncio.gather(
                *(endpoint.session(cost=100, lifetime=120, timeout=60) for _ in range(SESSIONS))
            )
            assert len({s.session_id for s in sessions}) == SESSIONS
            assert len({s.url for s in sessions}) == SESSIONS, "max_sessions=1: one worker each"
            state = await emu.state()
            workers = endpoint_state(state)["workers"]
            assert len(workers) == SESSIONS and {w["state"] for w in workers} == {"idle"}
            assert sum(len(w["sessions"]) for w in workers) == SESSIONS
            assert len(await endpoint.get_workers()) == SESSIONS

            await asyncio.gather(*(s.close() for s in sessions))
            state = await emu.state()
            assert all(not w["sessions"] for w in endpoint_state(state)["workers"])
            events = state["session_log"]
            assert [e["event"] for e in events].count("create") == SESSIONS
            assert [e["event"] for e in events].count("end") == SESSIONS
            assert set(max_concurrent_per_worker(events).values()) == {1}
