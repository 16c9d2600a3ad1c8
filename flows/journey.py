"""The journey flows: a sweep over every due order, and one order's journey.

Orchestration only: which stage runs, in which order, on which batch. Each (stage, batch) is
one Prefect task run with its own database transaction; the stage functions in tasks/ hold
the logic. Running either flow twice changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from flows.common import (
    app_engine,
    batch_size,
    business_now,
    in_flow_run,
    knob,
    publish_manifest,
    runtime,
    scheduled_now,
)
from flows.order_events import emit_state_changes
from flows.parameters import DailyRequest, OrderJourneyRequest, SweepRequest
from flows.reporting import (
    md_cell,
    publish_order_timeline,
    publish_store_picture,
    store_clock,
    store_time,
)
from tasks import inbox, loyalty
from tasks.aftercare.followups import birthday_offers
from tasks.aftercare.winback import winback, winback_customer_ids
from tasks.cancellation import do_not_ship
from tasks.faults import fault_point
from tasks.journey import Stage, StageResult, stages
from tasks.manifest import Manifest
from tasks.messaging.outbox import dispatch_committed
from tasks.orphans import GRACE as ORPHAN_GRACE
from tasks.orphans import reconcile
from tasks.store.db import session_scope
from tasks.store.journal import due_order_ids, take_state_changes
from tasks.store.queries import find_order
from tasks.tracking.stage import delay_watch_ids
from tasks.tracking.unshipped import overdue_watch_ids

# A sweep sends a few mails per order: one dispatch task run takes up to 5 transactions of a
# batch each, so task runs follow batches of orders, while a crash still loses at most one
# batch's outcomes (each transaction sends, then records, `size` mails).
MAIL_ROUNDS = 5

# The journey, in order: step name → stage function, as tasks/journey.py declares it. A step is
# a row with a due time; each sweep runs whatever is due, so time-based steps (feedback after
# 2 days ...) need no waiting.
STAGES: dict[str, Stage] = stages()


@task(task_run_name="{stage}-batch-{batch_no}", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def run_stage_batch(stage: str, batch_no: int, order_ids: list[int], now: datetime) -> StageResult:
    """One stage over one batch, in one transaction: all of it happens, or none of it."""
    with session_scope(app_engine()) as session:
        result = STAGES[stage](session, order_ids, now, runtime())
        changes = take_state_changes(session)
        fault_point(f"stage:{stage}:before_commit")
    fault_point(f"stage:{stage}:after_commit")
    result.received = len(order_ids)
    notify_state_changes(changes)  # after the commit: only what really happened
    return result


def notify_state_changes(changes: list[dict[str, Any]]) -> None:
    """Best effort: the batch is committed, so a failed notification must not retry the batch."""
    try:
        emit_state_changes(changes)
    except Exception:  # noqa: BLE001 - the timeline in our database stays the record
        get_run_logger().warning("could not emit %d order events", len(changes), exc_info=True)


@task(task_run_name="dispatch-batch-{batch_no}", cache_policy=NONE)
def dispatch_batch(batch_no: int, now: datetime, size: int, order_ids: list[int] | None = None,
                   rounds: int = 1) -> dict:
    """Send due outbox messages, up to `rounds` transactions of `size` each; stop early when
    one finds less than `size` due. (No retries: the outbox itself retries deferred mail.)"""
    totals: dict[str, int] = {}
    for _ in range(rounds):
        outcome = dispatch_committed(app_engine(), now, runtime(), size, order_ids).as_dict()
        add_counts(totals, outcome)
        if sum(outcome.values()) < size:
            break
    return totals


def add_counts(totals: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        totals[key] = totals.get(key, 0) + value


@contextlib.contextmanager
def mail_slot():
    """One dispatcher at a time across all workers: the global concurrency limit journeys-mail.

    Without a Prefect run (or before bootstrap made the limit) this does not wait. If the
    server cannot give the slot (e.g. a 503 under load), mail still goes: every outbox row is
    claimed by one dispatcher anyway; the slot only keeps dispatchers from crowding the server.
    """
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    slot = contextlib.nullcontext()
    if in_flow_run():
        try:
            slot = concurrency("journeys-mail", occupy=1, strict=False)
            slot.__enter__()
        except ConcurrencySlotAcquisitionError as exc:
            get_run_logger().warning("dispatching without the journeys-mail slot: %s", exc)
            slot = contextlib.nullcontext()
    try:
        yield
    finally:
        release(slot)


def release(slot) -> None:
    """Give the slot back; a failure here must not fail a run whose mail is committed."""
    try:
        slot.__exit__(None, None, None)
    except Exception:  # noqa: BLE001 - the lease expires on the server by itself
        get_run_logger().warning("could not release the journeys-mail slot", exc_info=True)


def due_batches(stage: str, now: datetime, size: int, shard: tuple[int, int] = (0, 1)):
    """Yield batches of due order ids for a stage, paging by id so the sweep always ends."""
    after_id = 0
    while True:
        with session_scope(app_engine()) as session:
            ids = due_order_ids(session, stage, now, size, after_id=after_id, shard=shard)
        if not ids:
            return
        yield ids
        after_id = ids[-1]


def run_stages(now: datetime, size: int, shard: tuple[int, int] = (0, 1)
               ) -> dict[str, StageResult]:
    results = {stage: StageResult(stage) for stage in STAGES}
    for stage in STAGES:
        for batch_no, ids in enumerate(due_batches(stage, now, size, shard), start=1):
            results[stage].add(run_stage_batch(stage, batch_no, ids, now))
    return results


def dispatch_all(now: datetime, size: int, order_ids: list[int] | None = None,
                 rounds: int = 1) -> dict[str, int]:
    """Dispatch until a batch finds less than it could take (deferred mail waits).

    The mail slot is taken once for all batches: one acquisition per run, not per batch. One
    order's mail (an order journey) goes without it: the slot paces bulk dispatch, and waiting
    for it (a 2 s retry when a SQLite Prefect server is busy) was most of that run's tail.
    """
    totals: dict[str, int] = {}
    with mail_slot() if order_ids is None else contextlib.nullcontext():
        for batch_no in range(1, 10_000):
            outcome = dispatch_batch(batch_no, now, size, order_ids, rounds)
            add_counts(totals, outcome)
            if sum(outcome.values()) < size * rounds:  # nothing more is due now
                break
    return totals


def sweep_manifest(results: dict[str, StageResult], now: datetime) -> Manifest:
    """Every (order, stage) the sweep took up: moved, held or closed, or deferred to later."""
    run_id = str(flow_run.id or uuid.uuid4())
    manifest = Manifest(run_id, "sweep", now)
    for r in results.values():
        manifest.received += r.received
        manifest.processed += r.advanced + r.held + r.closed
        manifest.quarantined += r.quarantined
        manifest.deferred += r.skipped
    return manifest


@task(task_run_name="drain-inbox-{pass_no}", cache_policy=NONE)
def drain_inbox(now: datetime, size: int, pass_no: int = 1) -> dict[str, Any]:
    """Webhook deliveries into intake, oldest first; publishes the pass's manifest."""
    rt = runtime()
    engine = inbox.inbox_engine(inbox.inbox_url(rt.settings), rt.settings.database_url)
    result = inbox.drain(engine, app_engine(), now, rt, size)
    notify_inbox(result)
    if result.taken:
        counts = result.as_dict()
        run_id = f"{flow_run.id or uuid.uuid4()}-inbox-{pass_no}"
        publish_manifest(Manifest(
            run_id, "inbox", now, received=result.taken, quarantined=counts["quarantined"],
            processed=counts["processed"] + counts["ignored"], deferred=counts["waiting"]))
        create_table_artifact([{"kind": kind, **r} for kind, r in counts["intake"].items()],
                              key="journey-sweep-inbox",
                              description=f"Webhook inbox drained: {counts}")
    return result.as_dict()


def notify_inbox(result: inbox.DrainResult) -> None:
    """Per provider, what a drain pass took and refused, as Prefect events; the automations
    "journeys: webhooks stopped" and "journeys: webhooks refused" watch them. Best effort."""
    from prefect.events import emit_event

    providers = {provider for provider, _ in result.by_provider}
    try:
        for provider in providers:
            counts = {outcome: n for (p, outcome), n in result.by_provider.items()
                      if p == provider}
            resource = {"prefect.resource.id": f"journeys.inbox.{provider}"}
            emit_event("journeys.inbox.received", resource=resource, payload=counts)
            if counts.get(inbox.QUARANTINED) or counts.get(inbox.FAILED):
                emit_event("journeys.inbox.refused", resource=resource, payload=counts)
    except Exception:  # noqa: BLE001 - the inbox and the report stay the record
        get_run_logger().warning("could not emit inbox events", exc_info=True)


@task(cache_policy=NONE)
def check_outputs(now: datetime) -> dict[str, Any]:
    """Validate what this sweep confirmed; archive and publish the result; fail if it is wrong."""
    from tasks.quality.outputs import OutputCheckFailed, check_outbox  # pandas: only when used

    with session_scope(app_engine()) as session:
        result = check_outbox(session, now)
    run_id = str(flow_run.id or uuid.uuid4())
    body = json.dumps(result.to_json(), indent=2, sort_keys=True, default=str).encode()
    ref = runtime().archive.put(f"quality/{now:%Y/%m/%d}/sweep/{run_id}-outbox.json", body,
                                "application/json")
    create_table_artifact([{"check": "outbox", "success": result.success, **result.stats}],
                          key="journey-sweep-output-checks",
                          description=f"Great Expectations output checks, archived at {ref}")
    if not result.success:
        raise OutputCheckFailed(f"outbox check failed: {result.to_json()['expectations']}")
    return result.stats


def summary(results: dict[str, StageResult], messages: dict[str, int]) -> dict[str, Any]:
    stages = {
        name: {
            "advanced": r.advanced, "held": r.held, "closed": r.closed,
            "skipped": r.skipped, "details": r.details,
        }
        for name, r in results.items()
    }
    return {"stages": stages, "messages": messages}


def summary_markdown(now: datetime, report: dict[str, Any], zone: str = "UTC") -> str:
    """The sweep's counts, titled with its business clock in the store's time zone."""
    lines = [f"# Journey sweep — {store_clock(now, zone)}", "",
             "| stage | advanced | held | closed | skipped |", "|---|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['advanced']} | {s['held']} | {s['closed']} | {s['skipped']} |")
    lines += ["", "| messages | count |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in report["messages"].items()]
    lines += do_not_ship_markdown(report.get("do_not_ship", []), zone)
    lines += print_batch_markdown(report.get("print", {}))
    return "\n".join(lines)


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2)
def print_documents(now: datetime, shard: tuple[int, int]) -> dict[str, Any]:
    """PDFs of what the stages archived, and the print batch of the packing slips
    (tasks/print_batch.py): after the commits, outside any transaction."""
    from tasks.print_batch import document_link, print_all  # WeasyPrint: only when used

    rt = runtime()
    batches = [p.as_dict() for p in print_all(app_engine(), now, rt, shard)]
    for batch in batches:
        if batch["batch_ref"]:
            batch["link"] = document_link(rt.archive, batch["batch_ref"])
    return {"pdfs": sum(b["pdfs"] for b in batches), "batches": batches}


def print_step(now: datetime, shard: tuple[int, int]) -> dict[str, Any]:
    """The print step, never the sweep's failure: what is not printed stays pending, and the
    next sweep prints it; the summary says it failed. Off (no task run at all) unless
    configs/packing.yaml documents.pdf is on."""
    if not runtime().config.packing.documents.pdf:
        return {}
    try:
        return print_documents(now, shard)
    except Exception as exc:  # noqa: BLE001 - mail and packing are committed; PDFs can wait
        get_run_logger().warning("print step failed (the next sweep retries): %s", exc)
        return {"failed": " ".join(str(exc).split())[:300]}


def print_batch_markdown(printed: dict[str, Any]) -> list[str]:
    """The packer's link to this sweep's packing slips, one PDF per print batch."""
    if printed.get("failed"):
        return ["", "## Print batch", "", f"Not made this time (the next sweep retries): "
                f"{printed['failed']}"]
    batches = [b for b in printed.get("batches", []) if b.get("link")]
    if not batches:
        return []
    lines = ["", "## Print batch", ""]
    for batch in batches:
        link = batch["link"]
        target = f"[Open the PDF]({link})" if link.startswith("https://") else f"`{link}`"
        lines.append(f"- {batch['slips']} packing slips in packing order, one PDF: {target}")
    return lines


DO_NOT_SHIP_WINDOW = timedelta(hours=24)


def do_not_ship_list(now: datetime) -> list[dict[str, Any]]:
    """Orders cancelled after packing in the last 24 hours: the packer must pull them."""
    with session_scope(app_engine()) as session:
        return do_not_ship(session, now - DO_NOT_SHIP_WINDOW, now)


def do_not_ship_markdown(rows: list[dict[str, Any]], zone: str = "UTC") -> list[str]:
    if not rows:
        return []
    lines = ["", "## Do not ship", "", "Cancelled after packing (last 24 hours): take these "
             "parcels off the outgoing shelf.", "",
             f"| order | packing slip | cancelled at ({zone}) |",
             "|---|---|---|"]
    return lines + [f"| {md_cell(r['order'])} | {md_cell(r['packing_slip'] or '-')} | "
                    f"{store_time(r['cancelled_at'], zone)} |" for r in rows]


def notify_not_shipped(result: StageResult) -> None:
    """The operator alert for orders past their ship date (automation "journeys: orders not
    shipped" watches the event). Best effort: the cases and the timeline are the record."""
    from prefect.events import emit_event

    if not result.advanced or not in_flow_run():
        return
    try:
        emit_event("journeys.orders.not_shipped", resource={
            "prefect.resource.id": "journeys.orders.not_shipped"},
            payload={"orders": result.advanced, "cases_opened": result.details.get(
                "cases_opened", 0)})
    except Exception:  # noqa: BLE001 - the service cases stay the record
        get_run_logger().warning("could not emit the not-shipped alert", exc_info=True)


@flow(name="journey-sweep", log_prints=True)
def sweep(request: SweepRequest = SweepRequest()) -> dict[str, Any]:  # noqa: B008 (frozen)
    """Advance every due order through verification, packing and confirmation, then send mail.

    Every stage sees the same business clock. Safe to run twice, and to run on several
    workers at once: each batch claims its orders (SKIP LOCKED on PostgreSQL).
    """
    now, size = business_now(request.as_of), batch_size(request.batch_size)
    drained = drain_inbox(now, size) if request.shard == 0 else {}
    results = run_stages(now, size, (request.shard, request.shards))
    if drained.get("waiting"):  # fulfillments of orders this sweep confirmed can ship now
        drained = drain_inbox(now, size, 2)
    report = summary(results, dispatch_all(now, size, rounds=MAIL_ROUNDS))
    report["inbox"] = drained
    report["do_not_ship"] = do_not_ship_list(now)
    report["print"] = print_step(now, (request.shard, request.shards))
    notify_not_shipped(results["ship_overdue"])
    create_markdown_artifact(summary_markdown(now, report, runtime().config.store.timezone),
                             key="journey-sweep-summary")
    manifest = sweep_manifest(results, now)
    report["manifest"] = manifest.counts()
    ref = publish_manifest(manifest)
    publish_store_picture(now, report["manifest"], ref)
    if results["confirm"].advanced:
        report["output_checks"] = check_outputs(now)
    get_run_logger().info("sweep as of %s: %s", now.isoformat(), report)
    return report


@flow(name="inbox-drain", log_prints=True)
def drain(request: SweepRequest = SweepRequest()) -> dict[str, Any]:  # noqa: B008 (frozen)
    """Take waiting webhook deliveries into intake now (every sweep does this first)."""
    return drain_inbox(business_now(request.as_of), batch_size(request.batch_size))


def paged(query, size: int):
    """Batches from `query(session, size, after_id)`, paging by id until it returns nothing."""
    after_id = 0
    while True:
        with session_scope(app_engine()) as session:
            ids = query(session, size, after_id)
        if not ids:
            return
        yield ids
        after_id = ids[-1]


@task(task_run_name="{name}-batch-{batch_no}", cache_policy=NONE, retries=2, retry_delay_seconds=2)
def run_customer_batch(name: str, batch_no: int, customer_ids: list[int], now: datetime
                       ) -> StageResult:
    """Customer-level daily work (tiers, win-back) over one batch, in one transaction."""
    work = {"tiers": loyalty.update_tiers, "winback": winback}[name]
    with session_scope(app_engine()) as session:
        result = work(session, customer_ids, now, runtime())
    result.received = len(customer_ids)
    return result


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2)
def send_birthday_offers(now: datetime) -> StageResult:
    with session_scope(app_engine()) as session:
        return birthday_offers(session, now, runtime())


def winback_customers(now: datetime, size: int) -> StageResult:
    """Win-back over customers whose last order is old (or whose win-back is pending)."""
    result, rules = StageResult("winback"), runtime().config.aftercare.winback

    def quiet(session, limit, after_id):
        return winback_customer_ids(session, limit, after_id, now, rules)

    for batch_no, ids in enumerate(paged(quiet, size) if rules.enabled else (), start=1):
        result.add(run_customer_batch("winback", batch_no, ids, now))
    return result


def daily_work(now: datetime, size: int) -> dict[str, StageResult]:
    """What only a daily run needs: late parcels without news, birthdays, tiers, win-back."""
    timezone = runtime().config.store.timezone
    results = {"delay_watch": StageResult("track"), "tiers": StageResult("tiers")}

    def delayed(session, limit, after_id):
        return delay_watch_ids(session, now, limit, timezone, after_id=after_id)

    for batch_no, ids in enumerate(paged(delayed, size), start=1):
        results["delay_watch"].add(run_stage_batch("track", batch_no, ids, now))
    results["ship_watch"] = StageResult("ship_overdue")  # confirmed before the step existed
    for batch_no, ids in enumerate(paged(overdue_watch_ids, size), start=1):
        results["ship_watch"].add(run_stage_batch("ship_overdue", batch_no, ids, now))
    results["birthday"] = send_birthday_offers(now)
    for batch_no, ids in enumerate(paged(loyalty.customers_with_points, size), start=1):
        results["tiers"].add(run_customer_batch("tiers", batch_no, ids, now))
    results["winback"] = winback_customers(now, size)
    results["archive"] = reconcile_archive()
    results["privacy"] = privacy_housekeeping(now)
    return results


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2)
def privacy_housekeeping(now: datetime) -> StageResult:
    """Finish open privacy obligations (archive work an earlier failure left) and empty the
    inbox bodies settled more than 30 days ago (they hold addresses)."""
    from tasks.privacy_requests import finish_open_requests

    rt = runtime()
    finish_open_requests(app_engine(), now, rt)
    engine = inbox.inbox_engine(inbox.inbox_url(rt.settings), rt.settings.database_url)
    with session_scope(engine) as session:
        purged = inbox.purge_bodies(session, now)
    return StageResult("privacy", closed=purged, details={"inbox_bodies_emptied": purged})


@task(cache_policy=NONE, retries=2, retry_delay_seconds=2)
def reconcile_archive() -> StageResult:
    """Delete archive objects a crashed batch left with nothing referring to them.

    Ages are the archive's own (wall-clock) write times, so this uses the real clock, not the
    business date; objects younger than the grace period may belong to a batch still running.
    """
    written_before = datetime.now(UTC) - ORPHAN_GRACE
    with session_scope(app_engine()) as session:
        outcome = reconcile(session, runtime().archive, written_before)
    return StageResult("archive", closed=len(outcome.removed), skipped=outcome.too_young,
                       details=outcome.as_dict())


def sharded_sweeps(as_of: datetime | None, size: int, shards: int) -> dict[str, Any]:
    """The sweep as `shards` deployment runs, so the workers share it; wait for all of them."""
    from prefect.deployments import run_deployment

    clock = {"as_of": as_of.isoformat()} if as_of else {}
    runs = [run_deployment("journey-sweep/frequent", timeout=0, parameters={"request": {
        **clock, "batch_size": size, "shard": k, "shards": shards}})
        for k in range(shards)]
    states = wait_until_final([run.id for run in runs])
    failed = [run_id for run_id, state in states.items() if state != "Completed"]
    if failed:
        raise RuntimeError(f"sweep shards did not complete: {failed}")
    return {"shards": states}


def wait_until_final(run_ids: list, poll_seconds: float = 5.0, hours: float = 6.0
                     ) -> dict[str, str]:
    """Each flow run's final state name (Prefect's own waiter is async-only); bounded wait."""
    import time

    from prefect import get_client

    states: dict[str, str] = {}
    deadline = time.monotonic() + hours * 3600
    with get_client(sync_client=True) as client:
        while len(states) < len(run_ids):
            if time.monotonic() > deadline:
                return states | {str(r): "not finished" for r in run_ids if str(r) not in states}
            for run_id in run_ids:
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    states[str(run_id)] = state.name
            if len(states) < len(run_ids):
                time.sleep(poll_seconds)
    return states


@flow(name="journey-daily", log_prints=True)
def daily(request: DailyRequest = DailyRequest()) -> dict[str, Any]:  # noqa: B008 (frozen)
    """The daily run: late-parcel watch, birthday offers and loyalty tiers, then a full sweep.

    Its business date is the scheduled start time, not the moment a worker picked it up.
    """
    now, size = scheduled_now(request.as_of), batch_size(request.batch_size)
    extras = daily_work(now, size)
    # The sweep sends mail: unless a clock was given, it runs on the real clock, so quiet hours
    # and send times are judged when the mail really goes, even for a late daily run.
    shards = request.shards or knob("journeys_daily_shards", 1)
    if shards > 1:
        report = sharded_sweeps(request.as_of, size, shards)
    else:
        report = sweep(SweepRequest(as_of=request.as_of, batch_size=size))
    report["daily"] = {name: {"advanced": r.advanced, "skipped": r.skipped, "details": r.details}
                       for name, r in extras.items()}
    return report


@flow(name="order-journey", log_prints=True)
def order_journey(request: OrderJourneyRequest) -> dict[str, Any]:
    """Advance one order (by its source id or name) through every step that is due now."""
    now = business_now(request.as_of)
    with session_scope(app_engine()) as session:
        internal_id = find_order(session, request.order_id).id
    results = {stage: StageResult(stage) for stage in STAGES}
    for stage in STAGES:
        with session_scope(app_engine()) as session:
            due = due_order_ids(session, stage, now, 1, after_id=internal_id - 1)
        if due == [internal_id]:
            results[stage] = run_stage_batch(stage, 1, [internal_id], now)
    report = summary(results, dispatch_all(now, 100, [internal_id]))
    report["order"] = publish_order_timeline(request.order_id)
    get_run_logger().info("order %s as of %s: %s", request.order_id, now.isoformat(),
                          {k: v for k, v in report.items() if k != "order"})
    return report


if __name__ == "__main__":
    sweep()
