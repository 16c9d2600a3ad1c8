"""Follow-ups: care guides, cross-sell picks, replenishment timing, yearly birthday offers."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import select

from tasks.aftercare.followups import (
    birthday_offers,
    care_guide,
    cross_sell,
    family_title,
    product_title,
    replenishment,
    variant_of,
)
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.models import (
    Message,
    OrderLine,
    Product,
    Return,
    ReturnLine,
    ServiceCase,
    Step,
)
from tests.factories import add_catalog, add_customer, add_order


def delivered(session, now, lines, step, **fields):
    return add_order(session, now, lines=lines, state="delivered", step=step,
                     delivered_at=fields.pop("delivered_at", now - timedelta(days=3)), **fields)


def product(session, now, sku, category, stock=10, reserved=0, **attributes):
    session.add(Product(sku=sku, title=sku.title(), category=category, tags=[], stock=stock,
                        reserved=reserved, price=Decimal("40.00"), attributes=attributes,
                        updated_at=now))


def rendered(rows, runtime):
    """Every row renders with its template (subject, HTML, text); returns the subjects."""
    renderer = renderer_for(runtime.config)
    return [renderer.render(row.template, row.context).subject for row in rows]


def messages(session, template):
    query = select(Message).where(Message.template == template).order_by(Message.id)
    return session.scalars(query).all()


def test_care_guide_per_category_with_product_override_and_no_repeats(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        product(session, now, "RAW-1", "jeans", care_guide={"title": "Raw denim: wait 6 months",
                                                              "body": "Do not wash it yet."})
        customer = add_customer(session, now, "care@example.com")
        lines = [("TEE-1", 1, "25.00"), ("MUG-1", 1, "18.00"), ("RAW-1", 1, "90.00"),
                 ("RING-1", 1, "900.00")]
        first = delivered(session, now, lines, "care_guide", customer=customer,
                          email=customer.email)
        second = delivered(session, now, [("TEE-1", 1, "25.00")], "care_guide",
                           customer=customer, email=customer.email)
        ids = (first.id, second.id)
    with session_scope(engine) as session:
        care_guide(session, [ids[0]], now, runtime)
    with session_scope(engine) as session:
        result = care_guide(session, [ids[1]], now, runtime)
        rows = messages(session, "care_guide")
        step = session.scalars(select(Step).where(Step.order_id == ids[1])).one()
        topics = [(m.order_id, m.topic) for m in rows]
        raw = next(m for m in rows if m.topic == "sku:RAW-1")
    assert topics == [(ids[0], "apparel"), (ids[0], "glassware"), (ids[0], "sku:RAW-1"),
                      (ids[0], "jewelry")]
    assert raw.context["guide"]["title"] == "Raw denim: wait 6 months"
    assert raw.context["guide"]["url"] == "https://northwind.example/care/denim"  # from jeans
    assert result.details["messages_enqueued"] == 0  # the apparel guide was already sent
    assert (step.status, step.reason) == ("done", "no new care guide for these products")
    assert rendered(rows, runtime)[0] == "Getting the most from your Cotton tee"


def test_cross_sell_picks_in_stock_products_not_owned(engine, runtime, now):
    with session_scope(engine) as session:
        product(session, now, "JEANS-1", "jeans")
        product(session, now, "SHOE-1", "shoes")
        product(session, now, "SHOE-2", "shoes")  # bought before
        product(session, now, "SHOE-3", "shoes", stock=2, reserved=2)  # nothing available
        product(session, now, "BELT-1", "belts")
        product(session, now, "BELT-2", "belts", stock=0)
        customer = add_customer(session, now, "style@example.com")
        add_order(session, now, lines=[("SHOE-2", 1, "60.00")], state="delivered", step=None,
                  customer=customer, email=customer.email)
        order = delivered(session, now, [("JEANS-1", 1, "80.00")], "cross_sell",
                          customer=customer, email=customer.email)
        refunded = delivered(session, now, [("JEANS-1", 1, "80.00")], "cross_sell")
        session.add(ServiceCase(effect_key=f"order:{refunded.id}:case:feedback",
                                order_id=refunded.id, reason="r", proposed="refund",
                                status="resolved", decision="refund", opened_at=now))
        ids = (order.id, refunded.id)
    with session_scope(engine) as session:
        result = cross_sell(session, list(ids), now, runtime)
        [message] = messages(session, "cross_sell")
        reasons = dict(session.execute(select(Step.order_id, Step.reason)).all())
    assert [p["sku"] for p in message.context["picks"]] == ["SHOE-1", "BELT-1"]
    assert (message.order_id, message.topic, message.msg_class) == (ids[0], "jeans", "marketing")
    assert message.context["product"]["sku"] == "JEANS-1"
    assert reasons[ids[1]] == "order refunded"
    assert result.details["messages_enqueued"] == 1
    assert rendered([message], runtime) == ["Picked to go with your Jeans-1"]


def test_replenishment_waits_until_due_then_reminds(engine, runtime, now):
    delivered_at = now - timedelta(days=10)
    with session_scope(engine) as session:
        add_catalog(session, now)
        session.scalars(select(Product).where(Product.sku == "COF-1")).one().attributes = {
            "consumable_days": 30}
        order_id = delivered(session, now, [("COF-1", 2, "14.00"), ("TEE-1", 1, "25.00")],
                             "replenishment", delivered_at=delivered_at).id
    due = delivered_at + timedelta(days=30 * 2 - 5)  # two bags, reminded 5 days ahead
    with session_scope(engine) as session:
        waiting = replenishment(session, [order_id], now, runtime)
        step = session.scalars(select(Step)).one()
        assert (step.status, step.due_at) == ("pending", due)
        assert messages(session, "replenishment") == []
    assert waiting.held == 1
    with session_scope(engine) as session:
        done = replenishment(session, [order_id], due, runtime)
        [message] = messages(session, "replenishment")
        step = session.scalars(select(Step)).one()
    assert (done.advanced, step.status) == (1, "done")
    assert (message.topic, message.effect_key) == (
        "COF-1", f"order:{order_id}:replenishment:COF-1:v1")
    assert rendered([message], runtime) == ["Running low on Coffee beans?"]


def test_birthday_once_a_year_in_local_time_and_not_when_told_late(engine, runtime, now):
    # now = 2026-11-18 10:00 UTC: 02:00 on the 18th in Los Angeles, 19:00 in Tokyo.
    with session_scope(engine) as session:
        def person(name, birthday, tz, captured_days=None):
            captured = now - timedelta(days=captured_days) if captured_days else None
            return add_customer(session, now, f"{name}@example.com", birthday=birthday,
                                timezone=tz, birthday_captured_at=captured).id
        ids = {
            "la": person("la", date(1990, 11, 18), "America/Los_Angeles"),
            "tokyo_yesterday": person("tokyo", date(1985, 11, 17), "Asia/Tokyo"),
            "kiritimati": person("kiri", date(2000, 11, 19), "Pacific/Kiritimati"),
            "told_late": person("late", date(1992, 11, 18), "America/New_York", 10),
            "told_early": person("early", date(1993, 11, 18), None, 40),
            "other_month": person("june", date(1993, 6, 18), None),
        }
    with session_scope(engine) as session:
        first = birthday_offers(session, now, runtime)
    with session_scope(engine) as session:
        again = birthday_offers(session, now + timedelta(hours=1), runtime)
        rows = messages(session, "birthday")
    next_year = now + timedelta(days=365)
    with session_scope(engine) as session:
        birthday_offers(session, next_year, runtime)
        keys = {m.effect_key for m in messages(session, "birthday")}
        all_rows = messages(session, "birthday")
    assert {m.customer_id for m in rows} == {ids["la"], ids["kiritimati"], ids["told_early"]}
    assert (first.details["captured_too_late"], again.details["messages_enqueued"]) == (1, 0)
    assert all(m.order_id is None and m.topic == "birthday" for m in rows)
    la = next(m for m in rows if m.customer_id == ids["la"])
    assert la.effect_key == f"customer:{ids['la']}:birthday:2026"
    assert la.context["offer"]["code"].startswith("BDAY-")
    assert f"customer:{ids['told_late']}:birthday:2027" in keys  # next year it counts
    assert len(keys) == 7
    assert rendered(all_rows, runtime)[0] == "Happy birthday, Ada!"


def test_returned_items_get_no_cross_sell_and_no_replenishment(engine, runtime, now):
    """A consumable sent back in a return: nothing suggested on top of it, no reminder."""
    with session_scope(engine) as session:
        add_catalog(session, now)  # coffee → glassware (MUG-1 in stock)
        session.scalars(select(Product).where(Product.sku == "COF-1")).one().attributes = {
            "consumable_days": 30}
        order = delivered(session, now, [("COF-1", 2, "14.00")], "cross_sell")
        back = Return(rma="R-1", effect_key="return:1", order_id=order.id,
                      customer_id=order.customer_id, source="page", status="approved",
                      resolution="refund", reason="changed_mind", requested_at=now,
                      goods_value=Decimal("28"), restocking_fee=Decimal(0),
                      shipping_fee=Decimal(0), updated_at=now)
        back.lines = [ReturnLine(order_line_id=order.lines[0].id, quantity=2)]
        session.add(back)
        order_id = order.id
    with session_scope(engine) as session:
        sold = cross_sell(session, [order_id], now, runtime)
        step = session.scalars(select(Step).where(Step.name == "cross_sell")).one()
        step.name, step.status = "replenishment", "pending"  # the same order's next step
    with session_scope(engine) as session:
        reminded = replenishment(session, [order_id], now + timedelta(days=90), runtime)
        reason = session.scalars(select(Step.reason)).one()
        assert messages(session, "cross_sell") == messages(session, "replenishment") == []
    assert (sold.details["messages_enqueued"], step.reason) == (0, "items returned")
    assert (reminded.details["messages_enqueued"], reason) == (0, "consumable returned")


def variant(session, now, sku, title, category, price="40.00", stock=10, **attributes):
    session.add(Product(sku=sku, title=title, category=category, tags=[], stock=stock,
                        price=Decimal(price), attributes=attributes, updated_at=now))


def test_cross_sell_offers_products_not_variants_nor_what_the_customer_has(engine, runtime, now):
    """One entry per product, under the product's name; no other size of a belt the customer
    bought in an earlier order; the subject names the product, the variant is a key apart."""
    with session_scope(engine) as session:
        for size in ("32", "34"):
            variant(session, now, f"JN-{size}", f"Slim Jeans - {size}", "jeans",
                    shopify_product_id="1")
            variant(session, now, f"BLT-{size}", f"Full-Grain Leather Belt - {size}", "belts",
                    shopify_product_id="2")
        variant(session, now, "TR-10", "Trail Runner - 10", "shoes", stock=0)  # a CSV catalog
        variant(session, now, "TR-11", "Trail Runner - 11", "shoes", price="135.00")
        variant(session, now, "TR-12", "Trail Runner - 12", "shoes", price="120.00")
        variant(session, now, "WB-1", "Woven Belt", "belts")
        customer = add_customer(session, now, "belted@example.com")
        add_order(session, now, lines=[("BLT-32", 1, "68.00")], state="delivered", step=None,
                  customer=customer, email=customer.email)
        order = delivered(session, now, [("JN-32", 1, "80.00")], "cross_sell",
                          customer=customer, email=customer.email)
        order.lines[0].title, order.lines[0].variant_title = "Slim Jeans", "32"
        order_id = order.id
    with session_scope(engine) as session:
        cross_sell(session, [order_id], now, runtime)
        [message] = messages(session, "cross_sell")
    picks = [(p["title"], p["sku"], p["price"]) for p in message.context["picks"]]
    assert picks == [("Trail Runner", "TR-12", "120.00"), ("Woven Belt", "WB-1", "40.00")]
    assert (message.context["product"]["title"], message.context["product"]["variant"]) == (
        "Slim Jeans", "32")
    assert rendered([message], runtime) == ["Picked to go with your Slim Jeans"]


def test_product_names_leave_the_variant_to_the_line():
    def line(title, variant_title=None):
        return OrderLine(title=title, variant_title=variant_title)

    cases = [
        (line("Full-Grain Leather Belt", "32"), "Full-Grain Leather Belt - 32",
         ("Full-Grain Leather Belt", "32")),
        (line("Trail Runner"), "Trail Runner - 10", ("Trail Runner", "10")),  # catalog adds it
        (line("Belt - 32", "32"), None, ("Belt", "32")),
        (line("Tee - Organic"), "Tee - Organic", ("Tee - Organic", None)),  # a name, not a size
    ]
    for order_line, catalog_title, expected in cases:
        assert (product_title(order_line, catalog_title),
                variant_of(order_line, catalog_title)) == expected
    assert family_title(["Trail Runner - 10", "Trail Runner - 11"]) == "Trail Runner"
    assert family_title(["Tee - Organic - S", "Tee - Organic - M"]) == "Tee - Organic"
    assert family_title(["Mug - Blue"]) == "Mug - Blue"  # one variant: nothing to tell apart
