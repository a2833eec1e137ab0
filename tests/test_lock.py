"""The committed lock (constraints.txt) still satisfies pyproject.toml, and this venv installed it."""

from __future__ import annotations

import re
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)")


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def declared() -> list[Requirement]:
    """Every requirement the two distributions state (the controller's pyproject.toml and the
    consumer runtime's): build, runtime and every extra (minus references to either of them)."""
    lines, names = [], set()
    for path in (ROOT / "pyproject.toml", ROOT / "consumer" / "pyproject.toml"):
        project = tomllib.loads(path.read_text())
        lines += [*project["build-system"]["requires"], *project["project"]["dependencies"]]
        for extra in project["project"]["optional-dependencies"].values():
            lines += extra
        names.add(canonicalize_name(project["project"]["name"]))
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) not in names]


def test_the_lock_names_no_local_path():
    """A `name @ file:///...` line would tie every install to the machine that made the lock."""
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if " @ " in line]
    assert not lines, lines


def test_every_declared_requirement_is_locked_at_a_version_it_allows():
    pins = locked()
    problems = []
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = pins.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement}: not in constraints.txt")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: constraints.txt pins {version}")
    assert not problems, "constraints.txt no longer satisfies pyproject.toml (run `make lock`): " + "; ".join(problems)


def test_this_environment_is_the_locked_one():
    pins = locked()
    # Only what pip installed: setuptools puts its vendored copies (packaging, ...) on sys.path too.
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if Path(d.locate_file("")).resolve() == site
    }
    drift = {name: (installed[name], pin) for name, pin in pins.items() if name in installed and installed[name] != pin}
    assert not drift, f"installed versions differ from constraints.txt (installed, locked): {drift}"
