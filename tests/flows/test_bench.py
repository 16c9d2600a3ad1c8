"""`journeys bench` as a smoke test: it must finish and balance. Never a timing assertion.

The bench runs as its own process: it starts a temporary Prefect server with a fresh database,
as it does for an operator, instead of using this suite's test server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_SERVER_URL, ROOT

STAGES_WITH_TASKS = {"verify", "pack", "confirm", "track", "loyalty_earn", "loyalty_approve",
                     "feedback_request", "review_request", "care_guide", "cross_sell",
                     "replenishment", "dispatch", "ingest-orders", "ingest-products",
                     "ingest-shipments", "ingest-events"}


def journeys(*args: str) -> subprocess.CompletedProcess:
    """The real command in its own process, as CI and operators run it (its own Prefect)."""
    command = [str(Path(sys.executable).with_name("journeys")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)


def bench(*args: str) -> dict:
    result = journeys("bench", "--json", *args)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return json.loads(result.stdout)


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOURNEYS_CONFIG_DIR", str(ROOT / "configs"))


def test_a_thousand_orders_go_through_every_stage_and_balance(tmp_path):
    report = bench("--orders", "1000", "--workdir", str(tmp_path / "bench"))
    [run] = report["runs"]
    print(f"bench smoke: 1000 orders in {run['wall_seconds']} s, {run['task_runs']} task runs, "
          f"{run['archive_puts']} PUTs, efficiency {run.get('efficiency')}")
    assert run["accounting"]["lost"] == 0
    assert run["accounting"]["stored"] + run["accounting"]["quarantined"] == 1000
    assert set(run["stage_seconds"]) >= STAGES_WITH_TASKS
    states = run["store"]["orders_by_state"]
    assert states["delivered"] > 800 and "received" not in states and "verified" not in states
    assert run["store"]["messages_by_status"]["sent"] > 3000
    assert run["task_runs"] < 1000 / 10  # per (stage, batch), never per order (that is 12,000+)
    assert {"sqlite_rows", "renders", "gx", "bundles"} <= set(run["floor"]["components"])
    assert 0 < run["efficiency"] < 1


def test_the_same_bench_on_postgresql(tmp_path):
    with empty_pg_database() as url:
        report = bench("--orders", "200", "--database", url, "--no-floor",
                       "--workdir", str(tmp_path / "bench"))
    [run] = report["runs"]
    assert run["database"] == "postgresql" and run["accounting"]["lost"] == 0
    assert run["store"]["orders_by_state"]["delivered"] > 150


def test_a_database_that_holds_a_store_is_refused(pg_url, tmp_path):
    result = journeys("bench", "--orders", "10", "--database", pg_url,
                      "--workdir", str(tmp_path / "bench"))
    assert result.returncode == 2
    assert "needs an empty database" in result.stderr and "Traceback" not in result.stderr


class empty_pg_database:  # noqa: N801 - used as a context manager, reads like one
    """A new, empty PostgreSQL database for one bench, dropped afterwards."""

    def __enter__(self) -> str:
        self.admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
        self.name = f"journeys_bench_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return make_url(PG_SERVER_URL).set(database=self.name).render_as_string(
            hide_password=False)

    def __exit__(self, *exc) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()
