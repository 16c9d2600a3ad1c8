"""`journeys bench`: N seeded orders through every stage of the real flows, measured.

The bench works in its own folder (database, archive, mail files) on a frozen clock, so it
never touches the operator's store and two runs with one seed do the same work. Its story:

  day 0   catalog and orders ingested; sweep: verify, pack (documents), confirm, mail
  day 1   the warehouse ships every confirmed order (ingest shipments)
  day 3   every parcel is delivered (ingest tracking events); sweep: track, loyalty earn
  day 6   sweep: feedback request, care guide
  day 10  sweep: review request
  day 17  sweep: cross-sell
  day 34  sweep: replenishment, loyalty approval (the return window has closed)

Wall and CPU time, peak RSS, Prefect task runs and archive PUTs are measured over the whole
journey; time per stage comes from Prefect's own task-run records.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.tooling.demo_data import demo_catalog, demo_orders
from infra.tooling.workspace import (  # noqa: F401 (the bench's modules import them from here)
    Workspace,
    clear_process_caches,
    environment_set,
    using,
)

START = datetime(2026, 3, 2, 17, tzinfo=UTC)  # a Monday; 17:00 UTC is outside most quiet hours
DELIVERY_DAY = 3
SWEEP_DAYS = (0, DELIVERY_DAY, 6, 10, 17, 34)
STOCK_PER_ORDER = 10  # units per variant per 100 orders: only the low-stock items run out


def require_empty(database_url: str) -> None:
    """A bench fills the database it is given: refuse one that already holds a store."""
    from sqlalchemy import inspect

    from tasks.store.db import make_engine

    engine = make_engine(database_url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise BenchError(f"the bench needs an empty database; {database_url.split('@')[-1]} "
                         f"already has tables ({', '.join(sorted(tables)[:3])}, …)")


class BenchError(RuntimeError):
    """The bench cannot run as asked (a clear, one-line reason)."""


# ---------------------------------------------------------------- input


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    with path.open("w") as out:
        for record in records:
            out.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return path


def bench_catalog(orders: int, seed: int) -> list[dict[str, Any]]:
    """The demo catalog with stock for `orders` orders; the few low-stock items stay low."""
    catalog = demo_catalog(seed)
    scale = max(1, orders * STOCK_PER_ORDER // 100)
    for product in catalog:
        for variant in product["variants"]:
            if variant["inventory_quantity"] >= 60:
                variant["inventory_quantity"] += scale
    return catalog


def input_files(workspace: Workspace, orders: int, seed: int) -> dict[str, Path]:
    folder = workspace.root / "input"
    folder.mkdir(exist_ok=True)
    return {"products": write_jsonl(folder / "products.jsonl", bench_catalog(orders, seed)),
            "orders": write_jsonl(folder / "orders.jsonl", demo_orders(orders, seed, START))}


def day(offset: int) -> datetime:
    return START + timedelta(days=offset)


def world_file(workspace: Workspace, kind: str, make: Callable) -> Path:
    """Shipments or deliveries as the outside world would send them, read from the store."""
    from flows.common import app_engine
    from tasks.store.db import session_scope

    with session_scope(app_engine()) as session:
        records = make(session)
    return write_jsonl(workspace.root / "input" / f"{kind}.jsonl", records)


# ---------------------------------------------------------------- the journey


@dataclass
class Timings:
    """Wall time per step of the story, in order."""

    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - started


IngestStep = Callable[[str, Path, datetime, str], Any]  # (kind, file, at, run name) → report
SweepStep = Callable[[datetime, str], Any]  # (at, run name) → report
OUTSIDE_WORLD = "outside world (not the journey)"


def run_story(workspace: Workspace, files: dict[str, Path], label: str,
              ingest_step: IngestStep, sweep_step: SweepStep) -> dict[str, Any]:
    """The story's steps, each a flow run named `<label>-…` (so its task runs can be counted
    by flow run name afterwards); the batch journey and the naive baseline differ only in the
    two step functions. Writing the outside world's files is timed apart."""
    from infra.tooling import simulation

    timings, reports = Timings(), {}

    def ingest_kind(kind: str, path: Path, at: datetime) -> None:
        with timings.step(f"ingest {kind}"):
            reports[f"ingest {kind}"] = ingest_step(kind, path, at, f"{label}-ingest-{kind}")

    def outside(kind: str, make: Callable) -> Path:
        with timings.step(OUTSIDE_WORLD):
            return world_file(workspace, kind, make)

    ingest_kind("products", files["products"], day(0))
    ingest_kind("orders", files["orders"], day(0))
    for offset in SWEEP_DAYS:
        if offset == DELIVERY_DAY:
            ingest_kind("shipments", outside("shipments", lambda s: simulation.shipments_for(
                s, day(1))), day(1))
            ingest_kind("events", outside("events", lambda s: simulation.deliveries_for(
                s, day(DELIVERY_DAY))), day(DELIVERY_DAY))
        with timings.step(f"sweep day {offset}"):
            reports[f"sweep day {offset}"] = sweep_step(day(offset),
                                                        f"{label}-sweep-day-{offset}")
    return {"steps": timings.steps, "reports": reports}


def journey_steps(size: int) -> tuple[IngestStep, SweepStep]:
    """The real flows: ingest and sweep, one run per story step.

    (Runs are named, not tagged: a tagged task run asks the server for tag concurrency slots,
    an API call per task run that the journey itself never makes.)
    """
    from flows.intake import ingest
    from flows.journey import sweep
    from flows.parameters import IngestRequest, SweepRequest

    def ingest_step(kind: str, path: Path, at: datetime, name: str) -> Any:
        request = IngestRequest(kind=kind, source=str(path), as_of=at)
        return ingest.with_options(flow_run_name=name)(request)

    def sweep_step(at: datetime, name: str) -> Any:
        request = SweepRequest(as_of=at, batch_size=size)
        return sweep.with_options(flow_run_name=name)(request)

    return ingest_step, sweep_step


# ---------------------------------------------------------------- measuring


def start_prefect() -> float:
    """Reach the Prefect API before the clock starts (Prefect starts its temporary server on
    first use, once per process: an operator's server is already running)."""
    from prefect import get_client

    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    return time.perf_counter() - started


def reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux: 5 → clear_refs resets VmHWM), so one size's
    peak is not an earlier size's (or the input generation's)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """This process's peak RSS since reset_peak_rss (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def children_cpu_seconds() -> float:
    """CPU of the processes this one started and still runs (Prefect's temporary server)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def task_run_stats(label: str, settle_seconds: float = 120.0) -> dict[str, Any]:
    """Task runs Prefect recorded in the bench's flow runs: count, and seconds per stage.

    The server records task runs from events, a moment after they happen: read until three
    reads two seconds apart agree (or the wait runs out), and keep the last read.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    run_filter = FlowRunFilter(name=FlowRunFilterName(like_=f"{label}-"))
    counts: list[int] = []
    deadline = time.monotonic() + settle_seconds
    with get_client(sync_client=True) as client:
        while True:
            runs = read_all_task_runs(client, run_filter)
            counts.append(len(runs))
            if (len(counts) >= 3 and len(set(counts[-3:])) == 1 and counts[-1]) or (
                    time.monotonic() > deadline):
                break
            time.sleep(2.0)
    per_stage: dict[str, float] = {}
    for run in runs:
        stage = stage_of(run.name)
        per_stage[stage] = per_stage.get(stage, 0.0) + run.total_run_time.total_seconds()
    return {"count": len(runs), "flow_runs": len({run.flow_run_id for run in runs}),
            "seconds_by_stage": dict(sorted(per_stage.items()))}


def read_all_task_runs(client, run_filter, page: int = 200) -> list:
    runs: list = []
    while batch := client.read_task_runs(flow_run_filter=run_filter, limit=page,
                                         offset=len(runs)):
        runs += batch
        if len(batch) < page:
            break
    return runs


def stage_of(task_run_name: str) -> str:
    """`verify-batch-3` → verify; `ingest-orders-batch-1` → ingest-orders; others by name."""
    return task_run_name.split("-batch-")[0] if "-batch-" in task_run_name else (
        task_run_name.rsplit("-", 1)[0])


def store_counts() -> dict[str, Any]:
    """What the journey left behind: orders by state, messages by status, the ledger."""
    from flows.common import app_engine
    from tasks.reporting import report
    from tasks.store.db import session_scope

    with session_scope(app_engine()) as session:
        return report(session)


def accounting(orders: int) -> dict[str, int]:
    """Nothing lost: every generated order is in the store or in quarantine with a reason."""
    from sqlalchemy import func, select

    from flows.common import app_engine
    from tasks.store.db import session_scope
    from tasks.store.models import Order, Quarantine

    with session_scope(app_engine()) as session:
        stored = session.scalar(select(func.count()).select_from(Order))
        quarantined = session.scalar(select(func.count()).select_from(Quarantine)
                                     .where(Quarantine.kind == "order"))
    return {"generated": orders, "stored": stored, "quarantined": quarantined,
            "lost": orders - stored - quarantined}


def measured(workspace: Workspace, files: dict[str, Path], orders: int,
             steps: tuple[IngestStep, SweepStep]) -> dict[str, Any]:
    """Run the story with `steps` in the workspace and measure it: wall and CPU time (outside
    world excluded), peak RSS, Prefect's CPU, task runs, archive PUTs, what it left behind."""
    from flows.common import runtime

    label = f"bench-{uuid.uuid4().hex[:12]}"
    with using(workspace):
        runtime().archive  # noqa: B018 - open the store before the clock starts
        prefect_start = start_prefect()
        reset_peak_rss()
        started, cpu, server_cpu = time.perf_counter(), cpu_seconds(), children_cpu_seconds()
        story = run_story(workspace, files, label, *steps)
        outside = story["steps"].pop(OUTSIDE_WORLD, 0.0)
        wall = time.perf_counter() - started - outside
        cpu, server_cpu = cpu_seconds() - cpu, children_cpu_seconds() - server_cpu
        peak = peak_rss_mb()
        puts, counts, books = runtime().archive.puts, store_counts(), accounting(orders)
    tasks_seen = task_run_stats(label)
    return {
        "prefect_start_seconds": round(prefect_start, 2), "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2), "prefect_server_cpu_seconds": round(server_cpu, 2),
        "outside_world_seconds": round(outside, 2), "orders_per_second": round(orders / wall, 1),
        "peak_rss_mb": round(peak, 1), "task_runs": tasks_seen["count"],
        "flow_runs": tasks_seen["flow_runs"], "archive_puts": puts,
        "steps_seconds": {k: round(v, 2) for k, v in story["steps"].items()},
        "stage_seconds": {k: round(v, 2) for k, v in tasks_seen["seconds_by_stage"].items()},
        "reports": story["reports"], "accounting": books, "store": counts,
        "workspace": str(workspace.root),
    }


def run_bench(orders: int, seed: int, workdir: Path, database_url: str | None = None,
              size: int = 1000) -> dict[str, Any]:
    """The whole measured journey for `orders` orders; the result is what `--json` prints."""
    if database_url:
        require_empty(database_url)
    workspace = Workspace.fresh(workdir, database_url)
    generating = time.perf_counter()
    files = input_files(workspace, orders, seed)
    generate_seconds = time.perf_counter() - generating
    result = measured(workspace, files, orders, journey_steps(size))
    del result["reports"]
    return {"orders": orders, "seed": seed, "batch_size": size,
            "database": "postgresql" if database_url and "postgres" in database_url
            else "sqlite", "generate_seconds": round(generate_seconds, 2), **result}
