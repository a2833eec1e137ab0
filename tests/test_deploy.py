"""The Dockerfile, .dockerignore, Compose stack, systemd unit and Vast set-up guide, held to what
the controller really accepts: its config loader and its command line. No network, no image builds;
`systemd-analyze` runs where installed. The chart is in test_deploy_helm.py, the monitoring files in
test_deploy_monitoring.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from deploy_support import DEPLOY, ROOT, SECRET, load_with_env, load_yaml

from controller.cli import build_parser
from controller.config import Config
from vqs_consumer.settings import Settings as ConsumerSettings


def which_or_skip(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def test_every_deploy_file_has_a_check() -> None:
    checked = {
        "compose.yaml", "compose/controller.yaml", "prometheus/prometheus.yml",
        "prometheus/alerts.yaml", "prometheus/alerts.test.yaml", "grafana/dashboard.json",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/vast-queue-scaler.yaml",
        "systemd/vast-queue-scaler.service", "vast/README.md",
    }
    found = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    chart = {p for p in found if p.startswith("helm/")}  # rendered and linted as a whole
    examples = {p for p in found if p.startswith("examples/")}  # loaded by tests/test_config.py
    assert found - chart - examples == checked


# --- Dockerfile and .dockerignore -----------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    pairs = [p for word, rest in final_stage() if word == "ENV" for p in shlex.split(rest)]
    return dict(p.split("=", 1) for p in pairs)


def test_dockerfile_is_slim_non_root_and_runs_the_cli() -> None:
    steps = dockerfile()
    assert {rest.split()[0] for word, rest in steps if word == "FROM"} == {"python:3.11-slim"}
    final = dict(final_stage())
    args = dict(a.split("=", 1) for word, a in final_stage() if word == "ARG")
    user = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], final["USER"])
    assert all(part.isdigit() and int(part) > 0 for part in user.split(":")), user
    assert json.loads(final["ENTRYPOINT"]) == ["vast-queue-scaler"]
    build_parser().parse_args(json.loads(final["CMD"]))
    assert final["EXPOSE"] == str(Config.model_fields["metrics_port"].default)
    assert image_env()["VQS_METRICS_HOST"] == "0.0.0.0"
    # The ledger's default place (relative state/) is inside the writable volume.
    assert final["VOLUME"] == json.dumps([final["WORKDIR"]])
    assert not Config.model_fields["state_dir"].default.is_absolute()
    installs = [part for word, rest in steps if word == "RUN" for part in rest.split("&&") if "pip install " in part]
    assert installs and all("-c constraints.txt" in part for part in installs), installs
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert docker_context_includes(source), source


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int) -> int:
    command = json.loads(dict(final_stage())["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert command[0] == "python"
    env = {**os.environ, "VQS_METRICS_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_asks_healthz_on_the_configured_port(health_server: ThreadingHTTPServer) -> None:
    port = health_server.server_address[1]
    assert run_healthcheck(port) == 0
    _Health.status = 503
    try:
        assert run_healthcheck(port) != 0
    finally:
        _Health.status = 200
    health_server.shutdown()
    health_server.server_close()
    assert run_healthcheck(port) != 0


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip("/")
    out = ""
    for token in re.split(r"(\*\*/|\*|\?)", pattern):
        out += {"**/": "(.*/)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out + "$")


def docker_context_includes(path: str) -> bool:
    """Docker's rule: the last matching line wins; a line matches a path or any of its parents."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _dockerignore_regex(line.lstrip("!"))
        if any(regex.match(prefix) for prefix in prefixes):
            included = negate
    return included


def test_dockerignore_sends_only_the_package() -> None:
    for path in ("pyproject.toml", "README.md", "controller/__init__.py", "controller/sources/__init__.py"):
        assert docker_context_includes(path), path
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "state/render.json",
                 "controller/__pycache__/cli.cpython-311.pyc", "deploy/compose.yaml", "Dockerfile"):
        assert not docker_context_includes(path), path


# --- Compose --------------------------------------------------------------------------------


def test_compose_services_are_complete_and_local() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"controller", "emulator", "redis", "nats", "prometheus", "grafana"} <= set(services)
    host_ports = []
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        if "build" in service:
            assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        for port in service.get("ports", []):
            host, host_port, container_port = port.split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond this machine"
            assert 0 < int(host_port) < 65536 and 0 < int(container_port) < 65536
            host_ports.append(host_port)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose.get("volumes", {}) or (DEPLOY / source).exists(), (name, source)
        for other in service.get("depends_on", {}):
            assert other in services, (name, other)
    assert len(host_ports) == len(set(host_ports))
    assert "-js" in services["nats"]["command"]
    build_parser().parse_args(services["emulator"]["command"])
    assert services["emulator"]["command"][services["emulator"]["command"].index("--host") + 1] == "0.0.0.0"


def test_compose_controller_config_loads_and_is_scraped(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    controller, emulator = compose["services"]["controller"], compose["services"]["emulator"]
    args = build_parser().parse_args(controller["command"])
    mounts = dict(v.split(":")[:2] for v in controller["volumes"])
    config_file = next(src for src, dst in mounts.items() if dst == args.config)
    config = load_with_env(monkeypatch, DEPLOY / config_file, {**image_env(), **controller["environment"]})
    assert config.vast.url == "http://emulator:8080"
    assert {s.endpoint for s in config.scalers} == {"demo"}
    state = Path(dict(final_stage())["WORKDIR"]) / config.state_dir
    assert state.is_relative_to(mounts["controller-state"])
    # The controller lives in the emulator's network namespace, reachable as "controller".
    assert controller["network_mode"] == "service:emulator"
    assert "controller" in emulator["networks"]["default"]["aliases"]
    assert f"127.0.0.1:{config.metrics_port}:{config.metrics_port}" in emulator["ports"]
    [job] = load_yaml(DEPLOY / "prometheus/prometheus.yml")["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"controller:{config.metrics_port}"]}]


# --- systemd --------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd/vast-queue-scaler.service"
SANDBOX = {
    "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "",
    "StateDirectory": "vast-queue-scaler",
}


def unit_file() -> dict[str, list[tuple[str, str]]]:
    """Sections of (key, value) lines; systemd allows a key to repeat, so no configparser."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, sep, value = line.partition("=")
            assert current is not None and sep, f"not a key=value line: {line!r}"
            current.append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_is_sandboxed_and_its_config_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    unit = unit_file()
    service = dict(unit["Service"])
    for key, value in SANDBOX.items():
        assert service.get(key) == value, key
    assert unit["Install"] == [("WantedBy", "multi-user.target")]
    args = build_parser().parse_args(shlex.split(service["ExecStart"])[1:])
    assert args.command == "run"
    # The service's environment, with systemd's %d (credentials) and %S (/var/lib) filled in.
    key_file = tmp_path / "vast-api-key"
    key_file.write_text(SECRET + "\n")
    name, path = service["LoadCredential"].split(":")
    assert key_file.name == name and path.startswith("/etc/vast-queue-scaler/")
    env = dict(v.split("=", 1) for k, v in unit["Service"] if k == "Environment")
    env = {k: v.replace("%d", str(tmp_path)) for k, v in env.items()}
    config = load_with_env(monkeypatch, ROOT / "deploy/examples/redis-list.yaml", env)
    assert config.vast.api_key.get_secret_value() == SECRET
    # The ledger lands in the writable state directory, the working directory.
    assert service["WorkingDirectory"] == "%S/" + service["StateDirectory"]
    assert not config.state_dir.is_absolute()


def verifiable_unit(tmp_path: Path) -> Path:
    # verify checks that ExecStart's binary exists: point it at this checkout's.
    binary = Path(sys.executable).with_name("vast-queue-scaler")
    path = tmp_path / UNIT.name
    text = UNIT.read_text(encoding="utf-8")
    path.write_text(text.replace("/opt/vast-queue-scaler/bin/vast-queue-scaler", str(binary)))
    return path


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    tool = which_or_skip("systemd-analyze")
    unit = verifiable_unit(tmp_path)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    tool = which_or_skip("systemd-analyze")
    result = subprocess.run([tool, "security", "--offline=yes", str(verifiable_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    assert float(exposure.group(1)) <= 2.0, result.stdout


# --- deploy/vast: the endpoint and the null worker's template ---------------------------------

VAST_README = DEPLOY / "vast/README.md"


def readme_commands(program: str) -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", VAST_README.read_text(encoding="utf-8"), re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith(program + " ")]


def vastai(argv: list[str]) -> Any:
    """Parse with the `vastai` CLI's own parser (importing a command module registers it)."""
    from vastai.cli.commands import endpoints, offers  # noqa: F401
    from vastai.cli.main import parser

    return parser.parse_args(argv)


def test_vast_readme_commands_parse_with_the_recommended_parameters() -> None:
    commands = {" ".join(c[1:3]): vastai(c[1:]) for c in readme_commands("vastai")}
    assert {"create endpoint", "update endpoint", "create template", "create workergroup"} <= set(commands)
    for key in ("create endpoint", "update endpoint"):
        args = commands[key]
        recommended = {"target_util": 1.0, "min_load": 0, "max_queue_time": 1, "target_queue_time": 0.5,
                       "inactivity_timeout": 10}
        assert {name: getattr(args, name) for name in recommended} == recommended, key
    assert commands["create endpoint"].endpoint_name == commands["create workergroup"].endpoint_name
    env = dict(a.split("=", 1) for a in shlex.split(commands["create template"].env) if a != "-e")
    assert env["BACKEND"] == "null"
    assert env["PYWORKER_REPO"].startswith("https://")
    # The worker health-checks the consumer and the consumer releases on the worker's port:
    # both must agree with the consumer runtime's defaults.
    defaults = {name: field.default for name, field in ConsumerSettings.model_fields.items()}
    assert env["BACKEND_HEALTH_URL"] == f"http://{defaults['health_host']}:{defaults['health_port']}/health"
    assert env["NULL_CONTROL_PORT"] == str(defaults["control_port"])


def test_vast_readme_local_commands_and_links_work() -> None:
    for command in readme_commands("vast-queue-scaler"):
        build_parser().parse_args([a for a in command[1:] if a != "&"])
    text = VAST_README.read_text(encoding="utf-8")
    for link in re.findall(r"\]\((\.\.?/[^)]+)\)", text):
        assert (VAST_README.parent / link).resolve().is_file(), link
    for variable in ("QUEUE_URL", "NULL_CONTROL_PORT", "HEALTH_PORT", "/release"):
        assert variable in text
