"""Helpers shared by the tests of deploy/ (test_deploy*.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.config import Config
from controller.config_load import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SECRET = "sk-vast-test-key"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_with_env(monkeypatch: pytest.MonkeyPatch, path: Path, env: dict[str, str]) -> Config:
    """The controller's config as a deployment would load it: this file plus exactly `env`."""
    for name in list(os.environ):
        if name.upper().startswith(("VQS_", "VAST_API_KEY")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_config(path)
