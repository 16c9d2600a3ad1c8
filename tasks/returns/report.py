"""Returns in the report: by status, return rate by reason and by product, refunds, exchanges,
store credit and credit notes (the daily report's "returns" key, its Prefect artifact).

A return rate is units returned / units delivered: units in returns that go back (requested
up to refunded or exchanged; not rejected, not kept with credit: tasks/store/returns.py
NOT_GOING_BACK) over the units of delivered orders. `since`/`until` bound the returns by when
they were requested, the deliveries by when they arrived, the credit notes by their issue date;
None leaves that end open.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.markdown import md_cell
from tasks.states import ReturnStatus
from tasks.store.models import CreditNote, Order, OrderLine, Return, ReturnLine
from tasks.store.returns import NOT_GOING_BACK


def within(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    return ([column >= since] if since else []) + ([column < until] if until else [])


def returns_report(session: Session, since: datetime | None = None,
                   until: datetime | None = None) -> dict[str, Any]:
    """The returns figures of a period (None: from the start, up to now)."""
    delivered_total, delivered = delivered_units(session, since, until)
    by_reason, by_sku = returned_units(session, since, until)
    statuses = by_status(session, since, until)
    return {
        "by_status": statuses,
        "units_delivered": delivered_total,
        "rate_by_reason": {reason: rate(units, delivered_total)
                           for reason, units in sorted(by_reason.items())},
        "rate_by_product": {sku: rate(units, delivered.get(sku, 0))
                            for sku, units in sorted(by_sku.items())},
        "refunded": money_by_currency(session, Return.refund_amount, ReturnStatus.REFUNDED,
                                      since, until),
        "store_credit": money_by_currency(session, Return.credit_amount,
                                          ReturnStatus.KEPT_WITH_CREDIT, since, until),
        "exchanges": statuses.get(ReturnStatus.EXCHANGED, 0),
        "credit_notes": credit_notes(session, since, until),
    }


def rate(units: int, delivered: int) -> str:
    """"2 of 3 units (66.7%)": returned of delivered, one line for the CLI, JSON and artifact."""
    share = f"{units / delivered:.1%}" if delivered else "n/a"
    return f"{units} of {delivered} units ({share})"


def by_status(session: Session, since: datetime | None, until: datetime | None
              ) -> dict[str, int]:
    query = (select(Return.status, func.count()).where(*within(Return.requested_at, since, until))
             .group_by(Return.status).order_by(Return.status))
    return {status: int(n) for status, n in session.execute(query)}


def delivered_units(session: Session, since: datetime | None, until: datetime | None
                    ) -> tuple[int, dict[str, int]]:
    """Units of delivered orders: in all, and per SKU."""
    query = (select(OrderLine.sku, func.sum(OrderLine.quantity))
             .join(Order, Order.id == OrderLine.order_id)
             .where(Order.delivered_at.is_not(None), *within(Order.delivered_at, since, until))
             .group_by(OrderLine.sku))
    per_sku = {sku or "(no sku)": int(units or 0) for sku, units in session.execute(query)}
    return sum(per_sku.values()), per_sku


def returned_units(session: Session, since: datetime | None, until: datetime | None
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """Units going back, by reason and by SKU (one query)."""
    query = (select(Return.reason, OrderLine.sku, func.sum(ReturnLine.quantity))
             .join(ReturnLine, ReturnLine.return_id == Return.id)
             .join(OrderLine, OrderLine.id == ReturnLine.order_line_id)
             .where(Return.status.not_in(NOT_GOING_BACK),
                    *within(Return.requested_at, since, until))
             .group_by(Return.reason, OrderLine.sku))
    by_reason: dict[str, int] = defaultdict(int)
    by_sku: dict[str, int] = defaultdict(int)
    for reason, sku, units in session.execute(query):
        by_reason[reason] += int(units or 0)
        by_sku[sku or "(no sku)"] += int(units or 0)
    return dict(by_reason), dict(by_sku)


def money_by_currency(session: Session, column: Any, status: str, since: datetime | None,
                      until: datetime | None) -> dict[str, str]:
    query = (select(Order.currency, func.count(), func.sum(column))
             .join(Order, Order.id == Return.order_id)
             .where(Return.status == status, *within(Return.requested_at, since, until))
             .group_by(Order.currency).order_by(Order.currency))
    return {currency: f"{Decimal(total or 0):.2f} ({n} returns)"
            for currency, n, total in session.execute(query)}


def credit_notes(session: Session, since: datetime | None, until: datetime | None
                 ) -> dict[str, str]:
    """Credit notes issued (refunds of every kind, not only returns), per currency."""
    query = (select(CreditNote.currency, func.count(), func.sum(CreditNote.total))
             .where(*within(CreditNote.issued_at, since, until))
             .group_by(CreditNote.currency).order_by(CreditNote.currency))
    return {currency: f"{Decimal(total or 0):.2f} ({n} notes)"
            for currency, n, total in session.execute(query)}


def returns_markdown(figures: dict[str, Any]) -> str:
    """The Prefect artifact: the same figures as tables (SKUs and reasons are the store's)."""
    lines = ["# Returns", "", "| status | returns |", "|---|---|"]
    lines += [f"| {s} | {n} |" for s, n in figures["by_status"].items()] or ["| none | 0 |"]
    for title, rows in (("Return rate by reason", figures["rate_by_reason"]),
                        ("Return rate by product", figures["rate_by_product"])):
        lines += ["", f"## {title}", "", "| | returned of delivered |", "|---|---|"]
        lines += [f"| {cell(k)} | {r} |" for k, r in rows.items()] or ["| none | - |"]
    lines += ["", f"**Exchanges:** {figures['exchanges']}", ""]
    for title, key in (("Refunded", "refunded"), ("Store credit (kept)", "store_credit"),
                       ("Credit notes issued", "credit_notes")):
        lines += [f"**{title}:** " + (", ".join(f"{c} {v}" for c, v in figures[key].items())
                                      or "none"), ""]
    return "\n".join(lines)


def cell(value: Any) -> str:
    return md_cell(value)
