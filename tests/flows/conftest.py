"""Flow tests run against a real (temporary) Prefect server, started once per session."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import ROOT


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_env(db_url, tmp_path, monkeypatch):
    """Point the flows' process-wide settings at this test's database and archive."""
    from flows import journey
    from tasks.settings import get_settings

    monkeypatch.setenv("JOURNEYS_DATABASE_URL", db_url)
    monkeypatch.setenv("JOURNEYS_ARTIFACTS_URL", f"file://{tmp_path / 'artifacts'}")
    monkeypatch.setenv("JOURNEYS_MAIL_TRANSPORT", "file")
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", "test-secret")
    monkeypatch.setenv("JOURNEYS_CONFIG_DIR", str(ROOT / "configs"))
    for cached in (get_settings, journey.runtime, journey.app_engine):
        cached.cache_clear()
    yield journey
    for cached in (get_settings, journey.runtime, journey.app_engine):
        cached.cache_clear()
