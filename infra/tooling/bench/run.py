"""What `journeys bench` runs and prints: journeys at one or more sizes, each with its floor,
optionally the naive baseline and the single-order latency, then the targets judged."""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.tooling.bench import targets
from infra.tooling.bench.story import BenchError, Workspace, environment_set, run_bench


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    with open("/proc/meminfo") as meminfo:
        total_kb = int(meminfo.readline().split()[1])
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "memory_gb": round(total_kb / 2**20, 1),
            "python": platform.python_version(), "system": platform.platform(terse=True)}


def cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def journey_with_floor(orders: int, seed: int, workdir: Path, database_url: str | None,
                       size: int, floor: bool) -> dict[str, Any]:
    """One journey; then, on the same data, what the same work costs at the floor."""
    from infra.tooling.bench.floor import measure_floor

    run = run_bench(orders, seed, workdir / f"journey-{orders}", database_url, size)
    if floor:
        workspace = Workspace.at(Path(run["workspace"]), database_url)
        run["floor"] = measure_floor(workspace, workdir / f"floor-{orders}")
        run["efficiency"] = round(run["floor"]["seconds"] / run["wall_seconds"], 3)
    return run


@contextmanager
def private_prefect_database(workdir: Path) -> Iterator[None]:
    """Without an API URL, Prefect's temporary server keeps its SQLite database in ~/.prefect,
    shared with every other run on the machine (and growing). The server the bench starts gets
    a fresh database of its own, so runs compare. (The server inherits the environment when it
    starts; it keeps running, on that database, after the variable is restored.)
    """
    from prefect.settings import PREFECT_API_URL

    name = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    if PREFECT_API_URL.value() or name in os.environ:
        yield
        return
    folder = workdir / "prefect"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with environment_set({name: f"sqlite+aiosqlite:///{folder.resolve() / 'prefect.db'}"}):
        yield


def bench(sizes: list[int], seed: int = 7, workdir: Path = Path("var/bench"),
          database_url: str | None = None, size: int = 1000, floor: bool = True,
          baseline_orders: int | None = None, latency_runs: int | None = None,
          webhooks: int | None = None, realtime: int | None = None,
          pages: int | None = None) -> dict[str, Any]:
    """Everything asked for, measured in this process (the latency bench starts its own stack)."""
    if database_url and len(set(sizes)) > 1:
        raise BenchError("--database takes one --orders size (each run needs an empty database)")
    with private_prefect_database(workdir):
        runs = [journey_with_floor(n, seed, workdir, database_url, size, floor)
                for n in sorted(set(sizes))]
        result: dict[str, Any] = {"machine": machine(), "runs": runs}
        if baseline_orders:
            from infra.tooling.bench.baseline import run_baseline

            result["baseline"] = run_baseline(baseline_orders, seed, workdir / "baseline")
    if latency_runs:
        from infra.tooling.bench.latency import measure_latency

        result["latency"] = measure_latency(latency_runs, workdir / "latency", seed)
    if webhooks:
        from infra.tooling.bench.webhooks import measure_webhooks

        result["webhooks"] = measure_webhooks(webhooks, workdir / "webhooks", database_url)
    if pages:  # the customer pages of the largest run's store, after its whole story
        from infra.tooling.bench.pages import measure_pages

        largest = max(runs, key=lambda r: r["orders"])
        result["pages"] = measure_pages(pages, Path(largest["workspace"]),
                                        database_url or Workspace.at(
                                            Path(largest["workspace"]), None).database_url,
                                        workdir / "pages")
    if realtime:
        from infra.tooling.bench.realtime import measure_realtime

        result["realtime"] = measure_realtime(realtime, workdir / "realtime", seed)
    result["targets"] = judge(result)
    return result


def judge(result: dict[str, Any]) -> list[dict[str, Any]]:
    largest = max(result["runs"], key=lambda r: r["orders"])
    return [*targets.journey_targets(largest), targets.scaling_target(result["runs"]),
            targets.baseline_target(largest, result.get("baseline")),
            targets.latency_target(result.get("latency")),
            targets.webhook_target(result.get("webhooks")),
            targets.realtime_target(result.get("realtime")),
            targets.pages_target(result.get("pages"))]
