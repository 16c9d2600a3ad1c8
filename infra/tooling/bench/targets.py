"""Issue 6's targets, judged from bench results: each is met, missed (with the figure), or not
measured in this run (and which option measures it)."""

from __future__ import annotations

import math
from typing import Any

FULL_SCALE = 100_000
SMALL_SCALE = 10_000
WALL_LIMIT_SECONDS = 180.0
MIN_EFFICIENCY = 0.33
MIN_SPEEDUP = 100.0
RSS_LIMIT_MB = 2048.0
MAX_COST_GROWTH = 1.2
TASK_RUN_SLACK = 10
INTAKE_KINDS = 4  # products, orders, shipments, tracking events
TASKS_PER_FLOW_RUN = 3  # drain-inbox, check_outputs, publish_manifest
LATENCY_P50, LATENCY_P95 = 1.5, 2.5


def verdict(met: bool | None, figure: str, target: str) -> dict[str, Any]:
    status = "not measured" if met is None else ("met" if met else "MISSED")
    return {"target": target, "figure": figure, "status": status}


def task_run_bound(run: dict[str, Any]) -> int:
    """stages × batches + 10: batches of orders, and every kind of task that runs per batch —
    the journey's stages, dispatch and the four kinds of intake; plus the few tasks each flow
    run has once whatever its size (the inbox drain, the output check, the run's manifest)."""
    from flows.journey import STAGES

    batches = math.ceil(run["orders"] / run["batch_size"])
    per_run = TASKS_PER_FLOW_RUN * run.get("flow_runs", 0)
    return (len(STAGES) + 1 + INTAKE_KINDS) * batches + per_run + TASK_RUN_SLACK


def journey_targets(run: dict[str, Any]) -> list[dict[str, Any]]:
    """What one journey run can show on its own."""
    at_scale = run["orders"] >= FULL_SCALE
    wall = run["wall_seconds"]
    efficiency = run.get("efficiency")
    bound = task_run_bound(run)
    return [
        verdict(wall <= WALL_LIMIT_SECONDS if at_scale else None,
                f"{run['orders']:,} orders in {wall:.0f} s",
                f"{FULL_SCALE:,} orders through all stages in ≤ {WALL_LIMIT_SECONDS:.0f} s"),
        verdict(None if efficiency is None else efficiency >= MIN_EFFICIENCY,
                "—" if efficiency is None else f"{efficiency:.2f}",
                f"efficiency (floor / journey) ≥ {MIN_EFFICIENCY}"),
        verdict(run["task_runs"] <= bound, f"{run['task_runs']} task runs (bound {bound})",
                "Prefect task runs ≤ stages × batches + 3 per flow run + 10"),
        verdict(run["peak_rss_mb"] <= RSS_LIMIT_MB if at_scale else None,
                f"{run['peak_rss_mb']:.0f} MB at {run['orders']:,}",
                f"peak RSS ≤ {RSS_LIMIT_MB:.0f} MB at {FULL_SCALE:,}"),
    ]


def scaling_target(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Cost per order at 100k against 10k (wall seconds per order)."""
    target = f"cost per order at {FULL_SCALE:,} within {MAX_COST_GROWTH}× of {SMALL_SCALE:,}"
    sizes = {run["orders"]: run for run in runs}
    large = max((n for n in sizes if n >= FULL_SCALE), default=None)
    if SMALL_SCALE not in sizes or large is None:
        return verdict(None, f"run both: --orders {SMALL_SCALE} --orders {FULL_SCALE}", target)
    small, big = sizes[SMALL_SCALE], sizes[large]
    growth = (big["wall_seconds"] / big["orders"]) / (small["wall_seconds"] / small["orders"])
    return verdict(growth <= MAX_COST_GROWTH, f"{growth:.2f}× ({SMALL_SCALE:,} → {large:,})",
                   target)


def baseline_target(run: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Naive seconds per order against the journey's, both taken to 100k orders."""
    target = f"≥ {MIN_SPEEDUP:.0f}× faster than the naive design at {FULL_SCALE:,} (extrapolated)"
    if baseline is None:
        return verdict(None, "run with --baseline", target)
    journey_at_scale = run["wall_seconds"] * FULL_SCALE / run["orders"]
    speedup = baseline["seconds_per_order"] * FULL_SCALE / journey_at_scale
    return verdict(speedup >= MIN_SPEEDUP, f"{speedup:.0f}×", target)


def latency_target(latency: dict[str, Any] | None) -> dict[str, Any]:
    target = f"one order: confirmation p50 ≤ {LATENCY_P50} s, p95 ≤ {LATENCY_P95} s after start"
    if latency is None:
        return verdict(None, "run with --latency RUNS", target)
    p50, p95 = latency["latency_s"]["p50"], latency["latency_s"]["p95"]
    if p50 is None:
        return verdict(False, "no order was confirmed", target)
    return verdict(p50 <= LATENCY_P50 and p95 <= LATENCY_P95,
                   f"p50 {p50:.2f} s, p95 {p95:.2f} s", target)


WEBHOOKS_PER_SECOND, ACK_P99_MS = 1000, 50


def webhook_target(webhooks: dict[str, Any] | None) -> dict[str, Any]:
    target = (f"edge: ≥ {WEBHOOKS_PER_SECOND} signed webhooks/s accepted, p99 ≤ {ACK_P99_MS} ms, "
              "none lost")
    if webhooks is None:
        return verdict(None, "run with --webhooks N", target)
    rate, p99 = webhooks["accepted_per_second"], webhooks["ack_ms"]["p99"]
    figure = (f"{rate:.0f}/s, p99 {p99} ms, lost {webhooks['lost']} "
              f"({webhooks['database']}, {webhooks['concurrency']} in flight)")
    met = rate >= WEBHOOKS_PER_SECOND and p99 is not None and p99 <= ACK_P99_MS
    return verdict(met and webhooks["lost"] == 0, figure, target)


REALTIME_P95 = 10.0


def realtime_target(realtime: dict[str, Any] | None) -> dict[str, Any]:
    target = f"order webhook → confirmation sent: p95 ≤ {REALTIME_P95:.0f} s (warm task worker)"
    if realtime is None:
        return verdict(None, "run with --realtime ORDERS", target)
    seconds = realtime["webhook_to_confirmation_s"]
    if seconds["p50"] is None:
        return verdict(False, "no order was confirmed", target)
    return verdict(seconds["p95"] <= REALTIME_P95,
                   f"p50 {seconds['p50']:.2f} s, p95 {seconds['p95']:.2f} s "
                   f"({realtime['confirmed']} orders)", target)


PAGES_PER_SECOND, PAGES_P95_MS = 500, 50.0


def pages_target(pages: dict[str, Any] | None) -> dict[str, Any]:
    target = (f"customer pages: ≥ {PAGES_PER_SECOND}/s, p95 ≤ {PAGES_P95_MS:.0f} ms "
              "(2 edge workers)")
    if pages is None:
        return verdict(None, "run with --pages SECONDS", target)
    rate, p95 = pages["pages_per_second"], pages["ms"]["p95"]
    figure = (f"{rate:.0f}/s, p95 {p95} ms, failed {pages['failed']} "
              f"({pages['database']}, {pages['concurrency']} in flight)")
    met = rate >= PAGES_PER_SECOND and p95 is not None and p95 <= PAGES_P95_MS
    return verdict(met and pages["failed"] == 0, figure, target)
