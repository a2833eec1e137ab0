"""README.md's emulator section runs as written: its shell blocks, in order, in one bash.

The blocks run in a scratch directory laid out like a clone after `make test` (`.venv` is this
interpreter's environment, `examples/` the repository's), so nothing is left in the clone. The one
substitution is the Redis they talk to, when the tests' Redis is not the README's.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
README_REDIS = "redis://127.0.0.1:6379/0"
SECTION = "## Try it without Vast"
PORTS = (8080, 9464)  # the emulator's and the controller's defaults, as the section uses them


def section_blocks(text: str) -> list[str]:
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def clone(tmp_path: Path, redis_url: str) -> Path:
    """A directory that looks like the clone: .venv and examples/ (with the tests' Redis)."""
    (tmp_path / ".venv").symlink_to(sys.prefix)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    config = tmp_path / "examples" / "emulator.yaml"
    config.write_text(config.read_text().replace(README_REDIS, redis_url))
    return tmp_path


def test_the_emulator_section_runs_as_written(clone: Path, redis_url: str) -> None:
    taken = [port for port in PORTS if port_taken(port)]
    assert not taken, f"the README's ports {taken} are in use: stop what listens there to run this test"
    blocks = section_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 3, "the emulator section's shell blocks changed: update this test's checks"
    script = "set -e\n" + "\n".join(blocks).replace(README_REDIS, redis_url) + "\nwait\n"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete("jobs")
    try:
        result = subprocess.run(
            ["bash", "-c", script], cwd=clone, capture_output=True, text=True, timeout=180,
        )
    finally:
        client.delete("jobs")
        client.close()
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # check: the stream does not exist yet, said as a warning, not a failure.
    assert "stream 'jobs' does not exist; read as empty" in out
    # The sessions follow the work: up to one per unit, then back to zero.
    lines = re.findall(r"queue_waiting=(\d+) queue_in_flight=(\d+) sessions_open=(\d+)", out)
    assert lines, out
    # Consumers beside booting workers may take and finish a unit before its session is granted,
    # so fewer than 3 can be open at once; never more.
    assert max(int(in_flight) for _, in_flight, _ in lines) == 3, lines
    assert 1 <= max(int(sessions) for _, _, sessions in lines) <= 3, lines
    assert lines[-1] == ("0", "0", "0"), lines
    # The emulator's state and the fault injection answered.
    assert '"endpoints"' in out and '"success": true' in out
