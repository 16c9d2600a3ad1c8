"""Read-side queries for operators: one order's journey, and the store-wide report."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tasks.store.models import (
    Artifact,
    LoyaltyEntry,
    Message,
    Order,
    OrderEvent,
    PrivacyRequest,
    Quarantine,
    Shipment,
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


def report(session: Session) -> dict[str, Any]:
    """Orders by state, holds by reason, messages by status, quarantine by reason."""
    from tasks.aftercare.reviews import review_rates_by_rating
    from tasks.loyalty import liability
    from tasks.manifest import latest_manifests
    from tasks.storefront.reviews import approved_by_rating
    from tasks.storefront.survey import survey_page_counts
    from tasks.verify import reason_codes

    holds: Counter[str] = Counter()
    for (reason,) in session.execute(select(Order.hold_reason).where(Order.state == "on_hold")):
        holds.update(reason_codes(reason))
    quarantine: Counter[str] = Counter()
    open_entries = select(Quarantine.reasons).where(Quarantine.status == "open")
    for (reasons,) in session.execute(open_entries):
        quarantine.update({_quarantine_label(r) for r in reasons})
    return {
        "orders_by_state": _count_by(session, Order.state),
        "holds_by_reason": dict(holds.most_common()),
        "messages_by_status": _count_by(session, Message.status),
        "quarantine_by_reason": dict(quarantine.most_common()),
        "points_liability": liability(session),
        "review_requests_by_rating": {
            str(rating): rates for rating, rates in review_rates_by_rating(session).items()
        },
        "approved_reviews_by_rating": approved_by_rating(session),  # stars -> approved reviews
        "survey_page": survey_page_counts(session),  # page answers, opens, prefetches
        "latest_runs": latest_manifests(session),
        "privacy_requests": privacy_requests(session),
    }


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
