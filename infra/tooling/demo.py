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
from infra.tooling.workspace import shown_url
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
    """Prefect's console should show warnings only (the caller's business: flows/cli/tools.py);
    this prints where it writes, a progress bar, and a short summary with what to try next."""
    from flows.common import app_engine, runtime
    from flows.journey import sweep
    from flows.parameters import SweepRequest
    from tasks.reporting import report

    now = datetime.now(UTC)
    settings = runtime().settings
    console.print(f"demo: {orders} orders (seed {seed}) into the store at "
                  f"{shown_url(settings.database_url)}, archive {settings.artifacts_url}",
                  soft_wrap=True)
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
    show_next(console, examples)


def ingest_file(kind: str, path: Path, now: datetime) -> dict[str, int]:
    """Through the ingest flow, as `journeys ingest` does (the flow migrates the schema first)."""
    from flows.intake import ingest
    from flows.parameters import IngestRequest

    return ingest(IngestRequest(kind=kind, source=str(path), format=None, as_of=now))


def example_orders(session) -> dict[str, tuple[str, str | None]]:
    """One order per interesting state (its id and hold reason), to look at next."""
    from sqlalchemy import func, select

    from tasks.store.models import Order

    first = (select(Order.state, func.min(Order.external_id).label("external_id"))
             .where(Order.state.in_(tuple(EXAMPLE_STATES))).group_by(Order.state).subquery())
    rows = session.execute(
        select(Order.state, Order.external_id, Order.hold_reason)
        .join(first, (Order.state == first.c.state) & (Order.external_id == first.c.external_id)))
    return {state: (external_id, reason) for state, external_id, reason in rows}


EXAMPLE_STATES = {"on_hold": "a held order", "confirmed": "a confirmed order",
                  "cancelled": "a cancelled order"}
SUMMARY_SECTIONS = ("orders_by_state", "holds_by_reason", "messages_by_status",
                    "quarantine_by_reason")


def counts_line(counts: dict[str, int]) -> str:
    """`300 received: 296 accepted, 4 quarantined` (zeros left out)."""
    rest = ", ".join(f"{n} {name}" for name, n in counts.items() if name != "received" and n)
    return f"{counts['received']} received" + (f": {rest}" if rest else "")


def show_summary(console: Console, products: dict, intake: dict, result: dict, totals: dict,
                 order_file: Path) -> None:
    from flows.display import show_report, show_stage_table

    console.print(f"catalog: {counts_line(products)}", soft_wrap=True)
    console.print(f"orders from {order_file}: {counts_line(intake)}", soft_wrap=True)
    show_stage_table(console, result, active_only=True)
    show_report(console, totals, sections=SUMMARY_SECTIONS)


def show_next(console: Console, examples: dict[str, tuple[str, str | None]]) -> None:
    """Commands to try next, spelled as this shell can run them."""
    from flows.display import journeys_command
    from flows.reporting import mask_emails

    journeys = journeys_command()
    hints = [(f"order {external_id}", f"{EXAMPLE_STATES[state]}'s journey"
              + (f" ({mask_emails(reason)})" if reason else ""))
             for state, (external_id, reason) in sorted(
                 examples.items(), key=lambda item: list(EXAMPLE_STATES).index(item[0]))]
    hints += [("hold list", "the orders waiting for an operator, with reasons"),
              ("report", "the whole store report"),
              ("simulate --days 21 --orders 40", "three weeks of a store, in a database of its "
               "own"),
              ("server", "the Prefect UI, the schedules and a worker (http://127.0.0.1:4200)")]
    width = max(len(command) for command, _ in hints) + len(journeys) + 3
    console.print("Next:")
    for command, what in hints:
        console.print(f"  {journeys} {command}".ljust(width) + f"  {what}", soft_wrap=True)
