"""`vqs-consumer run`: clear one-line errors before anything connects, exit codes, the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vqs_consumer.cli import main

SOURCE = "redis://h/0?stream=s&group=g"
HANDLER = f"{Path(__file__).with_name('consumer_handlers.py')}:work"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([HANDLER, "--source", SOURCE, "--max-attempts", "0"], "--max-attempts: Input should be greater than or equal to 1"),
        ([HANDLER, "--source", SOURCE, "--lease", "soon"], "--lease: Input should be a valid number"),
        ([HANDLER, "--source", SOURCE, "--retry-base", "9", "--retry-cap", "3"], "retry_base (9) must not exceed retry_cap (3)"),
        ([HANDLER, "--source", SOURCE, "--name", "a*b"], "--name: String should match pattern"),
        ([HANDLER], "--source (or QUEUE_URL): Field required"),
        ([HANDLER, "--source", "redis://:hunter2@h/0?stream=s"], "stream= needs group="),
        (["handlers.work", "--source", SOURCE], "expected module:function"),
        (["no_such_module_here:work", "--source", SOURCE], "cannot import 'no_such_module_here'"),
        ([HANDLER.replace(":work", ":nothing"), "--source", SOURCE], "has no 'nothing'"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(argv: list[str], expected: str, capsys, monkeypatch) -> None:
    monkeypatch.delenv("QUEUE_URL", raising=False)
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert "hunter2" not in err


def test_the_source_may_come_from_queue_url(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setenv("QUEUE_URL", "redis://h/0?stream=s")
    assert main(["run", HANDLER]) == 2
    assert "stream= needs group=" in capsys.readouterr().err


def test_a_queue_that_cannot_be_consumed_as_configured_exits_1(nats_url: str) -> None:
    # No dead-letter subject for NATS: said before any unit is taken.
    done = subprocess.run(
        [sys.executable, "-m", "vqs_consumer", "run", HANDLER, "--source", f"{nats_url}?stream=S&consumer=C",
         "--control-port", "0", "--health-port", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "NATS needs a dead-letter subject (--dead-letter SUBJECT)" in done.stderr.splitlines()[-1]


def test_a_health_port_in_use_is_said_in_one_line(capsys, monkeypatch) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["run", HANDLER, "--source", SOURCE, "--health-port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot serve /health on 127.0.0.1:{port}:" in err and err.count("\n") == 1, err
