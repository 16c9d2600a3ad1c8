"""The floor measured after a real (small) bench journey through the Prefect flows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from infra.tooling.bench.floor import measure_floor
from infra.tooling.bench.story import Workspace, run_bench
from tasks.store.models import Base


def table_counts(path) -> dict[str, int]:
    with sqlite3.connect(path) as connection:
        return {t.name: connection.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
                for t in Base.metadata.sorted_tables}


def packed_orders(path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM orders WHERE packing IS NOT NULL"
                                  ).fetchone()[0]


def test_the_floor_redoes_what_a_bench_journey_wrote(tmp_path):
    bench = run_bench(30, 3, tmp_path / "ws")
    root = Path(bench["workspace"])
    workspace = Workspace(root, f"sqlite:///{root / 'journeys.db'}")
    floor = measure_floor(workspace, tmp_path / "scratch")

    source = table_counts(root / "journeys.db")
    assert table_counts(tmp_path / "scratch" / "floor.db") == source
    parts = floor["components"]
    assert parts["sqlite_rows"]["rows"] == sum(source.values())
    assert parts["renders"]["messages"] == bench["store"]["messages_by_status"]["sent"] > 0
    assert parts["renders"]["documents"] == 2 * packed_orders(root / "journeys.db") > 0
    objects = [p for p in workspace.artifacts.rglob("*")
               if p.is_file() and not p.name.endswith(".sha256")]
    assert parts["bundles"]["objects"] == len(objects) > 0
    intake = bench["store"]["latest_runs"]["ingest-orders"]  # the gate saw what parsed
    assert intake["received"] == 30 and intake["processed"] <= parts["gx"]["rows"] <= 30
    assert all(part["seconds"] > 0 for part in parts.values()) and floor["seconds"] > 0
