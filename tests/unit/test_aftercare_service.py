"""Service recovery: an operator's decision resolves the case once and tells the customer."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from tasks.aftercare.service import ServiceError, decide_case, open_cases
from tasks.messaging.outbox import dispatch
from tasks.store.db import session_scope
from tasks.store.models import Message, OrderEvent, ServiceCase
from tests.factories import add_order


def order_with_case(session, now, proposed="refund"):
    order = add_order(session, now, state="delivered", step=None,
                      delivered_at=now - timedelta(days=2))
    case = ServiceCase(effect_key=f"order:{order.id}:case:feedback", order_id=order.id,
                       reason="feedback rating 1", proposed=proposed, opened_at=now)
    session.add(case)
    session.flush()
    return order, case


def test_refund_decision_resolves_case_queues_outcome_and_returns_refund(engine, runtime, now):
    with session_scope(engine) as session:
        order, case = order_with_case(session, now)
        order_id, case_id, total = order.id, case.id, order.total
    with session_scope(engine) as session:
        assert [c["id"] for c in open_cases(session)] == [case_id]
        outcome = decide_case(session, case_id, "refund", "ops@store", "crushed box", now,
                              runtime, refund_amount=Decimal("10.00"))
    with session_scope(engine) as session:
        again = decide_case(session, case_id, "replacement", "someone", None, now, runtime)
    assert outcome.changed and not again.changed
    assert again.decision == "refund"
    assert outcome.refund is not None
    assert (outcome.refund.order_id, outcome.refund.amount, outcome.refund.currency) == (
        order_id, Decimal("10.00"), "USD")
    assert outcome.refund.source_key == f"case:{case_id}:refund"
    assert total == Decimal("30.00")
    with session_scope(engine) as session:
        case = session.get(ServiceCase, case_id)
        messages = session.scalars(select(Message)).all()
        events = session.scalars(select(OrderEvent).where(OrderEvent.kind == "decision")).all()
        assert open_cases(session) == []
        result = dispatch(session, now, runtime)
    assert (case.status, case.decision, case.decided_by, case.note) == (
        "resolved", "refund", "ops@store", "crushed box")
    assert case.refund_amount == Decimal("10.00") and case.decided_at == now
    [message] = messages
    assert message.effect_key == f"order:{order_id}:case:{case_id}:service_outcome:v1"
    assert (message.template, message.msg_class) == ("service_outcome", "transactional")
    assert message.context["case"]["decision"] == "refund"
    assert "crushed box" not in str(message.context)  # the operator's note stays internal
    [event] = events
    assert (event.actor, event.detail["note"], event.detail["decision"]) == (
        "ops@store", "crushed box", "refund")
    assert result.sent == 1


def test_replacement_has_no_refund_and_bad_decisions_are_refused(engine, runtime, now):
    with session_scope(engine) as session:
        _, case = order_with_case(session, now, proposed="replacement")
        case_id = case.id
    with session_scope(engine) as session:
        with pytest.raises(ServiceError, match="unknown decision"):
            decide_case(session, case_id, "shrug", "ops", None, now, runtime)
        with pytest.raises(ServiceError, match="at most the order total"):
            decide_case(session, case_id, "refund", "ops", None, now, runtime,
                        refund_amount=Decimal("1000"))
        with pytest.raises(ServiceError, match="no service case"):
            decide_case(session, case_id + 100, "refund", "ops", None, now, runtime)
        outcome = decide_case(session, case_id, "replacement", "ops", "resend", now, runtime)
    assert outcome.refund is None and outcome.changed
