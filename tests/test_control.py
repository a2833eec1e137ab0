"""The operator's control (status, pause, resume, mode, SIGHUP reload) and what a leadership term
answers from outside (readiness, a worker's closed-session report), on in-memory scalers: no
process, no network, no sleeps."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import Clock, RecordingPool, ScriptedSource

from controller.config import Config
from controller.config_load import ConfigError, load_config
from controller.control import Control
from controller.decisions import DecisionLog
from controller.endpoint_check import EndpointCheck
from controller.endpoint_params import RECOMMENDED
from controller.loop import NamedSource, ScalerLoop
from controller.metrics import Metrics
from controller.scaler import Scaler
from controller.sources import QueueDepth
from controller.terms import Terms
from controller.vast import VastError

CONFIG = """\
vast: {{api_key: k}}
state_dir: {state}
scalers:
  - {{name: alpha, source: "redis://127.0.0.1:6379/0?list=a", endpoint: {alpha}}}
  - {{name: beta, source: "redis://127.0.0.1:6379/0?list=b", endpoint: eb, {beta}}}
"""


class Elector:
    """What a term asks of the election outside its campaign: whether this replica leads."""

    fencing_token = 1

    def __init__(self, leading: bool):
        self.is_leader = leading


class Endpoint:
    """An endpoint's parameters as Vast lists them, and the error no retry mends (None: none)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = dict(RECOMMENDED)
        self.problem: VastError | None = None
        self.reads: list[float] = []

    async def parameters(self, max_age: float = 0.0) -> dict[str, Any]:
        self.reads.append(max_age)
        return self.params


class Replica:
    """The control surface and the terms of one replica, with every scaler of its config."""

    def __init__(self, config: Config, *, leading: bool):
        self.config, self.metrics, self.decisions = config, Metrics(), DecisionLog()
        endpoints = EndpointCheck(self.metrics)
        self.terms = Terms(config.scalers, Elector(leading), self.metrics, endpoints, build=self.build)  # type: ignore[arg-type]
        self.control = Control(config, self.terms, self.metrics, self.decisions, endpoints)
        self.clock = Clock()

    def build(self, sc: Any) -> Scaler:
        """In-memory parts, starting from the operator's pause and mode as the real builder does."""
        source = ScriptedSource(QueueDepth(3, 0))
        loop = ScalerLoop(sc.name, [NamedSource(sc.name, source)], RecordingPool(), sc.policy, sc.poll_interval,
                          self.metrics, decisions=self.decisions, clock=self.clock,
                          paused=self.control.paused(sc.name), mode=self.control.mode(sc.name))  # fmt: skip
        return Scaler(sc, loop.pool, loop, Endpoint())  # type: ignore[arg-type]

    def lead(self) -> None:
        """A term begins: every scaler built afresh (what Terms does before running them)."""
        self.terms.scalers = {sc.name: self.build(sc) for sc in self.config.scalers}

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.control.status() if e["name"] == name)

    def paused_gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value("vqs_paused", {"scaler": name})


def write_config(tmp_path: Path, name: str, alpha: str = "ea", beta: str = "policy: {paused: true}") -> Path:
    """alpha's endpoint, and beta's settings besides its name, source and endpoint."""
    path = tmp_path / name
    path.write_text(CONFIG.format(state=tmp_path, alpha=alpha, beta=beta))
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, "c.yaml")


async def test_a_follower_keeps_pause_and_mode_for_its_next_term_and_says_paused(config_path: Path) -> None:
    replica = Replica(load_config(config_path), leading=False)
    assert (replica.paused_gauge("alpha"), replica.paused_gauge("beta")) == (0, 1), "the config's, before any term"

    replica.control.pause("alpha")
    replica.control.resume("beta")
    replica.control.set_mode("alpha", "advise")
    assert (replica.paused_gauge("alpha"), replica.paused_gauge("beta")) == (1, 0)
    assert replica.entry("alpha") == {
        "name": "alpha", "depth": None, "target": None, "sessions": {"open": 0, "opening": 0},
        "leader": False, "paused": True, "mode": "advise", "last_read_ok_at": None,
    }  # fmt: skip

    replica.lead()
    alpha, beta = replica.terms.scalers["alpha"].loop, replica.terms.scalers["beta"].loop
    assert (alpha.paused, alpha.mode, beta.paused, beta.mode) == (True, "advise", False, "act")
    assert (await alpha.tick()).reason == "paused"


async def test_pause_resume_and_mode_reach_the_running_loop_at_once(config_path: Path) -> None:
    replica = Replica(load_config(config_path), leading=True)
    replica.lead()
    loop = replica.terms.scalers["alpha"].loop
    pool = replica.terms.scalers["alpha"].pool
    assert isinstance(pool, RecordingPool)

    replica.control.pause("alpha")
    assert ((await loop.tick()).reason, pool.applied, replica.paused_gauge("alpha")) == ("paused", [], 1)

    replica.control.resume("alpha")
    replica.control.set_mode("alpha", "advise")
    decision = await loop.tick()
    assert (decision.open, decision.act, pool.applied, replica.paused_gauge("alpha")) == (3, False, [], 0)
    assert replica.entry("alpha") == {
        "name": "alpha", "depth": {"waiting": 3, "in_flight": 0, "total": 3}, "target": 3,
        "sessions": {"open": 0, "opening": 0}, "leader": True, "paused": False, "mode": "advise",
        "last_read_ok_at": replica.clock.now,
    }  # fmt: skip
    assert [d["scaler"] for d in replica.control.decisions("alpha")] == ["alpha", "alpha"]

    replica.control.set_mode("alpha", "act")
    decision = await loop.tick()
    assert pool.applied == [decision] and decision.open == 3


async def test_reload_applies_policies_and_poll_intervals_now_and_leaves_the_rest_for_a_restart(
    tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    replica = Replica(load_config(config_path), leading=True)
    replica.lead()
    alpha, beta = replica.terms.scalers["alpha"], replica.terms.scalers["beta"]
    alpha.endpoint.params["target_util"] = 0.5  # type: ignore[attr-defined]
    # alpha's endpoint changes (a restart applies it); beta's policy and poll interval change.
    edited = write_config(tmp_path, "edited.yaml", alpha="ea2", beta="poll_interval: 5, policy: {mode: advise}")
    with caplog.at_level(logging.INFO, logger="controller"):
        replica.control.reload(lambda: load_config(edited))
        await asyncio.sleep(0)  # the endpoints are read anew in tasks of their own; the fakes answer at once

    assert alpha.config.endpoint == "ea" and replica.terms.scalers["alpha"].loop.poll_interval == 1.0
    assert (beta.loop.paused, beta.loop.mode, beta.loop.poll_interval) == (False, "advise", 5.0)
    assert (replica.entry("beta")["paused"], replica.entry("beta")["mode"], replica.paused_gauge("beta")) == (False, "advise", 0)
    messages = [r.getMessage() for r in caplog.records]
    assert "config reload: this scaler's source, endpoint or session changed; restart to apply" in messages
    assert "config reloaded" in messages
    assert alpha.endpoint.reads == beta.endpoint.reads == [0.0]  # type: ignore[attr-defined]
    assert "the endpoint's parameters differ from what sessions-equal-work needs" in messages
    mismatch = replica.metrics.registry.get_sample_value(
        "vqs_endpoint_parameter_mismatch", {"scaler": "alpha", "parameter": "target_util"}
    )
    assert mismatch == 1


def test_a_reload_that_fails_keeps_the_running_config(tmp_path: Path, config_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    replica = Replica(load_config(config_path), leading=False)
    broken = write_config(tmp_path, "broken.yaml", beta="policy: {paused: maybe}")
    with pytest.raises(ConfigError):
        load_config(broken)
    with caplog.at_level(logging.ERROR, logger="controller"):
        replica.control.reload(lambda: load_config(broken))
    assert [r.getMessage() for r in caplog.records] == ["config reload failed; keeping the running config"]
    assert [(e["paused"], e["mode"]) for e in replica.control.status()] == [(False, "act"), (True, "act")]


async def test_readiness_tells_a_follower_from_a_leader_with_stale_reads_or_a_refused_endpoint(config_path: Path) -> None:
    config = load_config(config_path)
    assert Replica(config, leading=False).terms.readiness() == (True, {"role": "follower"})

    replica = Replica(config, leading=True)
    assert replica.terms.readiness() == (False, {"role": "leader", "not_ready": []}), "no term yet"
    replica.lead()
    assert replica.terms.readiness() == (False, {"role": "leader", "not_ready": ["alpha", "beta"]})
    replica.clock.now = time.time()  # readiness reads the wall clock
    for scaler in replica.terms.scalers.values():
        await scaler.loop.tick()
    assert replica.terms.readiness() == (True, {"role": "leader", "not_ready": []})
    replica.terms.scalers["beta"].endpoint.problem = VastError("no_endpoint", "endpoint 'eb' does not exist")
    ready, details = replica.terms.readiness()
    assert (ready, details["not_ready"], details["vast"]) == (False, ["beta"], {"beta": "endpoint 'eb' does not exist"})


async def test_a_closed_session_report_wakes_only_a_scaler_that_held_it(config_path: Path) -> None:
    replica = Replica(load_config(config_path), leading=True)
    replica.terms.released("alpha", "s1")  # no term: nothing to tell
    replica.lead()
    alpha = replica.terms.scalers["alpha"]
    released: list[str] = []
    woken: list[str] = []
    alpha.pool.released = lambda session_id: released.append(session_id) or session_id == "s1"  # type: ignore[method-assign]
    alpha.loop.wake = lambda: woken.append("alpha")  # type: ignore[method-assign]
    replica.terms.released("alpha", "s2")  # not one it holds (already forgotten, or another's)
    assert (released, woken) == (["s2"], [])
    replica.terms.released("alpha", "s1")
    replica.terms.released("nobody", "s1")
    assert (released, woken) == (["s2", "s1"], ["alpha"])
