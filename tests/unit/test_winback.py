"""Win-back: one mail per quiet spell to consenting customers, skipped with a counted reason."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from tasks.aftercare.winback import winback, winback_counts, winback_customer_ids
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.models import Customer, LoyaltyEntry, Message, Product, Return, ServiceCase
from tests.factories import add_catalog, add_customer, add_order

COFFEE = [("COF-1", 1, "14.00")]  # category "coffee": config Coffee 30 days


def quiet_buyer(session, now, name, days=40, lines=COFFEE, consent=True):
    """A customer whose last (delivered) order was `days` ago."""
    customer = add_customer(session, now, f"{name}@example.com", accepts_marketing=consent)
    order = add_order(session, now, lines=lines, state="delivered", step=None,
                      customer=customer, email=customer.email,
                      placed_at=now - timedelta(days=days),
                      delivered_at=now - timedelta(days=days - 3))
    return customer, order


def sent_marketing(customer, when):
    return Message(effect_key=f"customer:{customer.id}:x", customer_id=customer.id,
                   template="cross_sell", version=1, msg_class="marketing",
                   to_addr=customer.email, message_id="<x@y>", context={}, status="sent",
                   not_before=when, created_at=when, sent_at=when)


def open_return(order, now):
    return Return(rma=f"R-{order.id}", effect_key=f"return:{order.id}", order_id=order.id,
                  customer_id=order.customer_id, source="page", status="requested",
                  resolution="refund", reason="too_small", requested_at=now,
                  goods_value=Decimal("14"), restocking_fee=Decimal(0),
                  shipping_fee=Decimal(0), updated_at=now)


def winbacks(session):
    query = select(Message).where(Message.template == "winback").order_by(Message.id)
    return session.scalars(query).all()


def seed(session, now):
    """One due customer and one for each reason not to mail; returns their ids by name."""
    add_catalog(session, now)
    session.add_all([  # new since their orders: one on sale, one deleted, one sold out
        Product(sku="COF-2", title="New roast", category="coffee", tags=[], stock=5,
                price=Decimal("16.00"), attributes={}, updated_at=now),
        Product(sku="COF-3", title="Gone roast", category="coffee", tags=[], stock=5,
                attributes={"deleted_at": "2026-01-01"}, updated_at=now),
        Product(sku="COF-4", title="Sold out", category="coffee", tags=[], stock=0,
                attributes={}, updated_at=now)])
    due, _ = quiet_buyer(session, now, "due")
    session.add(LoyaltyEntry(source_key="p", customer_id=due.id, kind="earn", points=120,
                             status="approved", rule_version="v1", created_at=now))
    apparel, _ = quiet_buyer(session, now, "tee", lines=[("TEE-1", 1, "25.00")])  # 120 days
    silent, _ = quiet_buyer(session, now, "silent", consent=False)
    unhappy, order = quiet_buyer(session, now, "case")
    session.add(ServiceCase(effect_key="case:1", order_id=order.id, reason="late",
                            proposed="refund", status="open", opened_at=now))
    returning, order = quiet_buyer(session, now, "returning")
    session.add(open_return(order, now))
    contacted, _ = quiet_buyer(session, now, "contacted")
    session.add(sent_marketing(contacted, now - timedelta(days=2)))
    recent, _ = quiet_buyer(session, now, "recent", days=5)  # not quiet: not even looked at
    session.flush()
    return {"due": due.id, "apparel": apparel.id, "silent": silent.id, "case": unhappy.id,
            "return": returning.id, "contacted": contacted.id, "recent": recent.id}


def run(engine, runtime, now):
    with session_scope(engine) as session:
        ids = winback_customer_ids(session, 100, 0, now, runtime.config.aftercare.winback)
        return ids, winback(session, ids, now, runtime)


def test_winback_once_per_quiet_spell_with_reasons_and_a_new_order_stops_it(
        engine, runtime, now):
    with session_scope(engine) as session:
        who = seed(session, now)
    ids, first = run(engine, runtime, now)
    with session_scope(engine) as session:
        [mail] = winbacks(session)
        rendered = renderer_for(runtime.config).render(mail.template, mail.context)
    assert who["recent"] not in ids and who["due"] in ids
    assert (mail.customer_id, mail.msg_class, mail.topic) == (who["due"], "marketing", "winback")
    assert mail.effect_key.startswith(f"customer:{who['due']}:winback:")
    assert [p["sku"] for p in mail.context["picks"]] == ["COF-1", "COF-2"]
    assert mail.context["loyalty"]["approved"] == 120
    assert mail.context["offer"]["code"].startswith("BACK-")
    assert mail.context["offer"]["valid_until"] == (now + timedelta(days=30)).date().isoformat()
    assert "New roast" in rendered.text and mail.context["offer"]["code"] in rendered.html
    assert rendered.subject == "It has been a while, Ada: what's new at Northwind Outfitters"
    assert first.details == {
        "sent": 1, "not_due": 1, "cancelled_ordered_since": 0,
        "skipped: contacted recently": 1, "skipped: no marketing consent": 1,
        "skipped: open service case": 1, "skipped: return in progress": 1}

    _, again = run(engine, runtime, now + timedelta(hours=1))  # rerun: nothing new
    assert again.details["sent"] == 0

    with session_scope(engine) as session:  # the customer orders again: the mail is stopped
        buyer = session.get(Customer, who["due"])
        add_order(session, now, lines=COFFEE, step=None, customer=buyer, email=buyer.email)
    _, after = run(engine, runtime, now + timedelta(hours=2))
    with session_scope(engine) as session:
        [stopped] = winbacks(session)
        counts = winback_counts(session)
    assert (stopped.status, stopped.reason) == ("cancelled", "ordered since")
    assert (after.details["sent"], after.details["cancelled_ordered_since"]) == (0, 1)
    assert counts == {"cancelled: ordered since": 1}
