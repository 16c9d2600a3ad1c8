"""Refunds: reverse each refund's exact share of what its order earned."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from tasks.journey import StageResult
from tasks.loyalty.ledger import (
    APPROVED,
    EARN,
    PENDING,
    REVERSE,
    append_entries,
    approve_keys,
    entry_row,
    lock_ledgers,
    order_entries,
    quarantine,
    reverse_key,
)
from tasks.loyalty.rules import InvalidInput, money, reversal_points
from tasks.runtime import Runtime

MAX_REFUND_KEY = 100


@dataclass(frozen=True)
class Refund:
    """A refund or return of `amount` on an order; `key` is unique per refund of that order."""

    order_id: int
    amount: Decimal
    key: str


@dataclass
class OrderLedger:
    """One order's running totals while a batch of refunds is applied."""

    earn: Any
    approved: bool
    keys: set[str]
    refunded: Decimal = Decimal(0)
    reversed: int = 0


def reverse_refunds(
    session: Session, refunds: Sequence[Refund], now: datetime, rt: Runtime
) -> StageResult:
    """Append a reversal per new refund: exact, never beyond what the order earned.

    A refund key seen before is a no-op; a refund of an order that earned nothing is skipped;
    a refund with a bad amount or key is quarantined.
    """
    valid, problems = validate_refunds(refunds)
    lock_ledgers(session, [r.order_id for r in valid])
    ledgers = refund_ledgers(session, sorted({r.order_id for r in valid}))
    rows: list[dict[str, Any]] = []
    counts = {"duplicates": 0, "not_earned": 0}
    for refund in valid:
        ledger = ledgers.get(refund.order_id)
        key = reverse_key(refund.order_id, refund.key)
        if ledger is None:
            counts["not_earned"] += 1
        elif key in ledger.keys:
            counts["duplicates"] += 1
        else:
            rows.append(reversal_row(ledger, refund, key, now))
    append_entries(session, rows, now)
    quarantine(session, "loyalty_refund", "loyalty", problems, now)
    return StageResult(
        stage="loyalty_reverse", received=len(refunds), advanced=len(rows),
        skipped=counts["duplicates"] + counts["not_earned"], quarantined=len(problems),
        details={**counts, "points_reversed": -sum(r["points"] for r in rows)},
    )


def validate_refunds(
    refunds: Sequence[Refund],
) -> tuple[list[Refund], list[tuple[dict[str, Any], InvalidInput]]]:
    valid, problems = [], []
    for refund in refunds:
        record = {"order_id": refund.order_id, "amount": str(refund.amount), "key": refund.key}
        try:
            amount = money(refund.amount, "amount")
            if not isinstance(refund.key, str) or not 0 < len(refund.key) <= MAX_REFUND_KEY:
                raise InvalidInput("key", f"must be 1-{MAX_REFUND_KEY} characters")
            valid.append(Refund(refund.order_id, amount, refund.key))
        except InvalidInput as err:
            problems.append((record, err))
    return valid, problems


def refund_ledgers(session: Session, order_ids: Sequence[int]) -> dict[int, OrderLedger]:
    """Per order that earned: its earn row, whether approved, keys, refunds and reversals so far."""
    by_order: dict[int, list[Any]] = defaultdict(list)
    for entry in order_entries(session, order_ids):
        by_order[entry.order_id].append(entry)
    ledgers = {}
    for oid, entries in by_order.items():
        earned = next((e for e in entries if e.kind == EARN), None)
        if earned is None:
            continue
        reversals = [e for e in entries if e.kind == REVERSE]
        ledgers[oid] = OrderLedger(
            earn=earned, approved=any(e.source_key == approve_keys(oid)[1] for e in entries),
            keys={e.source_key for e in entries},
            refunded=sum((e.basis or Decimal(0) for e in reversals), Decimal(0)),
            reversed=-sum(e.points for e in reversals),
        )
    return ledgers


def reversal_row(ledger: OrderLedger, refund: Refund, key: str, now: datetime) -> dict[str, Any]:
    """The reversal entry; updates the running totals so a later refund in the batch sees it."""
    earned = ledger.earn
    points = reversal_points(earned.points, earned.basis or Decimal(0), ledger.refunded,
                             ledger.reversed, refund.amount)
    ledger.refunded += refund.amount
    ledger.reversed += points
    ledger.keys.add(key)
    return entry_row(
        source_key=key, customer_id=earned.customer_id, order_id=refund.order_id, kind=REVERSE,
        points=-points, status=APPROVED if ledger.approved else PENDING,
        rule_version=earned.rule_version, basis=refund.amount, created_at=now,
    )
