"""One order at a time through `order-journey/advance-one-order` on a running stack: how soon
its confirmation goes.

A fresh workspace (SQLite app database, file archive, file mail transport), a LocalStack with
its own Prefect database (SQLite in the workspace unless given a URL), no scheduler and one
process worker polling every second; seeded orders loaded straight into the app database; then
one deployment run per order, one after another, on the business clock START. Per run:

  cold start  flow run created → Running (worker poll, process spawn, imports, flow load)
  latency     Running (Prefect's start_time) → confirmation dispatched
  run         Running → the flow run's end_time (an upper bound for the latency)

"Dispatched" is the wall-clock mtime of the .eml bundle the file transport wrote for the order's
confirmation, a few milliseconds before the outbox row is committed (the message's `sent_at` is
the business clock, not the wall clock).

    python -m infra.tooling.bench.latency [RUNS [PREFECT_DB_URL]]     # prints the JSON result
"""

from __future__ import annotations

import json
import logging
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.tooling.bench.story import START, Workspace, environment_set, input_files, using

DEFAULT_WORKDIR = Path("var/bench-latency")
DEPLOYMENT = "order-journey/advance-one-order"
EXTRA_ORDERS = 5  # some seeded orders are edge cases that never reach confirmation
POLL_INTERVAL = "1"  # PREFECT_WORKER_QUERY_SECONDS for the bench's worker
RUN_TIMEOUT = 180.0
SERVER_SETTINGS = {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                   "PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
RETRYABLE = "Encountered retryable exception in request"
LOG_RECORD = re.compile(r"\d\d:\d\d:\d\d\.\d+ \| ")  # Prefect's console log format

log = logging.getLogger("journeys.bench.latency")


def measure_latency(runs: int = 20, workdir: Path = DEFAULT_WORKDIR, seed: int = 7,
                    prefect_db: str | None = None) -> dict[str, Any]:
    """Start a stack, run `runs` orders through the deployment, return the numbers.

    `prefect_db` is the Prefect server's database URL (default: SQLite in the workspace).
    """
    from infra.stack import LocalStack, free_port

    workspace = Workspace.fresh(workdir, None)
    order_ids = seeded_orders(workspace, runs + EXTRA_ORDERS, seed)
    stack = LocalStack(port=free_port(), prefect_db_url=prefect_db or sqlite_prefect_db(workspace),
                       env=worker_env(workspace), log_dir=workspace.root, report=log.info)
    with bench_server_settings(), stack, pointed_at(stack.api_url):
        samples = runs_until_confirmed(workspace, order_ids, runs)
    return summarize(samples, workspace)


def runs_until_confirmed(workspace: Workspace, order_ids: list[str], wanted: int) -> list[dict]:
    """One run per order, in order, until `wanted` of them dispatched a confirmation.

    An order the journey holds (high value, address check) is run and recorded, not counted.
    """
    samples: list[dict[str, Any]] = []
    for order_id in order_ids:
        if sum(1 for s in samples if s["latency_s"] is not None) == wanted:
            break
        samples.append(one_run(workspace, order_id))
    return samples


def sqlite_prefect_db(workspace: Workspace) -> str:
    """The bench's own Prefect database: never the operator's ~/.prefect one."""
    return f"sqlite+aiosqlite:///{workspace.root / 'prefect.db'}"


def worker_env(workspace: Workspace) -> dict[str, str]:
    """What the bench's flow runs see: its workspace, and a worker that polls every second."""
    return workspace.environment() | {"PREFECT_WORKER_QUERY_SECONDS": POLL_INTERVAL}


@contextmanager
def bench_server_settings() -> Iterator[None]:
    """The stack's server (it inherits this environment) without its scheduler, logging why
    it answered 503.

    Without a scheduler, the 5-minute sweep (on the real clock) cannot confirm the seeded
    orders itself or compete with the measured runs. A 503 makes Prefect's client wait 2 s
    and try again: server.log says what caused each one.
    """
    with environment_set(SERVER_SETTINGS):
        yield


@contextmanager
def pointed_at(api_url: str) -> Iterator[None]:
    """In-process Prefect clients (run_deployment, get_client) talk to the bench's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        yield


def seeded_orders(workspace: Workspace, count: int, seed: int) -> list[str]:
    """Load the demo catalog and `count` orders; the external ids of those received cleanly."""
    from sqlalchemy import select

    from flows.common import app_engine
    from tasks.intake import ingest_orders, ingest_products, read_orders, read_products
    from tasks.store.db import session_scope
    from tasks.store.models import Order

    files = input_files(workspace, count, seed)
    with using(workspace):
        with session_scope(app_engine()) as session:
            ingest_products(session, list(read_products(files["products"])), START)
        with session_scope(app_engine()) as session:
            ingest_orders(session, list(read_orders(files["orders"])), START)
        with session_scope(app_engine()) as session:
            return list(session.scalars(select(Order.external_id)
                                        .where(Order.state == "received").order_by(Order.id)))


# ---------------------------------------------------------------- one run


def one_run(workspace: Workspace, order_id: str) -> dict[str, Any]:
    """One deployment run for one order, waited for; its timestamps and the order's outcome."""
    from prefect.deployments import run_deployment

    request = {"order_id": order_id, "as_of": START.isoformat()}
    run = run_deployment(DEPLOYMENT, parameters={"request": request}, timeout=0)
    flow_run = wait_until_final(run.id)
    dispatched, state = confirmation_of(workspace, order_id)
    sample = {
        "order_id": order_id, "flow_run_id": str(run.id), "state": flow_run.state.name,
        "order_state": state, "cold_start_s": seconds(flow_run.created, flow_run.start_time),
        "latency_s": seconds(flow_run.start_time, dispatched),
        "run_s": seconds(flow_run.start_time, flow_run.end_time),
    }
    log.info("latency run: %s", sample)
    return sample


def wait_until_final(flow_run_id, timeout: float = RUN_TIMEOUT):
    """The flow run once it is final (Prefect's own waiter is async-only)."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(0.2)
    raise TimeoutError(f"flow run {flow_run_id} not final within {timeout:.0f}s")


def confirmation_of(workspace: Workspace, order_id: str) -> tuple[datetime | None, str]:
    """When the order's confirmation bundle was written (wall clock), and the order's state."""
    from sqlalchemy import select

    from flows.common import app_engine
    from tasks.confirm import TEMPLATE
    from tasks.store.db import session_scope
    from tasks.store.models import Message, Order

    with using(workspace), session_scope(app_engine()) as session:
        order = session.scalars(select(Order).where(Order.external_id == order_id)).one()
        ref = session.scalar(select(Message.artifact_ref).where(
            Message.order_id == order.id, Message.template == TEMPLATE,
            Message.status == "sent"))
        state = order.state
    if ref is None:
        return None, state
    path = Path(ref.removeprefix("file://").split("#", 1)[0])
    return datetime.fromtimestamp(path.stat().st_mtime, UTC), state


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


# ---------------------------------------------------------------- the result


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 (inclusive method: linear between the measured values) and max."""
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "max": values[0], "n": 1}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3), "max": max(values),
            "n": len(values)}


def summarize(samples: list[dict[str, Any]], workspace: Workspace) -> dict[str, Any]:
    """Stats over the confirmed runs; the first run (on a fresh worker) is also shown alone."""
    confirmed = [s for s in samples if s["latency_s"] is not None]
    warm = [s for s in confirmed if s is not samples[0]]
    return {
        "deployment": DEPLOYMENT, "worker_query_seconds": float(POLL_INTERVAL),
        "dispatched_at": "mtime of the confirmation's .eml bundle in the file archive",
        "runs": len(confirmed), "not_confirmed": [s for s in samples if s["latency_s"] is None],
        "latency_s": percentiles([s["latency_s"] for s in confirmed]),
        "cold_start_s": percentiles([s["cold_start_s"] for s in confirmed]),
        "run_s": percentiles([s["run_s"] for s in confirmed]),
        "after_first": {"latency_s": percentiles([s["latency_s"] for s in warm]),
                        "cold_start_s": percentiles([s["cold_start_s"] for s in warm])},
        "first_run": samples[0] if samples else None,
        "raw": {"latency_s": [s["latency_s"] for s in confirmed],
                "cold_start_s": [s["cold_start_s"] for s in confirmed],
                "run_s": [s["run_s"] for s in confirmed]},
        "server_retryable_errors": retryable_errors(workspace.root / "server.log"),
        "samples": samples, "workspace": str(workspace.root),
    }


def retryable_errors(server_log: Path) -> dict[str, int]:
    """The server's 503 answers by cause: the exception line that ends each logged traceback."""
    causes: dict[str, int] = {}
    lines = server_log.read_text(errors="replace").splitlines() if server_log.exists() else []
    for index, line in enumerate(lines):
        if RETRYABLE in line:
            cause = traceback_cause(lines[index + 1:])
            causes[cause] = causes.get(cause, 0) + 1
    return causes


def traceback_cause(lines: list[str]) -> str:
    """The last exception line of the traceback at the top of `lines` (up to the next record)."""
    cause = "unknown"
    for line in lines:
        if LOG_RECORD.match(line):
            break
        if line and not line[0].isspace() and "Error" in line.split(":", 1)[0]:
            cause = line[:160]
    return cause


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    result = measure_latency(int(sys.argv[1]) if len(sys.argv) > 1 else 20,
                             prefect_db=sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps(result, indent=2, default=str))
