"""Flat frames for the suites: one row per record, with derived columns computed in pandas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import pandas as pd

from tasks.intake.schema import OrderIn

CONFIRMATION = "confirmation"  # tasks.confirm.TEMPLATE


def total_mismatch(order: OrderIn) -> Decimal:
    """|total − computed|: subtotal + shipping + tax (unless included) + tip, duties, fees."""
    return abs((order.total or Decimal(0)) - order.computed_total())


def total_finding(order: OrderIn) -> str:
    """The verification hold for a total nothing explains, e.g. "total 10.00, computed 9.50"."""
    return f"total {order.total}, computed {order.computed_total()}"


# Hold code (an expectation's meta.hold) → the detail verification shows for the order.
HOLD_DETAILS = {"total_mismatch": total_finding}


def _order_row(order: OrderIn, now: datetime) -> dict[str, Any]:
    return {
        "source": order.source, "external_id": order.external_id, "email": order.email,
        "currency": order.currency,
        "min_quantity": min(line.quantity for line in order.lines),
        "min_price": float(min(line.unit_price for line in order.lines)),
        "total_mismatch": float(total_mismatch(order)),
        "placed_in_future_seconds": (order.placed_at - now).total_seconds(),
    }


def order_frame(orders: list[OrderIn], now: datetime) -> pd.DataFrame:
    """One row per order, positions matching `orders`, with the derived check columns."""
    columns = ["source", "external_id", "email", "currency", "min_quantity", "min_price",
               "total_mismatch", "placed_in_future_seconds"]
    return pd.DataFrame([_order_row(order, now) for order in orders], columns=columns)


def seconds_after(values: pd.Series, now: datetime) -> pd.Series:
    """Seconds each timestamp lies after `now` (NaN where missing or unreadable)."""
    times = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    return (times - pd.Timestamp(now)).dt.total_seconds()


def tracking_frame(events: Iterable[Mapping[str, Any]], now: datetime) -> pd.DataFrame:
    """Tracking events (event_id, tracking_number, tag, checkpoint_time) plus the future check."""
    columns = ["event_id", "tracking_number", "tag", "checkpoint_time"]
    frame = pd.DataFrame([{c: e.get(c) for c in columns} for e in events], columns=columns)
    frame["checkpoint_in_future_seconds"] = seconds_after(frame["checkpoint_time"], now)
    return frame


def feedback_frame(items: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Feedback rows (order_id, rating, tags as a list)."""
    columns = ["order_id", "rating", "tags"]
    rows = [{"order_id": i.get("order_id"), "rating": i.get("rating"),
             "tags": list(i.get("tags") or [])} for i in items]
    return pd.DataFrame(rows, columns=columns)


def outbox_frame(
    messages: Iterable[Mapping[str, Any]], confirmed_order_ids: Iterable[int] = ()
) -> pd.DataFrame:
    """Outbox messages plus `confirmations` (per confirmation: how many its order has).

    A confirmed order with no confirmation at all gets a placeholder row (message_id None,
    confirmations 0) after the messages, so the gap shows up as a failed row too.
    """
    rows = [{"message_id": m.get("id"), "order_id": m.get("order_id"),
             "template": m.get("template"), "to_addr": _lower(m.get("to_addr"))}
            for m in messages]
    counts = Counter(r["order_id"] for r in rows if r["template"] == CONFIRMATION)
    missing = [oid for oid in dict.fromkeys(confirmed_order_ids) if oid not in counts]
    rows += [{"message_id": None, "order_id": oid, "template": CONFIRMATION, "to_addr": None}
             for oid in missing]
    frame = pd.DataFrame(rows, columns=["message_id", "order_id", "template", "to_addr"])
    frame["confirmations"] = [counts.get(r["order_id"], 0) if r["template"] == CONFIRMATION
                              else None for r in rows]
    frame["confirmations"] = frame["confirmations"].astype("float64")
    return frame


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def ledger_frame(entries: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Ledger entries plus, per row, its customer's approved balance and its order's reversal
    excess (points reversed beyond what the order earned; must be <= 0).

    Entry fields: source_key, customer_id, order_id, kind (earn | reverse | redeem ...),
    status (pending | approved), points (signed).
    """
    frame = pd.DataFrame(list(entries), columns=["source_key", "customer_id", "order_id",
                                                  "kind", "status", "points"])
    approved = frame["points"].where(frame["status"] == "approved", 0)
    frame["approved_balance"] = approved.groupby(frame["customer_id"]).transform("sum")
    earned = frame["points"].where(frame["kind"] == "earn", 0).groupby(frame["order_id"])
    reversed_ = (-frame["points"]).where(frame["kind"] == "reverse", 0).groupby(frame["order_id"])
    frame["reversal_excess"] = reversed_.transform("sum") - earned.transform("sum")
    return frame
