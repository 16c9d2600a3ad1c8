"""Topic actions (tasks/lifecycle.py) on real Shopify bodies, on SQLite and PostgreSQL.

The bodies are tests/fixtures/real/shopify (see SOURCES.md): order 450789469 of Shopify's REST
examples has lines 466157049 (IPOD2008GREEN), 518995019 (IPOD2008RED) and 703073504
(IPOD2008BLACK); refund 509562969 refunds the black and the green one, refund 929361466 the red.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from tasks import lifecycle
from tasks.aftercare.followups import catalog_by_category, consumable_days
from tasks.inbox import Body, Delivery, drain, store
from tasks.loyalty import earn
from tasks.messaging.governor import govern
from tasks.messaging.outbox import enqueue, message_id_for
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.models import (
    Customer,
    InboxDelivery,
    LoyaltyEntry,
    Message,
    Order,
    OrderEvent,
    OrderLine,
    Product,
    Return,
    ServiceCase,
    Step,
    Suppression,
)
from tests.factories import add_customer, add_order

REAL = Path(__file__).parents[1] / "fixtures" / "real" / "shopify"
IPODS = {"IPOD2008GREEN": "466157049", "IPOD2008RED": "518995019", "IPOD2008BLACK": "703073504"}
_rows = count(1)


def real(folder: str, name: str, **changes: Any) -> dict[str, Any]:
    return {**json.loads((REAL / folder / f"{name}.json").read_text()), **changes}


def bodies(topic: str, *datas: dict[str, Any], received_at=None, now=None) -> list[Body]:
    return [Body(next(_rows), topic, data, received_at or now) for data in datas]


def ipod_order(session, now, external_id="450789469", state="delivered", price="199.00",
               **fields) -> Order:
    """Shopify's example order: three iPods, one each, with Shopify's line item ids."""
    customer = add_customer(session, now, f"bob{external_id}@example.com",
                            external_id="207119551" if external_id == "450789469" else None)
    order = add_order(session, now, [(sku, 1, price) for sku in IPODS], state=state, step=None,
                      customer=customer, email=customer.email, external_id=external_id,
                      **fields)
    for line in order.lines:
        line.external_id = IPODS[line.sku]
    if session.scalar(select(Product.id).where(Product.sku == "IPOD2008RED")) is None:
        session.add_all([Product(sku=sku, title=sku, category="audio", stock=5, reserved=0,
                                 attributes={}, updated_at=now) for sku in IPODS])
    session.flush()
    return order


def marketing(order: Order, template: str, sku: str, now) -> dict[str, Any]:
    key = f"order:{order.id}:{template}:{sku}:v1"
    return {"effect_key": key, "order_id": order.id, "customer_id": order.customer_id,
            "template": template, "version": 1, "msg_class": "marketing", "priority": 40,
            "topic": sku, "to_addr": order.email, "message_id": message_id_for(key, "x.example"),
            "context": {"product": {"sku": sku}}, "not_before": now}


def snapshot(session, order_id: int) -> dict[str, Any]:
    """Everything the actions may change about an order, to compare a rerun with."""
    def rows(model, *columns):
        return sorted(tuple(r) for r in session.execute(
            select(*columns).where(model.order_id == order_id)))

    order = session.get(Order, order_id)
    return {"order": (order.state, order.financial_status, order.stock_reserved),
            "events": rows(OrderEvent, OrderEvent.kind, OrderEvent.to_state),
            "lines": rows(OrderLine, OrderLine.external_id, OrderLine.refunded_quantity),
            "steps": rows(Step, Step.name, Step.status),
            "messages": rows(Message, Message.template, Message.topic, Message.status),
            "ledger": rows(LoyaltyEntry, LoyaltyEntry.source_key, LoyaltyEntry.points),
            "cases": rows(ServiceCase, ServiceCase.effect_key),
            "reserved": sorted(session.execute(select(Product.sku, Product.reserved)).all())}


def refunded(session, order_id: int) -> dict[str, int]:
    lines = session.execute(select(OrderLine.sku, OrderLine.refunded_quantity)
                            .where(OrderLine.order_id == order_id))
    return dict(lines.tuples().all())


# ---------------------------------------------------------------- refunds


def test_a_refund_is_recorded_once_with_its_quantities_points_and_marketing(
        engine, runtime, now):
    with session_scope(engine) as session:
        order = ipod_order(session, now, placed_at=now - timedelta(days=5), delivered_at=now)
        earn(session, [order.id], now, runtime)
        enqueue(session, [marketing(order, "review_request", sku, now) for sku in IPODS], now)
        order_id = order.id
    refund = real("refunds__create", "sdk-refund-509562969-with-line-items")

    for attempt in range(2):
        with session_scope(engine) as session:
            [(outcome, reason)] = lifecycle.on_refunds(
                session, bodies("refunds/create", refund, now=now), now, runtime).values()
            state = snapshot(session, order_id)
        if attempt == 0:
            first = state
            assert (outcome, reason) == ("processed", "refund 509562969 recorded: 2 unit(s), "
                                                      "goods 391.33, shipping 0")
    assert (outcome, reason) == ("processed", "refund 509562969 already recorded")
    assert state == first
    with session_scope(engine) as session:
        assert refunded(session, order_id) == {"IPOD2008BLACK": 1, "IPOD2008GREEN": 1,
                                               "IPOD2008RED": 0}
        [detail] = session.scalars(select(OrderEvent.detail).where(
            OrderEvent.order_id == order_id, OrderEvent.kind == "refund"))
        reversal = session.scalars(select(LoyaltyEntry).where(
            LoyaltyEntry.kind == "reverse")).one()
        statuses = dict(session.execute(select(Message.topic, Message.status)).tuples().all())
    assert detail == {"refund_id": "509562969", "goods": "391.33", "shipping": "0",
                      "restock": True, "lines": {"703073504": 1, "466157049": 1}}
    # 597 earned on 597.00 of goods; 391.33 refunded -> floor(597 * 391.33 / 597) = 391
    assert (reversal.source_key, reversal.basis, reversal.points) == (
        f"order:{order_id}:reverse:shopify-refund-509562969", Decimal("391.33"), -391)
    assert statuses == {"IPOD2008BLACK": "cancelled", "IPOD2008GREEN": "cancelled",
                        "IPOD2008RED": "pending"}
    assert first["order"] == ("delivered", "paid", False)  # shipped: refunded, not cancelled


def test_a_full_refund_before_shipping_cancels_releases_stock_and_tells_the_customer(
        engine, runtime, now):
    with session_scope(engine) as session:
        order = ipod_order(session, now, state="packed", stock_reserved=True)
        name = order.name
        session.execute(Product.__table__.update().values(reserved=1))
        session.add(Step(order_id=order.id, name="confirm", due_at=now, status="pending",
                         attempts=0, updated_at=now))
        order_id = order.id
    refunds = bodies("refunds/create",
                     real("refunds__create", "sdk-refund-509562969-with-line-items"),
                     real("refunds__create", "sdk-refund-full-shipping-restock"), now=now)

    with session_scope(engine) as session:
        outcomes = list(lifecycle.on_refunds(session, refunds, now, runtime).values())
        first = snapshot(session, order_id)
    with session_scope(engine) as session:
        lifecycle.on_refunds(session, refunds, now, runtime)
        assert snapshot(session, order_id) == first
        mail = session.scalars(select(Message)).one()

    assert outcomes[1][1].endswith("; order cancelled: refunded in full before shipping")
    assert first["order"] == ("cancelled", "refunded", False)
    assert first["steps"] == [("confirm", "closed")]
    assert first["reserved"] == [(sku, 0) for sku in sorted(IPODS)]
    assert (mail.template, mail.status, mail.effect_key) == (
        "order_cancelled", "pending", f"order:{order_id}:cancel:order_cancelled:v1")
    rendered = renderer_for(runtime.config).render(mail.template, mail.context)
    assert rendered.subject == f"Your order {name} has been cancelled"
    assert "will not be shipped" in rendered.text and "will not be shipped" in rendered.html


def test_embedded_refunds_are_applied_and_recomputed_after_intake_reinserts_the_lines(
        engine, runtime, now):
    updated = real("orders__updated", "sdk-order-financial-authorized")  # carries 509562969
    with session_scope(engine) as session:
        order_id = ipod_order(session, now, state="received").id
    with session_scope(engine) as session:
        counts = lifecycle.apply_embedded_refunds(session, [updated], now, runtime)
    with session_scope(engine) as session:  # a changed version: intake re-inserts the lines
        session.execute(delete(OrderLine).where(OrderLine.order_id == order_id))
        session.add_all([OrderLine(order_id=order_id, position=i, external_id=line_id, sku=sku,
                                   title=sku, quantity=1, unit_price=Decimal("199.00"),
                                   total_discount=Decimal(0)) for i, (sku, line_id)
                         in enumerate(IPODS.items())])
    with session_scope(engine) as session:
        again = lifecycle.apply_embedded_refunds(session, [updated], now, runtime)
        assert refunded(session, order_id) == {"IPOD2008BLACK": 1, "IPOD2008GREEN": 1,
                                               "IPOD2008RED": 0}
        events = session.scalar(select(func.count()).select_from(OrderEvent)
                                .where(OrderEvent.kind == "refund"))
        state = session.get(Order, order_id).state

    assert counts["refunds_recorded"] == 1 and again["refunds_known"] == 1
    assert (events, state) == (1, "received")  # one unit still to ship: not cancelled


def test_a_refund_before_its_order_waits_and_a_bad_body_is_ignored(engine, runtime, now):
    refund = real("refunds__create", "sdk-refund-full-shipping-restock")
    bad_quantity = {**refund, "refund_line_items": [{"line_item_id": 1, "quantity": "two"}]}
    with session_scope(engine) as session:
        fresh = lifecycle.on_refunds(session, bodies("refunds/create", refund, now=now),
                                     now, runtime)
        old = lifecycle.on_refunds(session, bodies(
            "refunds/create", refund, {"id": 7}, bad_quantity,
            received_at=now - timedelta(days=4)), now, runtime)

    assert list(fresh.values()) == [("waiting", "waiting for order 450789469")]
    assert list(old.values()) == [
        ("ignored", "no such order: shopify 450789469"),
        ("ignored", "refund without id or order_id"),
        ("ignored", "refund_line_items: each needs line_item_id and a quantity >= 0")]


# ---------------------------------------------------------------- orders/cancelled


def test_orders_cancelled_cancels_before_shipping_and_returns_to_sender_after(
        engine, runtime, now):
    sample = real("orders__cancelled", "yellowai-docs-shopify-sample-2021")
    kanvas = real("orders__cancelled", "kanvas-shopify-test-notification-sku-null")
    with session_scope(engine) as session:
        confirmed = ipod_order(session, now, str(sample["id"]), state="confirmed",
                               stock_reserved=True)
        session.execute(Product.__table__.update().values(reserved=1))
        gone = ipod_order(session, now, str(kanvas["id"]), state="shipped", shipped_at=now)
        ids = confirmed.id, gone.id
    batch = bodies("orders/cancelled", sample, kanvas,
                   real("orders__cancelled", "sdk-order-cancel-refund-amount"),
                   {**sample, "id": 1}, now=now)

    with session_scope(engine) as session:
        outcomes = list(lifecycle.on_orders_cancelled(session, batch, now, runtime).values())
        first = [snapshot(session, oid) for oid in ids]
    with session_scope(engine) as session:
        rerun = list(lifecycle.on_orders_cancelled(session, batch, now, runtime).values())
        assert [snapshot(session, oid) for oid in ids] == first
        cancelled = session.get(Order, ids[0])
        state_event = session.scalars(select(OrderEvent.detail).where(
            OrderEvent.order_id == ids[0], OrderEvent.kind == "state")).one()
        sent_back = session.scalars(select(Return)).one()

    assert outcomes == [
        ("processed", "cancelled (customer)"),
        ("processed", "already shipped: not cancelled, returned to sender"),
        ("ignored", "cancelled_at is empty: not cancelled at source"),
        ("ignored", "no such order: shopify 1")]
    assert rerun[0] == ("processed", "already cancelled")
    assert first[0]["order"] == ("cancelled", "paid", False)
    assert first[0]["reserved"] == [(sku, 0) for sku in sorted(IPODS)]
    assert first[0]["messages"] == [("order_cancelled", None, "pending")]
    assert cancelled.cancelled_at.isoformat() == "2022-01-01T00:00:00+00:00"
    assert state_event["cancel_reason"] == "customer"
    assert first[1]["order"][0] == "shipped"
    assert first[1]["messages"] == [("return_update", None, "pending")]  # the return's notice
    # after shipping: an approved return to sender of every unit, once (no service case)
    assert (sent_back.order_id, sent_back.reason, sent_back.status, sent_back.effect_key) == (
        ids[1], "return_to_sender", "approved", f"order:{ids[1]}:return_to_sender")
    assert first[1]["cases"] == []


# ---------------------------------------------------------------- order_transactions/create


def test_a_capture_releases_a_payment_only_hold_and_notes_other_holds(engine, runtime, now):
    capture = real("order_transactions__create", "sdk-transaction-capture")  # 10.00
    with session_scope(engine) as session:
        only = ipod_order(session, now, state="on_hold", price="1.00", financial_status="pending",
                          hold_reason="payment_not_captured: pending")
        other = ipod_order(session, now, "77", state="on_hold", financial_status="pending",
                           hold_reason="payment_not_captured: pending; high_value: x")
        ids = only.id, other.id
    batch = bodies("order_transactions/create", capture, {**capture, "order_id": 77},
                   real("order_transactions__create", "sdk-transaction-void"), now=now)

    with session_scope(engine) as session:
        outcomes = list(lifecycle.on_transactions(session, batch, now, runtime).values())
        first = [snapshot(session, oid) for oid in ids]
    with session_scope(engine) as session:
        rerun = list(lifecycle.on_transactions(session, batch, now, runtime).values())
        assert [snapshot(session, oid) for oid in ids] == first

    assert outcomes == [
        ("processed", "payment captured (paid): hold released, order verified again"),
        ("processed", "payment captured (partially_paid): other hold reasons remain"),
        ("processed", "void success: nothing to do")]
    assert rerun[0] == ("processed", "payment already recorded (order received, paid)")
    assert first[0]["order"][:2] == ("received", "paid")
    assert first[0]["steps"] == [("verify", "pending")]
    assert first[1]["order"][:2] == ("on_hold", "partially_paid")
    assert ("note", None) in first[1]["events"]


# ---------------------------------------------------------------- customers


def test_customer_updates_change_email_names_and_consent_that_the_governor_sees(
        engine, runtime, now):
    bob = real("customers__update", "sdk-customer-207119551-bob")  # not_subscribed
    with session_scope(engine) as session:
        customer = add_customer(session, now, "bob.norman@mail.example.com",
                                external_id="207119551", accepts_marketing=True)
        add_customer(session, now, "taken@example.com")
        order = ipod_order(session, now, "99")
        mail = marketing(order, "cross_sell", "audio", now)
        enqueue(session, [{**mail, "customer_id": customer.id, "to_addr": customer.email}], now)
        customer_id = customer.id

    def act(*datas, topic="customers/update"):
        with session_scope(engine) as session:
            return list(lifecycle.on_customers(session, bodies(topic, *datas, now=now),
                                               now, runtime).values())

    assert act(bob) == [("processed", f"customer {customer_id}: email, first_name, "
                                      "last_name, accepts_marketing updated")]
    with session_scope(engine) as session:
        stored = session.get(Customer, customer_id)
        pending = list(session.execute(select(Message.__table__)))
        [verdict] = govern(session, pending, now, runtime).held
        assert (stored.email, stored.first_name, stored.accepts_marketing) == (
            "changed@example.com", "Bob", False)
    assert verdict.reason == "no marketing consent"  # the governor reads the customer's consent

    unsubscribed = {**bob, "email": "taken@example.com",
                    "email_marketing_consent": {"state": "unsubscribed"}}
    assert act(unsubscribed) == [("processed", f"customer {customer_id}: unchanged; new e-mail "
                                               "not taken: another customer holds that address")]
    assert suppressions(engine) == 2  # the address it has and the one it asked for
    assert act({**bob, "email_marketing_consent": {"state": "subscribed"}}) == [
        ("processed", f"customer {customer_id}: accepts_marketing updated")]
    assert suppressions(engine) == 1  # taken@ is still out: the update did not move to it
    assert act({**bob, "id": 5, "email_marketing_consent": {"state": "unsubscribed"}}) == [
        ("processed", "no such customer (an update creates none); the unsubscribe is kept as "
                      "a suppression")]
    steve = real("customers__create", "sdk-customer-create-steve")
    assert act(steve, topic="customers/create") == [("processed", "customer created")]
    assert act(steve, topic="customers/create")[0][1].endswith(": unchanged")


def suppressions(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Suppression))


# ---------------------------------------------------------------- products/delete


def test_a_deleted_product_is_never_offered_again_and_its_rows_stay(engine, runtime, now):
    with session_scope(engine) as session:
        order = ipod_order(session, now)
        session.execute(Product.__table__.update().where(Product.sku != "IPOD2008BLACK").values(
            attributes={"shopify_product_id": "632910392", "consumable_days": 30}))
        enqueue(session, [marketing(order, "replenishment", "IPOD2008RED", now)], now)

    def act(*ids):
        with session_scope(engine) as session:
            return list(lifecycle.on_products_deleted(session, bodies(
                "products/delete", *({"id": pid} for pid in ids), now=now), now, runtime)
                .values())

    assert act(632910392, 1) == [
        ("processed", "marked deleted, no longer offered: IPOD2008GREEN, IPOD2008RED"),
        ("ignored", "no product with shopify_product_id 1")]
    assert act(632910392) == [("processed", "already marked deleted: IPOD2008GREEN, IPOD2008RED")]
    with session_scope(engine) as session:
        offered = [variant.sku for product in catalog_by_category(session, {"audio"})["audio"]
                   for variant in product.variants]  # what cross-sell may still offer
        red = session.scalars(select(Product).where(Product.sku == "IPOD2008RED")).one()
        status = session.scalars(select(Message.status)).one()
        lines = session.scalar(select(func.count()).select_from(OrderLine))
    assert offered == ["IPOD2008BLACK"]
    assert consumable_days(red) is None and red.attributes["deleted_at"] == now.isoformat()
    assert (status, lines) == ("cancelled", 3)


# ---------------------------------------------------------------- through the drain


def test_the_drain_hands_the_new_topics_to_their_actions(engine, runtime, now):
    deliveries = [
        Delivery("shopify", "refunds/create", "r-1", json.dumps(
            real("refunds__create", "sdk-refund-full-shipping-restock")).encode()),
        Delivery("shopify", "products/delete", "p-1", b'{"id": 42}'),
        Delivery("shopify", "customers/update", "c-1", b'{"email": "x@example.com"}'),
    ]
    with session_scope(engine) as session:
        store(session, deliveries, now)

    drain(engine, engine, now, runtime)

    with session_scope(engine) as session:
        rows = session.execute(select(InboxDelivery.topic, InboxDelivery.status,
                                      InboxDelivery.reason).order_by(InboxDelivery.id))
        assert [tuple(r) for r in rows] == [
            ("refunds/create", "pending", "waiting for order 450789469"),
            ("products/delete", "ignored", "no product with shopify_product_id 42"),
            ("customers/update", "ignored", "customer without id")]


# ---------------------------------------------------------------- bodies of odd shapes


def test_odd_customer_and_transaction_fields_are_ignored_naming_the_field(engine, runtime, now):
    with session_scope(engine) as session:
        customers = lifecycle.on_customers(session, bodies(
            "customers/update",
            {"id": 1, "email_marketing_consent": {"state": {}}},  # was TypeError: unhashable
            {"id": 1, "email_marketing_consent": {"state": []}},
            {"id": 1, "email_marketing_consent": "subscribed"},
            {"id": {"id": 1}}, now=now), now, runtime)
        payments = lifecycle.on_transactions(session, bodies(
            "order_transactions/create",
            {"order_id": 1, "kind": {}, "status": "success"},  # was TypeError: unhashable
            {"order_id": "#☠1☢\n---\n4321\n", "kind": "capture", "status": "success"},
            {"order_id": 1, "kind": "capture", "status": "success", "amount": "1e400"},
            now=now), now, runtime)

    assert list(customers.values()) == [
        ("ignored", "email_marketing_consent.state: expected text, got an object"),
        ("ignored", "email_marketing_consent.state: expected text, got a list"),
        ("ignored", "email_marketing_consent: expected an object, got 'subscribed'"),
        ("ignored", "id: expected a Shopify id (a positive integer), got an object")]
    assert list(payments.values()) == [
        ("ignored", "kind: expected text, got an object"),
        ("ignored", "order_id: expected a Shopify id (a positive integer), got "
                    "'#☠1☢\\n---\\n4321\\n'"),
        ("ignored", "amount: expected an amount >= 0, got '1e400'")]  # not "paid in full"


def test_odd_ids_amounts_and_dates_in_refunds_cancellations_and_deletions(engine, runtime, now):
    refund = real("refunds__create", "sdk-refund-full-shipping-restock")
    with session_scope(engine) as session:
        refunds = lifecycle.on_refunds(session, bodies(
            "refunds/create",
            {"id": 1, "order_id": "\ud800"},  # was UnicodeEncodeError in load_orders
            {**refund, "refund_shipping_lines": [{"subtotal_amount_set": "1e400"}]},  # was
            {**refund, "refund_line_items": [{"line_item_id": 1, "quantity": 1,  # AttributeError
                                              "subtotal": 10**30}]},
            now=now), now, runtime)
        embedded = lifecycle.apply_embedded_refunds(  # was UnicodeEncodeError (orders/updated)
            session, [{"id": "\ud800", "refunds": [{"id": 2, "order_id": None}]}], now, runtime)
        cancelled = lifecycle.on_orders_cancelled(session, bodies(
            "orders/cancelled", {"id": 1, "cancelled_at": "not a date"},
            {"id": "1", "cancelled_at": "2022-01-01T00:00:00Z", "cancel_reason": ["customer"]},
            now=now), now, runtime)
        deleted = lifecycle.on_products_deleted(session, bodies(
            "products/delete", {"id": "\ud800"}, {"id": 10**30}, {"id": " 42 "}, now=now),
            now, runtime)

    assert list(refunds.values()) == [
        ("ignored", "order_id: expected a Shopify id (a positive integer), got '\\ud800'"),
        ("ignored", "refund_shipping_lines[0].subtotal_amount_set: expected an object, "
                    "got '1e400'"),
        ("ignored", "refund_line_items[0].subtotal: expected an amount >= 0, got "
                    "1000000000000000000000000000000")]
    assert embedded["refunds_unreadable"] == 1 and embedded["refunds_recorded"] == 0
    assert list(cancelled.values()) == [
        ("ignored", "cancelled_at: expected an ISO date-time, got 'not a date'"),
        ("ignored", "cancel_reason: expected text, got a list")]
    assert list(deleted.values()) == [
        ("ignored", "id: expected a Shopify id (a positive integer), got '\\ud800'"),
        ("ignored", "id: expected a Shopify id (a positive integer), got "
                    "1000000000000000000000000000000"),
        ("ignored", "no product with shopify_product_id 42")]  # a decimal string is an id
