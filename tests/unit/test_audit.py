"""The rule audit finds each kind of violation, and nothing in a compliant outbox and ledger."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tasks.audit import AuditRules, audit, message_calendar
from tasks.store.db import session_scope
from tasks.store.models import LoyaltyEntry, Message, ServiceCase
from tests.factories import add_customer, add_order

RULES = AuditRules(default_timezone="UTC")


def mail(order, when, template="care_guide", msg_class="marketing", key=""):
    return Message(effect_key=f"order:{order.id}:{template}:{when.isoformat()}{key}",
                   order_id=order.id, customer_id=order.customer_id, template=template,
                   version=1, msg_class=msg_class, to_addr=order.email, message_id="<x@y>",
                   context={}, status="sent", not_before=when, created_at=when, sent_at=when)


def points(order, key, kind, value, when):
    return LoyaltyEntry(source_key=key, customer_id=order.customer_id, order_id=order.id,
                        kind=kind, points=value, status="pending", rule_version="v1",
                        basis=Decimal("10"), created_at=when)


def test_a_compliant_history_has_no_findings(engine, now):
    noon = now.replace(hour=12)
    with session_scope(engine) as session:
        customer = add_customer(session, now, "ok@example.com", accepts_marketing=True)
        order = add_order(session, now, customer=customer, email=customer.email,
                          delivered_at=noon - timedelta(days=3))
        session.add_all([mail(order, noon), mail(order, noon + timedelta(days=1)),
                         mail(order, noon - timedelta(days=2), template="review_request"),
                         points(order, "e", "earn", 100, noon), points(order, "r", "reverse",
                                                                      -100, noon)])
    with session_scope(engine) as session:
        assert audit(session, RULES) == []
        assert len(message_calendar(session)["ok@example.com"]) == 3


def test_each_violation_is_found(engine, now):
    noon = now.replace(hour=12)
    with session_scope(engine) as session:
        silent = add_customer(session, now, "no@example.com", accepts_marketing=False)
        eager = add_customer(session, now, "eager@example.com", accepts_marketing=True)
        first = add_order(session, now, customer=silent, email=silent.email)
        second = add_order(session, now, customer=eager, email=eager.email,
                           delivered_at=noon + timedelta(days=1))
        session.add(ServiceCase(effect_key="c", order_id=second.id, reason="late",
                                proposed="refund", opened_at=noon + timedelta(days=1)))
        session.add_all([
            mail(first, noon),                                               # no consent
            mail(second, noon), mail(second, noon + timedelta(hours=2)),    # 2 within 16 h
            mail(second, now.replace(hour=23), key="late"),                  # quiet hours
            mail(second, noon - timedelta(days=1), template="review_request"),  # before delivery
            mail(second, noon + timedelta(days=2), template="review_request"),  # case open
            points(second, "e1", "earn", 50, noon), points(second, "e2", "earn", 50, noon),
        ])
    with session_scope(engine) as session:
        findings = audit(session, RULES)
    text = "\n".join(findings)
    assert "without consent" in text
    assert "within 16:00:00" in text
    assert "local time" in text
    assert "review request before delivery" in text
    assert "during an open service case" in text
    assert "points earned 2 times" in text
