"""`journeys demo`, `simulate` and `bench`: the tooling beside the product (infra/tooling).

Imported inside each command: the tooling is heavy and a product command never needs it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flows.cli.common import (
    JsonFlag,
    UserError,
    app,
    console,
    get_settings,
    parse_instant,
    print_json,
    user_errors,
)
from flows.cli.prefect_api import prefect_api, quiet_run_logs


@app.command("demo")
@user_errors
def demo_cmd(
    orders: Annotated[int, typer.Option("--orders", min=1, help="How many orders.")] = 300,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the synthetic data.")] = 7,
) -> None:
    """Generate a seeded catalog and orders, and run them through the journey."""
    with prefect_api("flows.intake", "flows.journey", "infra.tooling.demo"), quiet_run_logs():
        from infra.tooling.demo import run_demo

        run_demo(orders, seed, console)


@app.command("simulate")
@user_errors
def simulate_cmd(
    days: Annotated[int, typer.Option("--days", min=1, help="Days to simulate.")] = 30,
    orders: Annotated[int, typer.Option("--orders", min=1, help="Orders on day 0.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data and behaviour.")] = 7,
    start: Annotated[str | None, typer.Option("--start", help="ISO 8601 first day "
                                              "(default today).")] = None,
    return_share: Annotated[float, typer.Option(
        "--return-share", min=0, max=1, help="Delivered orders a customer returns from.")] = 0.15,
    exchange_share: Annotated[float, typer.Option(
        "--exchange-share", min=0, max=1,
        help="Returns that are exchanges (when another variant is in stock).")] = 0.4,
    workdir: Annotated[Path, typer.Option("--workdir", help="The simulation's own folder: its "
                       "database, archive, mail files and daily inputs (emptied first; only a "
                       "new, empty or earlier simulation folder).")] = Path("var/simulation"),
    database: Annotated[str | None, typer.Option("--database", help="Another database to run "
                        "on (e.g. PostgreSQL); it must hold no orders or products.")] = None,
    reuse: Annotated[bool, typer.Option("--reuse", help="Let --database be one that already "
                     "holds a store (the simulation adds its made-up orders to it).")] = False,
    calendar: Annotated[bool, typer.Option("--calendar", help="Also print every customer's "
                        "messages, day by day.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a seeded store day by day on a frozen clock, in a database of its own; exit 1 if
    any rule is violated."""
    from infra.tooling.workspace import WorkspaceRefused, claim, same_database, shown_url

    first_day = parse_instant(start) if start else None
    try:
        workspace = claim(workdir, "simulation", database, reuse, "simulation.db")
    except WorkspaceRefused as exc:
        raise UserError(str(exc)) from None
    store = get_settings().database_url
    where = (f"simulate: {days} days, {orders} orders (seed {seed}) into "
             f"{shown_url(workspace.database_url)}, files under {workdir}; " + (
                 "that is your store (--reuse)" if same_database(workspace.database_url, store)
                 else f"your store ({shown_url(store)}) is not touched"))
    if as_json:
        print_note(where)
    else:
        console.print(where, soft_wrap=True)
    with (prefect_api("infra.tooling.simulate", database=workspace.root / "prefect.db"),
          quiet_run_logs()):
        from infra.tooling.simulate import simulate

        result = simulate(workspace, days, orders, seed, first_day, return_share,
                          exchange_share, on_day=None if as_json else day_line(days))
    if as_json:
        print_json(result)
    else:
        show_simulation(result, calendar)
    if result["violations"]:
        raise typer.Exit(1)


def print_note(text: str) -> None:
    sys.stderr.write(text + "\n")  # stdout carries the one JSON object


def day_line(days: int) -> Callable[[dict[str, Any]], None]:
    """One short line per simulated day (per week beyond a month of days), and the last."""
    every = 1 if days <= 31 else 7

    def show(day: dict[str, Any]) -> None:
        if day["day"] % every and day["day"] != day["days"]:
            return
        states = ", ".join(f"{state} {n}" for state, n in day["orders_by_state"].items())
        console.print(f"day {day['day']}/{day['days']} {day['date']}: {states}; "
                      f"{sum(day['mail_sent'].values())} mails sent, {day['returns_opened']} "
                      f"returns, {day['cases_decided']} cases decided", soft_wrap=True)

    return show


def show_simulation(result: dict[str, Any], calendar: bool) -> None:
    if calendar:
        for address, entries in result["calendar"].items():
            console.print(address, style="bold")
            for entry in entries:
                console.print(f"  {entry}")
    states, sent = result["orders_by_state"], result["mail_sent"]
    table = Table(title="simulation", title_justify="left")
    table.add_column("what")
    table.add_column("figure")
    table.add_row("orders", f"{sum(states.values())}: " + ", ".join(
        f"{state} {n}" for state, n in states.items()))
    table.add_row("mail sent", str(sum(sent.values())))
    for template, n in sent.items():
        table.add_row(f"  {template}", str(n))
    table.add_row("returns", ", ".join(f"{k} {v}" for k, v in result["returns"].items())
                  or "none")
    table.add_row("service cases decided", str(result["operator_decisions"]))
    table.add_row("rule violations", str(len(result["violations"])))
    table.add_row("time", f"{result['seconds']:.0f} s")
    table.add_row("peak memory", f"{result['peak_memory_mb']} MB")
    console.print(table)
    for violation in result["violations"]:
        console.print(f"  {violation}", style="red")
    if not calendar:
        console.print(f"each customer's messages: --calendar; the files: {result['workspace']}",
                      soft_wrap=True)


@app.command("bench")
@user_errors
def bench_cmd(
    orders: Annotated[list[int], typer.Option("--orders", min=1, help="Orders to run through "
                      "the journey; repeat for several sizes (e.g. 10000 and 100000).")] = [1000],  # noqa: B006
    seed: Annotated[int, typer.Option("--seed", help="Seed for the synthetic store.")] = 7,
    batch: Annotated[int, typer.Option("--batch-size", min=1, help="Orders per batch.")] = 1000,
    database: Annotated[str | None, typer.Option("--database", help="An EMPTY database to run "
                        "on (e.g. PostgreSQL); default: SQLite in the work folder.")] = None,
    workdir: Annotated[Path, typer.Option("--workdir", help="Folder for the bench's stores "
                       "(emptied first).")] = Path("var/bench"),
    baseline: Annotated[bool, typer.Option("--baseline", help="Also run the naive per-order "
                        "design (at --baseline-orders) and extrapolate it.")] = False,
    baseline_orders: Annotated[int, typer.Option("--baseline-orders", min=10)] = 1000,
    latency: Annotated[int, typer.Option("--latency", min=0, help="Also time this many single "
                       "order journeys through a Prefect server and worker.")] = 0,
    floor: Annotated[bool, typer.Option("--floor/--no-floor", help="Measure the floor.")] = True,
    webhooks: Annotated[int, typer.Option("--webhooks", min=0, help="Also load a fresh edge "
                        "with signed webhooks for this many seconds: accepted/s, "
                        "acknowledgement latency, nothing lost (wrk when installed).")] = 0,
    realtime: Annotated[int, typer.Option("--realtime", min=0, help="Also post this many order "
                        "webhooks, one a second, to a stack with its edge and real-time worker: "
                        "seconds from webhook to confirmation sent.")] = 0,
    pages: Annotated[int, typer.Option("--pages", min=0, help="Also serve the customer pages "
                     "of the journey's store from an edge with 2 workers under load for this "
                     "many seconds: pages/s and latency.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Measure the journey: N seeded orders through every stage, against the floor (and the
    naive design with --baseline); prints the figures and which targets are met."""
    from infra.tooling.bench.run import bench
    from infra.tooling.bench.story import BenchError

    try:
        result = bench(orders, seed, workdir, database, batch, floor,
                       baseline_orders if baseline else None, latency or None, webhooks or None,
                       realtime or None, pages or None)
    except BenchError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        print_json(result)
    else:
        show_bench(result)
    if any(run["accounting"]["lost"] for run in result["runs"]):
        raise typer.Exit(1)


def show_bench(result: dict[str, Any]) -> None:
    runs = Table(title="journeys bench")
    for name in ("orders", "db", "wall s", "CPU s", "orders/s", "peak RSS MB", "task runs",
                 "PUTs", "floor s", "efficiency", "lost"):
        runs.add_column(name, justify="right")
    for run in result["runs"]:
        floor = run.get("floor", {}).get("seconds")
        runs.add_row(f"{run['orders']:,}", run["database"], f"{run['wall_seconds']:.1f}",
                     f"{run['cpu_seconds']:.1f}", f"{run['orders_per_second']:.0f}",
                     f"{run['peak_rss_mb']:.0f}", str(run["task_runs"]),
                     str(run["archive_puts"]), "—" if floor is None else f"{floor:.1f}",
                     str(run.get("efficiency", "—")), str(run["accounting"]["lost"]))
    console.print(runs)
    stages = Table(title="seconds per stage (Prefect task runs)")
    stages.add_column("stage")
    for run in result["runs"]:
        stages.add_column(f"{run['orders']:,}", justify="right")
    names = sorted({name for run in result["runs"] for name in run["stage_seconds"]})
    for name in names:
        stages.add_row(name, *(f"{run['stage_seconds'].get(name, 0):.2f}"
                               for run in result["runs"]))
    console.print(stages)
    if baseline := result.get("baseline"):
        console.print(f"naive baseline: {baseline['orders']:,} orders in "
                      f"{baseline['wall_seconds']:.0f} s ({baseline['seconds_per_order']:.3f} s "
                      f"per order, {baseline['task_runs']:,} task runs, "
                      f"{baseline['archive_puts']:,} PUTs); "
                      f"{baseline['extrapolated_seconds']:,.0f} s at "
                      f"{baseline['extrapolated_to']:,}")
    if latency := result.get("latency"):
        warm, cold = latency["latency_s"], latency["cold_start_s"]
        console.print(f"one order, {latency['runs']} runs: confirmation p50 {warm['p50']} s, "
                      f"p95 {warm['p95']} s after the run started; cold start p50 {cold['p50']} s")
    if hooks := result.get("webhooks"):
        ack = hooks["ack_ms"]
        console.print(f"edge ({hooks['database']}, {hooks['generator']}): {hooks['accepted']} "
                      f"webhooks accepted, {hooks['accepted_per_second']}/s; acknowledged p50 "
                      f"{ack['p50']} ms, p99 {ack['p99']} ms; stored {hooks['stored']}, "
                      f"lost {hooks['lost']}")
    if realtime := result.get("realtime"):
        seconds = realtime["webhook_to_confirmation_s"]
        console.print(f"real time: {realtime['posted']} order webhooks, {realtime['confirmed']} "
                      f"confirmed: webhook → confirmation sent p50 {seconds['p50']} s, p95 "
                      f"{seconds['p95']} s, max {seconds['max']} s; not confirmed (held): "
                      f"{len(realtime['not_confirmed'])}")
    if served := result.get("pages"):
        ms = served["ms"]
        console.print(f"customer pages ({served['database']}, {served['workers']} edge workers, "
                      f"{served['generator']}): {served['served']} served, "
                      f"{served['pages_per_second']}/s; p50 {ms['p50']} ms, p95 {ms['p95']} ms, "
                      f"p99 {ms['p99']} ms; failed {served['failed']}")
    verdicts = Table(title="targets")
    for name in ("target", "figure", "status"):
        verdicts.add_column(name)
    for row in result["targets"]:
        verdicts.add_row(row["target"], row["figure"], row["status"])
    console.print(verdicts)
