"""Stage `loyalty_approve`: pending points become approved once the window has closed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tasks.journey import StageResult
from tasks.loyalty.ledger import (
    APPROVE,
    APPROVE_STEP,
    APPROVED,
    EARN,
    PENDING,
    append_entries,
    approve_keys,
    entry_row,
    lock_ledgers,
    order_entries,
)
from tasks.runtime import Runtime
from tasks.store.journal import CLOSED, DONE, set_steps


def approve(session: Session, order_ids: Sequence[int], now: datetime, rt: Runtime) -> StageResult:
    """Move each order's remaining pending points to approved once its window has closed.

    Consumes step `loyalty_approve`. Two entries per order (pending −N, approved +N), so the
    sums per status stay exact; an order approved before is left alone.
    """
    lock_ledgers(session, order_ids)
    entries = order_entries(session, order_ids)
    by_order: dict[int, list[Any]] = defaultdict(list)
    for entry in entries:
        by_order[entry.order_id].append(entry)
    rows, outcomes, waiting = [], {}, 0
    for oid in sorted(set(order_ids)):
        outcome, new_rows = approve_order(oid, by_order.get(oid, []), now)
        rows += new_rows
        if outcome is None:
            waiting += 1
        else:
            outcomes[oid] = outcome
    append_entries(session, rows, now)
    set_steps(session, APPROVE_STEP, outcomes, now)
    return StageResult(
        stage=APPROVE_STEP, advanced=len(rows) // 2,
        closed=sum(1 for s, _ in outcomes.values() if s == CLOSED), skipped=waiting,
        details={"points_approved": sum(r["points"] for r in rows if r["status"] == APPROVED)},
    )


def approve_order(
    order_id: int, entries: Sequence[Any], now: datetime
) -> tuple[tuple[str, str | None] | None, list[dict[str, Any]]]:
    """(step outcome or None if not due yet, new rows) for one order's ledger rows."""
    earned = next((e for e in entries if e.kind == EARN), None)
    if earned is None:
        return (CLOSED, "nothing earned"), []
    release_key, approved_key = approve_keys(order_id)
    if any(e.source_key == approved_key for e in entries):
        return (DONE, None), []
    if earned.available_at is not None and earned.available_at > now:
        return None, []
    pending = sum(e.points for e in entries if e.status == PENDING)
    common = {"customer_id": earned.customer_id, "order_id": order_id, "kind": APPROVE,
              "rule_version": earned.rule_version, "created_at": now}
    return (DONE, None), [
        entry_row(source_key=release_key, points=-pending, status=PENDING, **common),
        entry_row(source_key=approved_key, points=pending, status=APPROVED, **common),
    ]
