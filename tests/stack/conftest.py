"""One real Prefect stack for the session: a server on PostgreSQL, the deployments, a worker.

The server and the app each get a fresh PostgreSQL database, dropped at the end. In-process
clients (run_deployment, get_client) and subprocesses are pointed at this server for as long as
the stack runs, even if tests/flows' test harness server is also up in this session.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from infra.stack import LocalStack, free_port
from tasks.store.db import make_engine
from tasks.store.migrate import ensure_schema
from tests.browser import PAGE_TIMEOUT_MS, VIEWPORT, chromium
from tests.conftest import PG_SERVER_URL, ROOT
from tests.edge_process import AFTERSHIP_SECRET, SHOPIFY_SECRET

log = logging.getLogger("tests.stack")


@dataclass
class Stack:
    api_url: str
    ui_url: str
    app_db_url: str
    archive_dir: Path
    log_dir: Path
    local: LocalStack

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.local.edge_port}"

    def add_worker(self):
        """Start one more worker on the journeys pool (stopped with the stack)."""
        return self.local.add_worker()


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database on the test server, dropped WITH (FORCE) afterwards."""
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a missing PostgreSQL must fail the run, never skip it
        pytest.fail(f"PostgreSQL unreachable at {PG_SERVER_URL}: {exc}", pytrace=False)
    try:
        yield make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def pointed_at(api_url: str) -> Iterator[None]:
    """PREFECT_API_URL for in-process clients and for subprocesses, restored afterwards."""
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings({PREFECT_API_URL: api_url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def migrated(url: str) -> str:
    engine = make_engine(url)
    ensure_schema(engine)
    engine.dispose()
    return url


def worker_env(app_db_url: str, archive_dir: Path) -> dict[str, str]:
    """What every flow run on the stack's workers sees."""
    return {
        "JOURNEYS_DATABASE_URL": app_db_url,
        "JOURNEYS_ARTIFACTS_URL": f"file://{archive_dir}",
        "JOURNEYS_MAIL_TRANSPORT": "file",
        "JOURNEYS_SECRET_KEY": "stack-test-secret",
        "JOURNEYS_CONFIG_DIR": str(ROOT / "configs"),
        "JOURNEYS_SHOPIFY_WEBHOOK_SECRET": SHOPIFY_SECRET,
        "JOURNEYS_AFTERSHIP_WEBHOOK_SECRET": AFTERSHIP_SECRET,
    }


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Server (PostgreSQL) + bootstrap + deployments + one worker + the edge and its real-time
    task worker, for the whole session."""
    archive_dir = tmp_path_factory.mktemp("stack-archive")
    log_dir = tmp_path_factory.mktemp("stack-logs")
    with scratch_database("journeys_prefect") as prefect_db, \
            scratch_database("journeys_app") as app_db:
        local = LocalStack(port=free_port(), prefect_db_url=prefect_db, workers=1,
                           env=worker_env(migrated(app_db), archive_dir), log_dir=log_dir,
                           report=log.info, edge_port=free_port())
        with local, pointed_at(local.api_url):
            yield Stack(local.api_url, local.ui_url, app_db, archive_dir, log_dir, local)


@pytest.fixture(scope="module")
def app(stack):
    engine = make_engine(stack.app_db_url)
    yield engine
    engine.dispose()


# --- the browser (tests/browser.py starts Debian's Chromium) ---------------------------------


@pytest.fixture(scope="module")
def ui_home(stack) -> str:
    """The default UI's base URL, after checking the UI will talk to this stack's API."""
    settings = httpx.get(f"{stack.ui_url}/ui-settings", timeout=30).json()
    assert settings["api_url"] == stack.api_url, (
        f"the UI would call {settings['api_url']}, not {stack.api_url}: "
        "start the server with PREFECT_UI_API_URL set to its API URL")
    base = settings.get(f"{settings.get('default_ui', 'v1')}_base_url") or "/"
    return stack.ui_url + base.rstrip("/")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()
