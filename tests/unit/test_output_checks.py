"""Output checks over the outbox after confirmation, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import delete, select

from tasks.confirm import confirm
from tasks.quality.outputs import check_outbox
from tasks.store.db import session_scope
from tasks.store.models import Message
from tests.factories import add_catalog, add_order


def _confirmed_orders(engine, runtime, now, count=3) -> list[int]:
    with session_scope(engine) as session:
        add_catalog(session, now)
        ids = [add_order(session, now, state="packed", step="confirm").id for _ in range(count)]
    with session_scope(engine) as session:
        confirm(session, ids, now, runtime)
    return ids


def test_one_confirmation_per_confirmed_order_passes(engine, runtime, now):
    _confirmed_orders(engine, runtime, now)
    with session_scope(engine) as session:
        result = check_outbox(session, now)
    assert result.success and result.stats["rows"] == 3


def test_a_double_or_missing_confirmation_fails(engine, runtime, now):
    first, second, _ = _confirmed_orders(engine, runtime, now)
    with session_scope(engine) as session:
        original = session.scalars(select(Message).where(Message.order_id == first)).one()
        session.add(Message(**{c: getattr(original, c) for c in (
            "order_id", "customer_id", "template", "version", "msg_class", "priority", "to_addr",
            "message_id", "context", "status", "attempts", "not_before", "created_at")},
            effect_key=original.effect_key + ":again"))
        session.execute(delete(Message).where(Message.order_id == second))
    with session_scope(engine) as session:
        result = check_outbox(session, now)
    assert not result.success
    assert result.stats["failed_rows"] == 3  # two rows for the double, one placeholder


def test_mail_to_a_suppressed_address_fails(engine, runtime, now):
    first, *_ = _confirmed_orders(engine, runtime, now)
    with session_scope(engine) as session:
        address = session.scalars(select(Message.to_addr).where(Message.order_id == first)).one()
        result = check_outbox(session, now, suppressed=[address.upper()])
    assert not result.success and result.stats["failed_rows"] == 1
