"""Verification rules and the verify stage, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from tasks.cancellation import cancel_holds
from tasks.store.db import session_factory
from tasks.store.journal import due_order_ids
from tasks.store.models import Order, OrderEvent, Product, Step
from tasks.verify import (
    address_findings,
    email_findings,
    reason_codes,
    release_holds,
    verify,
)
from tests.factories import add_catalog, add_order


def test_address_rules_per_country(cfg):
    rules = cfg.verification
    good = {"name": "A", "address1": "x", "city": "y", "province_code": "OR", "zip": "97209",
            "country_code": "US"}
    assert address_findings(good, rules) == []
    codes = [f.code for f in address_findings({**good, "zip": "9720"}, rules)]
    assert codes == ["address_invalid_zip"]
    missing = address_findings({**good, "zip": "", "city": " "}, rules)
    assert [(f.code, f.detail) for f in missing] == [("address_incomplete", "city, zip")]
    assert [f.code for f in address_findings({**good, "country_code": "BR"}, rules)] == [
        "address_unsupported_country"
    ]
    ireland = {"name": "A", "address1": "x", "city": "Dublin", "country_code": "IE"}
    assert address_findings(ireland, rules) == []


def test_reason_codes_parse_stored_reasons():
    assert reason_codes("payment_not_captured: pending; out_of_stock: X (want 2, have 1)") == [
        "payment_not_captured", "out_of_stock",
    ]
    assert reason_codes(None) == []


def _run_verify(engine, runtime, now, ids):
    with session_factory(engine)() as session, session.begin():
        return verify(session, ids, now, runtime)


def test_verify_outcomes_and_reasons(engine, runtime, now):
    with session_factory(engine)() as session, session.begin():
        add_catalog(session, now)
        ok = add_order(session, now, lines=[("MUG-1", 2, "18.00")])
        unpaid = add_order(session, now, financial_status="pending")
        bad_mail = add_order(session, now, email="not-an-email")
        unknown = add_order(session, now, lines=[("NOPE-9", 1, "5.00")])
        too_many = add_order(session, now, lines=[("RING-1", 4, "900.00")])
        cancelled = add_order(session, now, financial_status="voided")
        flagged = add_order(session, now, tags=["fraud-suspected"])
        ids = [o.id for o in (ok, unpaid, bad_mail, unknown, too_many, cancelled, flagged)]

    result = _run_verify(engine, runtime, now, ids)
    assert (result.advanced, result.held, result.closed) == (1, 5, 1)

    with session_factory(engine)() as session:
        orders = {o.id: o for o in session.scalars(select(Order).where(Order.id.in_(ids)))}
        assert orders[ok.id].state == "verified" and orders[ok.id].stock_reserved
        assert orders[unpaid.id].hold_reason == "payment_not_captured: pending"
        assert orders[bad_mail.id].hold_reason.startswith("email_invalid")
        assert orders[unknown.id].hold_reason == "unknown_sku: NOPE-9"
        assert "out_of_stock: RING-1 (want 4, have 3)" in orders[too_many.id].hold_reason
        assert "high_value" in orders[too_many.id].hold_reason
        assert orders[cancelled.id].state == "cancelled"
        assert orders[flagged.id].hold_reason == "risk_flagged: tag fraud-suspected"
        mug = session.scalars(select(Product).where(Product.sku == "MUG-1")).one()
        assert (mug.stock, mug.reserved) == (10, 2)  # reserved for the one verified order only
        assert due_order_ids(session, "pack", now, 100) == [ok.id]


def test_last_unit_goes_to_the_first_order_only(engine, runtime, now):
    with session_factory(engine)() as session, session.begin():
        add_catalog(session, now)
        first = add_order(session, now, lines=[("RING-1", 2, "900.00")], currency="EUR")
        second = add_order(session, now, lines=[("RING-1", 2, "900.00")], currency="EUR")
    _run_verify(engine, runtime, now, [first.id, second.id])
    with session_factory(engine)() as session:
        states = dict(session.execute(select(Order.id, Order.state)).all())
        assert states == {first.id: "verified", second.id: "on_hold"}
        ring = session.scalars(select(Product).where(Product.sku == "RING-1")).one()
        assert ring.stock - ring.reserved == 1


def test_verify_twice_changes_nothing(engine, runtime, now):
    with session_factory(engine)() as session, session.begin():
        add_catalog(session, now)
        order = add_order(session, now, lines=[("TEE-1", 3, "25.00")])
    _run_verify(engine, runtime, now, [order.id])
    again = _run_verify(engine, runtime, now + timedelta(minutes=5), [order.id])
    assert (again.advanced, again.held, again.skipped) == (0, 0, 1)
    with session_factory(engine)() as session:
        assert session.scalar(select(Product.reserved).where(Product.sku == "TEE-1")) == 3
        assert session.scalar(select(func.count()).select_from(OrderEvent)) == 1
        assert session.scalar(select(func.count()).select_from(Step)) == 2  # verify + pack


def test_operator_release_and_cancel(engine, runtime, now):
    with session_factory(engine)() as session, session.begin():
        add_catalog(session, now)
        held = add_order(session, now, financial_status="pending")
        doomed = add_order(session, now, financial_status="pending")
    _run_verify(engine, runtime, now, [held.id, doomed.id])
    with session_factory(engine)() as session, session.begin():
        assert release_holds(session, [held.id], now, actor="ops@store", note="paid by phone")
        assert cancel_holds(session, [doomed.id], now, runtime, actor="ops@store",
                            note="fraud")
        assert release_holds(session, [held.id], now, actor="ops@store") == []  # no-op twice
    with session_factory(engine)() as session:
        order = session.get(Order, held.id)
        assert (order.state, order.hold_reason) == ("verified", None)
        assert session.get(Order, doomed.id).state == "cancelled"
        last = session.scalars(select(OrderEvent).where(OrderEvent.order_id == held.id)
                               .order_by(OrderEvent.id.desc())).first()
        assert last.actor == "ops@store" and last.detail["note"] == "paid by phone"
        assert due_order_ids(session, "pack", now, 10) == [held.id]


def test_addresses_the_mailer_would_refuse_are_held(cfg):
    from tasks.store.models import Order

    rules = cfg.verification
    for bad in ("john..doe@example.com", "a@b@example.com", ".a@example.com"):
        assert [f.code for f in email_findings(Order(email=bad), rules)] == ["email_invalid"], bad
    assert email_findings(Order(email="ada.lovelace+shop@example.co.uk"), rules) == []
