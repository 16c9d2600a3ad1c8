"""Confirmation stage + outbox dispatch through the file transport, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
from datetime import date, timedelta
from decimal import Decimal
from email.policy import default as default_policy

import pytest
from sqlalchemy import event, select

from tasks.confirm import confirm
from tasks.messaging.outbox import dispatch, message_id_for
from tasks.store.db import session_scope
from tasks.store.journal import CONFIRMED, PACKED
from tasks.store.models import Message, Order, OrderEvent, Step
from tests.factories import add_customer, add_order

KEY_OF = "order:{}:confirm:confirmation:v1"


@pytest.fixture
def rt(runtime, tmp_path):
    return runtime


def packed_order(session, now, **fields):
    customer = add_customer(session, now, fields.pop("email", "ada@example.com"), first_name="Ada")
    return add_order(
        session, now, lines=[("TEE-1", 2, "25.00"), ("MUG-1", 1, "18.00")], state=PACKED,
        step="confirm", customer=customer, email=customer.email,
        placed_at=now, discounts=Decimal("6.80"), discount_codes=[{"code": "WELCOME10"}],
        **fields,
    )


def test_confirm_queues_one_message_and_confirms_once(engine, rt, now):
    with session_scope(engine) as session:
        order_id = packed_order(session, now).id
    with session_scope(engine) as session:
        first = confirm(session, [order_id], now, rt)
    with session_scope(engine) as session:
        second = confirm(session, [order_id], now + timedelta(minutes=5), rt)

    assert (first.advanced, second.advanced, second.skipped) == (1, 0, 1)
    with session_scope(engine) as session:
        order = session.get(Order, order_id)
        messages = session.scalars(select(Message)).all()
        step = session.scalars(select(Step).where(Step.order_id == order_id,
                                                  Step.name == "confirm")).one()
        events = session.scalars(select(OrderEvent).where(OrderEvent.order_id == order_id)).all()
    assert order.state == CONFIRMED
    assert order.promised_delivery == date(2026, 11, 25)  # 02:00 LA Wed → Thu dispatch + 4 days
    assert (step.status, step.attempts) == ("done", 1)
    assert [(e.to_state, e.detail) for e in events] == [
        (CONFIRMED, {"promised_delivery": "2026-11-25"})
    ]
    [message] = messages
    assert message.effect_key == KEY_OF.format(order_id)
    assert (message.status, message.msg_class, message.priority) == ("pending", "transactional", 10)
    assert message.to_addr == "ada@example.com" and message.not_before == now
    assert message.message_id == message_id_for(message.effect_key, "northwind.example")
    snapshot = message.context["order"]
    assert snapshot["promised_delivery"] == "2026-11-25"
    assert snapshot["discount_codes"] == ["WELCOME10"]
    assert [(x["quantity"], x["unit_price"], x["line_total"]) for x in snapshot["lines"]] == [
        (2, "25.00", "50.00"), (1, "18.00", "18.00")
    ]
    assert message.context["customer"] == {"first_name": "Ada", "name": "Ada Lovelace"}


def test_confirm_ignores_orders_not_packed(engine, rt, now):
    with session_scope(engine) as session:
        order_id = add_order(session, now, state="verified", step="pack").id
        result = confirm(session, [order_id], now, rt)
    assert (result.advanced, result.skipped) == (0, 1)
    with session_scope(engine) as session:
        assert session.scalars(select(Message)).all() == []
        assert session.get(Order, order_id).state == "verified"


def count_statements(engine, action) -> int:
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    return len(statements)


def test_confirm_runs_a_constant_number_of_queries(engine, rt, now):
    def confirm_batch(size: int) -> int:
        with session_scope(engine) as session:
            emails = [f"b{size}-{i}@example.com" for i in range(size)]
            ids = [packed_order(session, now, email=address).id for address in emails]
        with session_scope(engine) as session:
            return count_statements(engine, lambda: confirm(session, ids, now, rt))

    single, batch = confirm_batch(1), confirm_batch(6)
    assert single == batch and single <= 10  # BEGIN, 3 loads, 6 writes (+ ship_overdue watch)


def test_dispatch_sends_through_the_file_transport(engine, rt, now, tmp_path):
    with session_scope(engine) as session:
        order = packed_order(session, now, gift_note="<b>For you</b>")
        order_id, order_name = order.id, order.name
    with session_scope(engine) as session:
        confirm(session, [order_id], now, rt)
    with session_scope(engine) as session:
        result = dispatch(session, now, rt)
    with session_scope(engine) as session:
        again = dispatch(session, now + timedelta(hours=1), rt)

    assert result.as_dict() == {"sent": 1, "failed": 0, "deferred": 0, "unknown": 0}
    assert again.as_dict() == {"sent": 0, "failed": 0, "deferred": 0, "unknown": 0}
    assert len(list((tmp_path / "artifacts" / "mail").rglob("*.zip"))) == 1
    with session_scope(engine) as session:
        message = session.scalars(select(Message)).one()
    assert (message.status, message.attempts, message.sent_at) == ("sent", 1, now)
    key = KEY_OF.format(order_id)
    assert message.artifact_ref.endswith(f".zip#{key.replace(':', '_')}.eml")
    assert "/mail/2026/11/18/" in message.artifact_ref

    parsed = email.message_from_bytes(rt.archive.get(message.artifact_ref), policy=default_policy)
    assert parsed["Message-ID"] == message.message_id == message_id_for(key, "northwind.example")
    assert parsed["To"] == "Ada Lovelace <ada@example.com>"
    assert parsed["Subject"] == f"Thank you for your order {order_name}"
    assert parsed["Date"] == "Wed, 18 Nov 2026 10:00:00 +0000"
    assert parsed.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in parsed.iter_parts())
    assert "Thank you, Ada!" in text and "<b>For you</b>" in text
    assert "&lt;b&gt;For you&lt;/b&gt;" in html and "Estimated delivery" in html


def test_dispatch_takes_the_most_urgent_first_and_only_due_ones(engine, rt, now):
    with session_scope(engine) as session:
        ids = [packed_order(session, now, email=f"c{i}@example.com").id for i in range(3)]
        confirm(session, ids, now, rt)
        later = session.scalars(select(Message).where(Message.order_id == ids[2])).one()
        later.not_before = now + timedelta(hours=1)
    with session_scope(engine) as session:
        first = dispatch(session, now, rt, limit=1)
    with session_scope(engine) as session:
        rest = dispatch(session, now, rt)
    assert (first.sent, rest.sent) == (1, 1)
    with session_scope(engine) as session:
        statuses = dict(session.execute(select(Message.order_id, Message.status)).all())
    assert statuses == {ids[0]: "sent", ids[1]: "sent", ids[2]: "pending"}


def test_a_message_that_cannot_render_fails_alone(engine, rt, now):
    with session_scope(engine) as session:
        ids = [packed_order(session, now, email=f"d{i}@example.com").id for i in range(2)]
        confirm(session, ids, now, rt)
        broken = session.scalars(select(Message).where(Message.order_id == ids[0])).one()
        broken.context = {"store": {}, "customer": {}, "order": {}}
    with session_scope(engine) as session:
        result = dispatch(session, now, rt)
    assert (result.sent, result.failed) == (1, 1)
    with session_scope(engine) as session:
        failed = session.scalars(select(Message).where(Message.status == "failed")).one()
    assert failed.order_id == ids[0] and "UndefinedError" in failed.reason


def test_dispatch_can_be_limited_to_some_orders(engine, rt, now):
    with session_scope(engine) as session:
        ids = [packed_order(session, now, email=f"e{i}@example.com").id for i in range(2)]
        confirm(session, ids, now, rt)
    with session_scope(engine) as session:
        result = dispatch(session, now, rt, order_ids=[ids[1]])
    assert result.sent == 1
    with session_scope(engine) as session:
        statuses = dict(session.execute(select(Message.order_id, Message.status)).all())
    assert statuses == {ids[0]: "pending", ids[1]: "sent"}
