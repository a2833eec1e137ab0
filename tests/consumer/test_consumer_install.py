"""The runtime installs on an instance alone: a bare venv, its own dependencies, none of the controller's.

Installs from the package index at the locked versions (about a minute).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]

#: Run inside the bare venv: each installed distribution's requirements.
REQUIREMENTS = """
import json
from importlib.metadata import distributions
print(json.dumps({d.metadata["Name"]: d.requires or [] for d in distributions()}))
"""


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure(requirements: dict[str, list[str]], root: str, extras: set[str]) -> set[str]:
    """The distributions `root[extras]` needs, markers evaluated for this interpreter (the venv's too)."""
    needed: set[str] = set()
    todo = [(root, extras)]
    while todo:
        dist, wanted_extras = todo.pop()
        if _key(dist) in needed:
            continue
        needed.add(_key(dist))
        for text in requirements[next(d for d in requirements if _key(d) == _key(dist))]:
            requirement = Requirement(text)
            if requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (wanted_extras or {""})
            ):
                todo.append((requirement.name, set(requirement.extras)))
    return needed


def test_the_runtime_installs_into_a_bare_venv_with_only_its_own_dependencies(tmp_path: Path) -> None:
    # A copy: pip builds a local directory in place, and the checkout should not get a build/ from a test.
    source = tmp_path / "consumer"
    shutil.copytree(ROOT / "consumer", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env_dir = tmp_path / "instance"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / "constraints.txt",
         f"{source}[redis]"],
        capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr

    listing = subprocess.run([python, "-c", REQUIREMENTS], cwd=tmp_path, capture_output=True, text=True, check=True)
    requirements = json.loads(listing.stdout)
    installed = {_key(name) for name in requirements} - {"pip", "setuptools"}
    assert installed == _closure(requirements, "vqs-consumer", {"redis"})
    assert {"vqs-consumer", "pydantic", "prometheus-client", "redis"} <= installed
    assert not {"vast-queue-scaler", "vastai", "boto3", "nats-py", "aiohttp"} & installed

    help_text = subprocess.run(
        [env_dir / "bin" / "vqs-consumer", "run", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "module:function" in help_text and "--source" in help_text
    # The kind it was installed for imports; the controller is nowhere (run away from this checkout).
    probe = "import vqs_consumer.queues.redis, importlib.util; print(importlib.util.find_spec('controller'))"
    assert subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip() == "None"
