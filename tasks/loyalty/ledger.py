"""The append-only points ledger: its vocabulary, source keys, appends, balances."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.intake.ingest import quarantine_records
from tasks.intake.schema import Rejected
from tasks.loyalty.rules import InvalidInput
from tasks.states import LedgerStatus
from tasks.store.db import is_postgres
from tasks.store.journal import insert_new, record_events
from tasks.store.models import LoyaltyEntry

EARN_STEP = "loyalty_earn"
APPROVE_STEP = "loyalty_approve"
PENDING, APPROVED = LedgerStatus.PENDING, LedgerStatus.APPROVED
EARN, APPROVE, REVERSE = "earn", "approve", "reverse"


def earn_key(order_id: int) -> str:
    return f"order:{order_id}:earn"


def approve_keys(order_id: int) -> tuple[str, str]:
    """(the pending −N entry, the approved +N entry)."""
    return f"order:{order_id}:approve:release", f"order:{order_id}:approve"


def reverse_key(order_id: int, refund_key: str) -> str:
    return f"order:{order_id}:reverse:{refund_key}"


def entry_row(**values: Any) -> dict[str, Any]:
    """A ledger row with every column set (executemany needs the same keys in each row)."""
    defaults = {"order_id": None, "basis": None, "available_at": None}
    return {**defaults, **values}


def existing_keys(session: Session, keys: Iterable[str]) -> set[str]:
    keys = list(keys)
    if not keys:
        return set()
    query = select(LoyaltyEntry.source_key).where(LoyaltyEntry.source_key.in_(keys))
    return set(session.scalars(query))


def loyalty_events(entries: Iterable[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Timeline notes for new ledger entries that belong to an order."""
    return [
        {"order_id": e["order_id"], "at": now, "kind": "loyalty", "from_state": None,
         "to_state": None, "actor": "journeys",
         "detail": {"entry": e["kind"], "points": e["points"], "status": e["status"],
                    "rule_version": e["rule_version"]}}
        for e in entries if e["order_id"] is not None
    ]


def append_entries(
    session: Session, rows: Sequence[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    """Insert ledger rows (a source key already there is left alone); note and return the
    rows really inserted. A concurrent batch may have inserted the same key after we looked,
    and its timeline note is already there."""
    inserted = insert_new(session, LoyaltyEntry, rows, "source_key")
    new = [row for row in rows if row["source_key"] in inserted]
    record_events(session, loyalty_events(new, now))
    return new


def lock_ledgers(session: Session, order_ids: Sequence[int]) -> None:
    """Take these orders' ledgers for this transaction: approve and reverse read an order's
    entries and append from the totals they read, so two at once would count from the same
    totals (a refund taken from pending points another batch just approved, or two refunds
    together reversing more than the order earned).

    On PostgreSQL this locks the orders' earn entries (in id order, so batches cannot
    deadlock); the entries read afterwards include what the lock holder committed. On SQLite
    the transaction already holds the database's write lock (BEGIN IMMEDIATE).
    """
    if not order_ids or not is_postgres(session):
        return
    query = (select(LoyaltyEntry.id)
             .where(LoyaltyEntry.source_key.in_([earn_key(oid) for oid in set(order_ids)]))
             .order_by(LoyaltyEntry.id).with_for_update())
    session.execute(query).all()


def order_entries(session: Session, order_ids: Sequence[int]) -> list[Any]:
    """All ledger rows of these orders: via their customers, which the ledger indexes."""
    if not order_ids:
        return []
    table = LoyaltyEntry.__table__
    customers = (
        select(table.c.customer_id)
        .where(table.c.source_key.in_([earn_key(oid) for oid in order_ids]))
        .scalar_subquery()
    )
    query = select(table).where(table.c.customer_id.in_(customers),
                                table.c.order_id.in_(order_ids))
    return list(session.execute(query))


def quarantine(
    session: Session,
    kind: str,
    source: str,
    problems: Sequence[tuple[dict[str, Any], InvalidInput]],
    now: datetime,
) -> None:
    """Keep each record we cannot compute with, with its reason."""
    rejected = [
        Rejected(kind=kind, source=source, raw=json.dumps(record, sort_keys=True, default=str),
                 reasons=[{"field": err.field_name, "reason": err.reason}],
                 external_id=str(record.get("order_id")))
        for record, err in problems
    ]
    quarantine_records(session, rejected, now)


def balances(session: Session, customer_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """{customer: {"pending": n, "approved": n}} for each id asked (zeros if none)."""
    result = {cid: {PENDING: 0, APPROVED: 0} for cid in customer_ids}
    if not customer_ids:
        return result
    table = LoyaltyEntry.__table__
    query = (
        select(table.c.customer_id, table.c.status, func.sum(table.c.points))
        .where(table.c.customer_id.in_(customer_ids))
        .group_by(table.c.customer_id, table.c.status)
    )
    for cid, status, total in session.execute(query):
        result[cid][status] = int(total or 0)
    return result


def liability(session: Session) -> dict[str, int]:
    """Outstanding points over all customers, by status (for `journeys report`)."""
    table = LoyaltyEntry.__table__
    query = select(table.c.status, func.sum(table.c.points)).group_by(table.c.status)
    result = {PENDING: 0, APPROVED: 0}
    for status, total in session.execute(query):
        result[status] = int(total or 0)
    return result


def customers_with_points(session: Session, limit: int, after_id: int = 0) -> list[int]:
    """Customers with any ledger entry, by id after `after_id` (for the daily tier refresh)."""
    query = (select(LoyaltyEntry.customer_id).where(LoyaltyEntry.customer_id > after_id)
             .distinct().order_by(LoyaltyEntry.customer_id).limit(limit))
    return list(session.scalars(query))
