"""Shared fixtures: real SQLite and PostgreSQL databases, config, runtime and a frozen clock.

PostgreSQL is required, not optional: if it is unreachable the PostgreSQL tests fail loudly.
Each test session gets its own throw-away database on JOURNEYS_TEST_PG_URL's server.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tasks.config import load_config
from tasks.runtime import Runtime
from tasks.settings import Settings
from tasks.store.db import make_engine, session_factory
from tasks.store.migrate import ensure_schema
from tasks.store.models import Base

pytest_plugins = ["tests.fixtures_smtp", "tests.fixtures_s3"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
PG_SERVER_URL = os.environ.get(
    "JOURNEYS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Wednesday 18 November 2026, 10:00 UTC: a plain business day before Thanksgiving week.
NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    name = f"journeys_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a missing PostgreSQL must fail the run, never skip it
        pytest.fail(f"PostgreSQL unreachable at {PG_SERVER_URL}: {exc}", pytrace=False)
    url = make_url(PG_SERVER_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    ensure_schema(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_all(engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'journeys.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    ensure_schema(engine)
    if engine.dialect.name == "postgresql":
        _truncate_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path):
    """SQLite only, for unit tests of logic that does not depend on the database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'unit.db'}")
    ensure_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_maker(engine):
    return session_factory(engine)


@pytest.fixture(scope="session")
def cfg():
    return load_config(ROOT / "configs")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'journeys.db'}",
        artifacts_url=f"file://{tmp_path / 'artifacts'}",
        mail_transport="file",
        config_dir=ROOT / "configs",
        secret_key="test-secret",
    )


@pytest.fixture
def runtime(settings, cfg) -> Runtime:
    return Runtime(settings=settings, config=cfg)


@pytest.fixture
def now() -> datetime:
    return NOW


FIGURES_FILE = ROOT / "test-artifacts" / "reliability-figures.txt"


@pytest.fixture
def figure(request, capsys):
    """Print a reliability figure as one line even without -s (the figures are the point of
    those tests) and append it to test-artifacts/reliability-figures.txt for the README.

    Call it after the assertions, so a printed figure is one the test also checked. Under
    xdist a worker's own output is not shown, so every figure is also listed again at the end
    of the run (the test report carries it to the controller).
    """

    def emit(line: str) -> None:
        with capsys.disabled():
            print(f"\nFIGURE {line}")
        request.node.user_properties.append(("figure", line))
        FIGURES_FILE.parent.mkdir(exist_ok=True)
        with FIGURES_FILE.open("a") as out:
            out.write(line + "\n")

    return emit


_figures: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _figures.extend(value for name, value in report.user_properties if name == "figure")


def pytest_terminal_summary(terminalreporter) -> None:
    if _figures:
        terminalreporter.section("reliability figures")
        for line in _figures:
            terminalreporter.write_line(f"FIGURE {line}")


# --- parallel runs: infra/run_tests.py passes `-n 2 --dist loadfile` (pytest-xdist) -----------
# Each worker is its own pytest session, with its own session fixtures: its own PostgreSQL
# database (pg_url), SeaweedFS and free ports, so files run side by side. A file is never split
# (its module fixtures start once). tests/flows shares one Prefect test server per session and
# tests/stack one whole stack, so each of those directories goes to one worker as a unit: one
# server each, as in a serial run, and the crash matrix runs whole. (xdist's own xdist_group
# mark cannot do this: on pytest 9 it no longer changes the node ids it groups by.)
SHARED_SERVER_DIRS = {"tests/flows": "flows", "tests/stack": "stack"}
# The crash matrix (about 14 minutes) is a unit of its own, with its own Prefect test server, so
# the rest of tests/flows runs beside it. Both flows units are handed out before the stack: a
# flows test must never run after tests/stack in one worker (the stack points PREFECT_API_URL at
# itself for the rest of that worker's session); the stack after flows is what a serial run does.
OWN_UNIT = {"tests/flows/test_crash_matrix.py": "flows-crash"}
LONGEST_FIRST = ("flows-crash", "flows", "stack", "tests/integration/test_edge.py")


def work_unit_of(nodeid: str) -> str:
    """What one worker runs as a whole: a test file, or a directory sharing a server."""
    path = nodeid.split("::", 1)[0]
    return OWN_UNIT.get(path) or SHARED_SERVER_DIRS.get(path.rsplit("/", 1)[0], path)


def _start_rank(item: pytest.Item) -> int:
    unit = work_unit_of(item.nodeid)
    return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker, the longest units first; xdist hands units out in this order."""
    if hasattr(config, "workerinput"):  # a serial run keeps pytest's order
        items.sort(key=_start_rank)  # stable: each file keeps its own order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, with each server-sharing directory as one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedServerScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit_of(nodeid)

    return SharedServerScheduling(config, log)
