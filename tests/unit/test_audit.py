"""The rule audit finds each kind of violation, and nothing in a compliant outbox and ledger."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from tasks.audit import AuditRules, audit, message_calendar
from tasks.store.db import session_scope
from tasks.store.models import (
    CreditNote,
    LoyaltyEntry,
    Message,
    Return,
    ReturnLine,
    ServiceCase,
)
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


def test_returns_refunds_winback_and_balances_are_audited(engine, now):
    """Issue 16's rules: no review request for an item already sent back, no refund beyond
    what was paid or twice for one return, one win-back per period, no negative balance."""
    noon = now.replace(hour=12)
    with session_scope(engine) as session:
        buyer = add_customer(session, now, "back@example.com", accepts_marketing=True)
        order = add_order(session, now, customer=buyer, email=buyer.email,
                          lines=[("TEE-1", 1, "25.00"), ("CAP-1", 1, "10.00")],
                          delivered_at=noon - timedelta(days=5))
        tee, cap = order.lines
        back = Return(rma="R-AUDIT001", effect_key="return:a", order_id=order.id,
                      customer_id=buyer.id, source="page", status="received",
                      resolution="refund", reason="too_small",
                      requested_at=noon - timedelta(days=2),
                      goods_value=Decimal("25"), restocking_fee=Decimal(0),
                      shipping_fee=Decimal(0), updated_at=noon)
        back.lines = [ReturnLine(order_line_id=tee.id, quantity=1)]
        session.add(back)
        session.flush()
        review = mail(order, noon, template="review_request")
        review.topic = "TEE-1"
        kept = mail(order, noon + timedelta(hours=1), template="review_request", key="cap")
        kept.topic = "CAP-1"  # not returned: a request for it is fine
        session.add_all([review, kept,
                         mail(order, noon - timedelta(days=30), template="winback", key="w1"),
                         mail(order, noon - timedelta(days=3), template="winback", key="w2")])
        session.add_all([credit(order, back.id, "cn1", "CN-1", "25.00"),
                         credit(order, back.id, "cn2", "CN-2", "25.00")])
        session.add(points(order, "adj", "adjust", -7, noon))
    with session_scope(engine) as session:
        text = "\n".join(audit(session, RULES))
    assert "review request for TEE-1, returned before it was sent" in text
    assert "CAP-1" not in text
    assert f"return {back.id}: refunded 2 times" in text
    assert "credit notes total 50.00" in text
    assert "two win-back mails within 180 days" in text
    assert "points balance -7" in text


def credit(order, return_id, key, number, amount):
    return CreditNote(effect_key=key, number=number, order_id=order.id, return_id=return_id,
                      invoice_number=order.name, currency="USD", goods=Decimal(amount),
                      shipping=Decimal(0), fees=Decimal(0), total=Decimal(amount),
                      reason="return", lines=[], issued_at=order.updated_at)
