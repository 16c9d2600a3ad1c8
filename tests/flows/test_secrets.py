"""Secrets kept in Prefect Secret blocks: flow runs and the CLI read the same key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL

from flows.common import with_secret_blocks
from tasks.settings import SecretUnavailable, Settings
from tests.conftest import ROOT


@pytest.fixture
def block_key(monkeypatch):
    Secret(value="key-from-the-block").save("journeys-secret-key", overwrite=True)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.delenv("JOURNEYS_SECRET_KEY", raising=False)
    return "key-from-the-block"


def test_the_block_fills_a_secret_the_environment_does_not_set(block_key):
    assert with_secret_blocks(Settings()).secret_key == block_key


def test_the_environment_wins_over_the_block(block_key, monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", "key-from-the-environment")
    assert with_secret_blocks(Settings()).secret_key == "key-from-the-environment"


def test_an_unreachable_server_is_an_error_not_the_development_key(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv("JOURNEYS_SECRET_KEY", raising=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_")}
    env |= {"PREFECT_API_URL": "http://127.0.0.1:9/api",
            "JOURNEYS_CONFIG_DIR": str(ROOT / "configs")}
    done = subprocess.run([sys.executable, "-c", (
        "from flows.common import with_secret_blocks; from tasks.settings import Settings; "
        "with_secret_blocks(Settings())")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and SecretUnavailable.__name__ in done.stderr
    assert "journeys-secret-key unreachable" in done.stderr
