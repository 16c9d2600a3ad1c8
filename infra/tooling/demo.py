"""`journeys demo`: a seeded synthetic store run through the real journey, with a summary.

The demo uses the configured database and archive (embedded defaults: ./var). Its orders are
"today's orders": ids and times derive from the seed and today's date, so rerunning the demo on
the same day changes nothing, and a run on another day adds that day's orders.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.tooling.demo_data import demo_catalog, demo_orders
from tasks.store.db import session_scope

DEMO_DIR = Path("var/demo")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return path


def demo_files(orders: int, seed: int, now: datetime) -> tuple[Path, Path]:
    """Write today's catalog and orders as Shopify JSON Lines, as a store would export them.

    The orders are placed in the two days before today's midnight (UTC): always in the past,
    whatever the hour, and the same all day, so a rerun is a duplicate.
    """
    anchor = datetime.combine(now.date(), time(0), tzinfo=UTC)
    catalog = write_jsonl(DEMO_DIR / f"products-{seed}.jsonl", demo_catalog(seed))
    day_orders = demo_orders(orders, seed, anchor)
    stamped = write_jsonl(DEMO_DIR / f"orders-{now:%Y%m%d}-{seed}-{orders}.jsonl", day_orders)
    return catalog, stamped


def run_demo(orders: int, seed: int, console: Console) -> None:
    from flows.common import app_engine
    from flows.journey import sweep
    from flows.parameters import SweepRequest
    from tasks.reporting import report

    now = datetime.now(UTC)
    columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        step = progress.add_task("generating data", total=4)
        catalog, order_file = demo_files(orders, seed, now)
        progress.update(step, advance=1, description="ingesting catalog")
        products = ingest_file("products", catalog, now)
        progress.update(step, advance=1, description="ingesting orders")
        intake = ingest_file("orders", order_file, now)
        progress.update(step, advance=1, description="journey (Prefect sweep)")
        result = sweep(SweepRequest(as_of=now))
        progress.update(step, advance=1, description="done")
    with session_scope(app_engine()) as session:
        totals = report(session)
        examples = example_orders(session)
    show_summary(console, products, intake, result, totals, order_file)
    for state, external_id in examples.items():
        console.print(f"  {state.replace('_', ' ')}, e.g.: journeys order {external_id}")


def ingest_file(kind: str, path: Path, now: datetime) -> dict[str, int]:
    """Through the ingest flow, as `journeys ingest` does (the flow migrates the schema first)."""
    from flows.intake import ingest
    from flows.parameters import IngestRequest

    return ingest(IngestRequest(kind=kind, source=str(path), format=None, as_of=now))


def example_orders(session) -> dict[str, str]:
    """One order id per interesting state, for the operator to look at next."""
    from sqlalchemy import func, select

    from tasks.store.models import Order

    rows = session.execute(
        select(Order.state, func.min(Order.external_id))
        .where(Order.state.in_(("confirmed", "on_hold", "cancelled")))
        .group_by(Order.state)
    )
    return dict(rows.all())


def show_summary(console: Console, products: dict, intake: dict, result: dict, totals: dict,
                 order_file: Path) -> None:
    from flows.display import show_report, show_stage_table

    console.print(f"catalog: {products}")
    console.print(f"orders from {order_file}: {intake}")
    show_stage_table(console, result)
    show_report(console, totals)
    console.print("Next: `journeys order ID` for one order's timeline, `journeys hold list`, "
                  "`journeys report`.")
