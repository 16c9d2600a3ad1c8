"""Operator jobs as flows: release corrected quarantine entries, erase a customer on request,
cancel an order."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.common import app_engine, business_now, runtime
from flows.order_events import emit_state_changes
from flows.parameters import CancelOrderRequest, ErasureRequest, QuarantineReleaseRequest
from tasks import operations
from tasks.store.db import session_factory, session_scope
from tasks.store.queries import find_order


@flow(name="quarantine-release", log_prints=True)
def release_quarantine(request: QuarantineReleaseRequest) -> dict[str, Any]:
    """Feed quarantined records back in once their source is corrected; twice is a no-op.

    Each entry is released in its own transaction, so one that still fails keeps its reasons
    and does not hold back the others.
    """
    now, rows = business_now(request.as_of), []
    for entry_id in request.entry_ids:
        with session_scope(app_engine()) as session:
            applied = operations.release_quarantine(session, entry_id, now, runtime())
        emit_state_changes(applied.changes)
        outcome = applied.outcome
        reasons = "; ".join(f"{r.get('field')}: {r.get('reason')}"
                            for r in outcome["reasons"] or [])
        rows.append({"entry": entry_id, "outcome": outcome["status"], "reasons": reasons})
    create_table_artifact(rows, key="quarantine-release", description="What each entry did")
    statuses = [row["outcome"] for row in rows]
    summary = {status: statuses.count(status) for status in sorted(set(statuses))}
    get_run_logger().info("quarantine release: %s", summary)
    return {"entries": rows, "summary": summary}


@flow(name="erase-customer", log_prints=True)
def erase_customer(request: ErasureRequest) -> dict[str, Any]:
    """Anonymise the customer who placed an order, everywhere; keep a hashed suppression."""
    with session_scope(app_engine()) as session:
        email = find_order(session, request.order_id).email
    # It commits itself: the archive may only change after the database has.
    with session_factory(app_engine())() as session:
        applied = operations.erase_customer(session, email, business_now(None), runtime(),
                                            actor=request.requested_by)
    emit_state_changes(applied.changes)
    counts = applied.outcome
    create_table_artifact([{"what": k, "count": v} for k, v in counts.items()],
                          key="customer-erasure", description="Erasure (no personal data here)")
    return counts


@flow(name="cancel-order", log_prints=True)
def cancel_order(request: CancelOrderRequest) -> dict[str, Any]:
    """Cancel an order not shipped yet, as `journeys order cancel` does: stock released, steps
    and unsent mail stopped, points reversed, the customer told, the packer told (Do not ship)
    if it was packed. The payment is NOT touched: void or refund it in Shopify."""
    with session_scope(app_engine()) as session:
        applied = operations.cancel_order(session, request.order_id, business_now(None),
                                          runtime(), request.cancelled_by, request.reason)
    emit_state_changes(applied.changes)
    outcome = applied.outcome
    create_table_artifact([{"what": k, "value": str(v)} for k, v in outcome.items()],
                          key="cancel-order", description=outcome["outcome"])
    get_run_logger().info("order %s: %s", outcome["order"], outcome["outcome"])
    return outcome
