"""Read-side queries for operators: one order's journey, lists of what waits for a decision,
and the store-level part of the report. Imports nothing above tasks/store."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from tasks.states import CaseStatus, OrderState, QuarantineStatus
from tasks.store.models import (
    Artifact,
    Customer,
    LoyaltyEntry,
    Message,
    Order,
    OrderEvent,
    OrderLine,
    PrivacyRequest,
    Quarantine,
    Return,
    ServiceCase,
    Shipment,
    Step,
)


class OrderNotFound(LookupError):
    """No order has that id; the message says so in plain words."""


def find_order(session: Session, external_id: str) -> Order:
    """An order by its source id (e.g. the Shopify id) or its display name (e.g. #1001)."""
    matches = list(session.scalars(select(Order).where(Order.external_id == external_id)))
    if not matches:
        matches = list(session.scalars(select(Order).where(Order.name == external_id)))
    if not matches:
        raise OrderNotFound(f"no order with id or name {external_id!r}")
    if len(matches) > 1:
        sources = ", ".join(sorted(o.source for o in matches))
        raise OrderNotFound(f"{external_id!r} matches orders from several sources: {sources}")
    return matches[0]


def order_view(session: Session, order: Order) -> dict[str, Any]:
    """Everything an operator needs about one order, JSON-ready."""
    packing = order.packing or {}
    return {
        "external_id": order.external_id,
        "source": order.source,
        "name": order.name,
        "state": order.state,
        "hold_reason": order.hold_reason,
        "promised_delivery": order.promised_delivery.isoformat()
        if order.promised_delivery
        else None,
        "packing": {
            "instructions": packing.get("instructions", []),
            "insured": bool(packing.get("insured", False)),
            "inserts": packing.get("inserts", []),
        },
        "shipments": _shipments(session, order.id),
        "loyalty": _ledger(session, order.id),
        "messages": _messages(session, order.id),
        "events": _events(session, order.id),
        "artifacts": _artifacts(session, order.id),
        "returns": order_returns(session, [order.id]).get(order.id, []),
    }


def _messages(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Message).where(Message.order_id == order_id).order_by(Message.id))
    return [
        {
            "template": m.template,
            "version": m.version,
            "class": m.msg_class,
            "status": m.status,
            "reason": m.reason,
            "message_id": m.message_id,
            "sent_at": m.sent_at.isoformat() if m.sent_at else None,
        }
        for m in rows
    ]


def _shipments(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Shipment).where(Shipment.order_id == order_id)
                           .order_by(Shipment.id))
    return [{"carrier": s.carrier, "tracking_number": s.tracking_number, "status": s.status,
             "substatus": s.substatus,
             "delivered_at": s.delivered_at.isoformat() if s.delivered_at else None}
            for s in rows]


def _ledger(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(LoyaltyEntry).where(LoyaltyEntry.order_id == order_id)
                           .order_by(LoyaltyEntry.id))
    return [{"kind": e.kind, "status": e.status, "points": e.points,
             "rule_version": e.rule_version, "source_key": e.source_key,
             "at": e.created_at.isoformat()} for e in rows]


def _events(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
    )
    return [
        {
            "at": e.at.isoformat(),
            "kind": e.kind,
            "from": e.from_state,
            "to": e.to_state,
            "actor": e.actor,
            "detail": e.detail,
        }
        for e in rows
    ]


def _artifacts(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Artifact).where(Artifact.order_id == order_id).order_by(Artifact.id)
    )
    return [{"kind": a.kind, "ref": a.ref, "sha256": a.sha256, "size": a.size} for a in rows]


def order_artifacts(session: Session, order: Order) -> list[dict[str, Any]]:
    """Documents and sent messages of one order, each with a file name to save it under."""
    documents = [{"kind": a.kind, "ref": a.ref, "sha256": a.sha256, "file": f"{a.kind}.html"}
                 for a in session.scalars(select(Artifact).where(Artifact.order_id == order.id)
                                          .order_by(Artifact.id))]
    messages = [{"kind": f"mail:{m.template}", "ref": m.artifact_ref, "sha256": None,
                 "file": f"{m.template}-v{m.version}.eml"}
                for m in session.scalars(select(Message).where(
                    Message.order_id == order.id, Message.artifact_ref.like("%://%"))
                    .order_by(Message.id))]
    return documents + messages


def store_counts(session: Session) -> dict[str, Any]:
    """The store-level parts of the report; tasks/reporting.py adds the domain's figures."""
    quarantine: Counter[str] = Counter()
    for entry in open_quarantine(session):
        quarantine.update({_quarantine_label(r) for r in entry["reasons"]})
    return {
        "orders_by_state": _count_by(session, Order.state),
        "messages_by_status": _count_by(session, Message.status),
        "quarantine_by_reason": dict(quarantine.most_common()),
        "privacy_requests": privacy_requests(session),
    }


def hold_reasons(session: Session) -> list[str | None]:
    """The hold reason of every order on hold (the text; reason codes are the domain's)."""
    held = select(Order.hold_reason).where(Order.state == OrderState.ON_HOLD)
    return list(session.scalars(held))


def held_orders(session: Session, limit: int | None = None) -> list[Order]:
    """Orders on hold, the longest-waiting first."""
    return list(session.scalars(select(Order).where(Order.state == OrderState.ON_HOLD)
                                .order_by(Order.updated_at, Order.id).limit(limit)))


def held_orders_to_review(
    session: Session, order_ids: Sequence[str] = (), limit: int | None = None
) -> list[Order]:
    """Orders on hold, oldest placed first, with their lines and customer: only those named
    (source id or display name) when `order_ids` is given."""
    query = select(Order).where(Order.state == OrderState.ON_HOLD)
    if order_ids:
        query = query.where(or_(Order.external_id.in_(order_ids), Order.name.in_(order_ids)))
    query = (query.options(selectinload(Order.lines), selectinload(Order.customer))
             .order_by(Order.placed_at, Order.id).limit(limit))
    return list(session.scalars(query))


def open_quarantine_entries(
    session: Session, entry_ids: Sequence[int] = (), limit: int | None = None
) -> list[Quarantine]:
    """Open quarantine entries, oldest first: only those named when `entry_ids` is given."""
    query = select(Quarantine).where(Quarantine.status == QuarantineStatus.OPEN)
    if entry_ids:
        query = query.where(Quarantine.id.in_(entry_ids))
    return list(session.scalars(query.order_by(Quarantine.id).limit(limit)))


def hold_list(session: Session) -> list[dict[str, Any]]:
    """Every order on hold, by id: external id, display name, hold reason (as stored)."""
    rows = session.execute(select(Order.external_id, Order.name, Order.hold_reason)
                           .where(Order.state == OrderState.ON_HOLD).order_by(Order.id))
    return [{"external_id": r[0], "name": r[1], "hold_reason": r[2]} for r in rows]


def open_quarantine(session: Session) -> list[dict[str, Any]]:
    """Open quarantine entries, oldest first, with where they came from and why."""
    open_ = select(Quarantine).where(Quarantine.status == QuarantineStatus.OPEN)
    rows = session.scalars(open_.order_by(Quarantine.id))
    return [{"id": q.id, "kind": q.kind, "source": q.source, "external_id": q.external_id,
             "origin": q.origin, "reasons": q.reasons} for q in rows]


def open_case_rows(
    session: Session, case_ids: Sequence[int] | None = None, limit: int | None = None
) -> list[tuple[ServiceCase, str | None, str, str]]:
    """Open service cases, oldest first, each with its order's name, external id and e-mail."""
    query = (select(ServiceCase, Order.name, Order.external_id, Order.email)
             .join(Order, Order.id == ServiceCase.order_id)
             .where(ServiceCase.status == CaseStatus.OPEN))
    if case_ids:
        query = query.where(ServiceCase.id.in_(case_ids))
    query = query.order_by(ServiceCase.opened_at, ServiceCase.id).limit(limit)
    return [tuple(row) for row in session.execute(query)]


def case_order_ids(session: Session, case_ids: Sequence[int]) -> list[int]:
    return list(session.scalars(select(ServiceCase.order_id)
                                .where(ServiceCase.id.in_(case_ids))))


def privacy_requests(session: Session, finished: int = 20) -> dict[str, dict[str, Any]]:
    """Open privacy obligations, soonest deadline first, then the latest finished ones (with
    where each data export was written)."""
    open_ = select(PrivacyRequest).where(PrivacyRequest.completed_at.is_(None)).order_by(
        PrivacyRequest.due_at, PrivacyRequest.id)
    done = select(PrivacyRequest).where(PrivacyRequest.completed_at.is_not(None)).order_by(
        PrivacyRequest.completed_at.desc(), PrivacyRequest.id.desc()).limit(finished)
    rows = [*session.scalars(open_), *session.scalars(done)]
    return {_privacy_label(r): _privacy_view(r) for r in rows}


def _privacy_label(request: PrivacyRequest) -> str:
    about = (f"request {request.shopify_request_id}" if request.shopify_request_id
             else f"customer {request.shopify_customer_id}" if request.shopify_customer_id
             else "customer (by e-mail)" if request.subject else request.shop_domain or "")
    return f"#{request.id} {request.kind} {about}".strip()


def _privacy_view(request: PrivacyRequest) -> dict[str, Any]:
    view = {"status": "open" if request.completed_at is None else "done",
            "received": request.received_at.isoformat(), "due": request.due_at.isoformat(),
            "completed": request.completed_at and request.completed_at.isoformat(),
            "export": request.export_ref, "note": request.note}
    return {key: value for key, value in view.items() if value is not None}


def _quarantine_label(reason: dict[str, Any]) -> str:
    return f"{reason.get('field', '?')}: {reason.get('reason', '?')}"[:120]


def _count_by(session: Session, column: Any) -> dict[str, int]:
    rows = session.execute(select(column, func.count()).group_by(column).order_by(column))
    return {str(value): count for value, count in rows}


# --- returns (tasks/returns/) ----------------------------------------------------------------


class ReturnNotFound(LookupError):
    """No return has that RMA; the message says so in plain words."""


def returns_by_rma(session: Session, rmas: Sequence[str]) -> list[Return]:
    """Returns by RMA (case-insensitive, as read over the phone), in the order given."""
    wanted = [rma.strip().upper() for rma in rmas]
    found = {r.rma: r for r in session.scalars(select(Return).where(Return.rma.in_(wanted)))}
    if missing := [rma for rma in wanted if rma not in found]:
        raise ReturnNotFound(f"no return with RMA {', '.join(missing)}")
    return [found[rma] for rma in dict.fromkeys(wanted)]


def order_returns(session: Session, order_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each order's returns, oldest first: RMA, status, resolution, reason, value, lines."""
    query = (select(Return).where(Return.order_id.in_(sorted(set(order_ids))))
             .order_by(Return.id).options(selectinload(Return.lines)))
    returns = list(session.scalars(query))
    line_ids = sorted({rl.order_line_id for ret in returns for rl in ret.lines})
    titles = {lid: (sku, title) for lid, sku, title in session.execute(
        select(OrderLine.id, OrderLine.sku, OrderLine.title).where(OrderLine.id.in_(line_ids)))}
    found: dict[int, list[dict[str, Any]]] = {}
    for ret in returns:
        found.setdefault(ret.order_id, []).append(return_view(ret, titles))
    return found


def return_view(ret: Return, titles: dict[int, tuple[str | None, str]]) -> dict[str, Any]:
    return {"rma": ret.rma, "status": ret.status, "resolution": ret.resolution,
            "reason": ret.reason, "source": ret.source, "goods_value": str(ret.goods_value),
            "refund_amount": None if ret.refund_amount is None else str(ret.refund_amount),
            "credit_amount": None if ret.credit_amount is None else str(ret.credit_amount),
            "label": ret.label_url or ret.label_ref,
            "replacement_order_id": ret.replacement_order_id,
            "requested_at": ret.requested_at.isoformat(),
            "lines": [{"sku": titles.get(rl.order_line_id, (None, ""))[0],
                       "title": titles.get(rl.order_line_id, (None, ""))[1],
                       "quantity": rl.quantity, "exchange_sku": rl.exchange_sku}
                      for rl in ret.lines]}


def return_rows(session: Session, status: str | None = None, limit: int | None = None
                ) -> list[tuple[Return, Order]]:
    """Returns (with their orders and lines), oldest first; only `status` when given."""
    query = (select(Return, Order).join(Order, Order.id == Return.order_id)
             .options(selectinload(Return.lines), selectinload(Order.lines)))
    if status:
        query = query.where(Return.status == status)
    query = query.order_by(Return.requested_at, Return.id).limit(limit)
    return [(ret, order) for ret, order in session.execute(query)]


def return_review_reasons(session: Session, order_ids: Sequence[int]) -> dict[int, str]:
    """return id → why the policy left it to an operator (the "return" event that opened it)."""
    query = (select(OrderEvent.detail).where(OrderEvent.order_id.in_(sorted(set(order_ids))),
                                             OrderEvent.kind == "return")
             .order_by(OrderEvent.id))
    return {int(detail["return_id"]): str(detail["needs_operator"])
            for detail in session.scalars(query)
            if detail.get("return_id") and detail.get("needs_operator")}


# --- finding an order (flows/find_order.py, `journeys find-order`) ----------------------------


def search_orders(session: Session, query: str, limit: int) -> list[Order]:
    """Orders an operator means by `query`, newest first, at most `limit`: an e-mail address
    (whole, any case) finds its orders; anything else finds the order of that number (`#1001`,
    `1001`) or source id, and the orders of customers whose first or last name holds every word
    (`ada`, `ada lov`; any case)."""
    text = " ".join(query.split())
    if not text:
        return []
    if "@" in text:
        found = or_(Order.email == text.lower(), Customer.email == text.lower())
    else:
        number = text.removeprefix("#")
        found = or_(Order.name.in_(sorted({text, number, f"#{number}"})), Order.external_id == text,
                    and_(*(_name_holds(word) for word in text.split())))
    rows = (select(Order).join(Customer, Customer.id == Order.customer_id).where(found)
            .order_by(Order.placed_at.desc(), Order.id.desc()).limit(limit)
            .options(selectinload(Order.customer)))
    return list(session.scalars(rows))


def _name_holds(word: str) -> Any:
    """The customer's first or last name contains `word` (LIKE's wildcards in it are literal)."""
    pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return or_(Customer.first_name.ilike(pattern, escape="\\"),
               Customer.last_name.ilike(pattern, escape="\\"))


def order_detail(session: Session, order: Order) -> dict[str, Any]:
    """`order_view` and what helping the customer needs: placed when, lines, totals, the
    customer, the shipping address and the order's steps (raw: the caller masks what it shows)."""
    customer = order.customer
    return order_view(session, order) | {
        "placed_at": order.placed_at.isoformat(),
        "currency": order.currency,
        "totals": {field: str(getattr(order, field)) for field in (
            "subtotal", "discounts", "shipping", "tax", "total")},
        "taxes_included": order.taxes_included,
        "financial_status": order.financial_status,
        "shipping_title": order.shipping_title,
        "lines": [{"title": line.title, "variant": line.variant_title, "sku": line.sku,
                   "quantity": line.quantity, "refunded": line.refunded_quantity,
                   "unit_price": str(line.unit_price), "discount": str(line.total_discount)}
                  for line in order.lines],
        "customer": {"first_name": customer.first_name, "last_name": customer.last_name,
                     "email": order.email or customer.email},
        "shipping_address": dict(order.shipping_address or {}),
        "steps": _steps(session, order.id),
    }


def _steps(session: Session, order_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(select(Step).where(Step.order_id == order_id)
                           .order_by(Step.due_at, Step.id))
    return [{"name": s.name, "status": s.status, "due_at": s.due_at.isoformat(),
             "attempts": s.attempts, "reason": s.reason} for s in rows]
