"""The order page (/o/{token}) over real HTTP: what it shows, what it never shows, and that the
order mails' links open it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape

import httpx
import pytest
from sqlalchemy import func, select

from tasks.links import Purpose, link_url, make_token
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.journal import CONFIRMED
from tasks.store.models import (
    Base,
    Erasure,
    Message,
    Product,
    Shipment,
    TrackingEvent,
)
from tasks.tracking.formats import ShipmentIn
from tasks.tracking.ingest import ingest_shipments
from tasks.tracking.stage import track
from tests.factories import add_catalog, add_customer, add_order

NOW = datetime.now(UTC)  # the edge runs on the real clock: tokens are issued "today"
ADDRESS = {"name": "Grace Hopper", "address1": "412 Alder St", "address2": "Apt 7B",
           "city": "Portland", "province_code": "OR", "zip": "97209", "country_code": "US"}
# (sku, title, category, stock, Shopify product id, deleted): variants of one product share an id
RELATED = [("BELT-1-32", "Oak belt - 32", "belts", 5, "71", False),
           ("BELT-1-34", "Oak belt - 34", "belts", 5, "71", False),
           ("BELT-2-32", "Braided belt - 32", "belts", 5, "72", False),
           ("BELT-2-34", "Braided belt - 34", "belts", 5, "72", False),
           ("JNS-1-30", "Slim jeans - 30", "jeans", 5, "81", False),
           ("JNS-2-30", "Sold-out jeans - 30", "jeans", 0, "82", False),
           ("JNS-3-30", "Gone jeans - 30", "jeans", 9, "83", True)]


@pytest.fixture(scope="module")
def edge(pages_edge):
    with session_scope(pages_edge.engine) as session:
        add_catalog(session, NOW)
        session.add_all(Product(
            sku=sku, title=title, category=category, tags=[], stock=stock, grams=100,
            price=Decimal("40.00"), updated_at=NOW,
            attributes={"shopify_product_id": pid} | ({"deleted_at": "2026-01-01"} if gone else {}))
            for sku, title, category, stock, pid, gone in RELATED)
    return pages_edge


def order_link(edge, order_id: int) -> str:
    return link_url(edge.url, edge.secret, Purpose.ORDER, order_id, NOW)


def get(url: str, **kwargs) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)


def text_of(answer: httpx.Response) -> str:
    """The page's visible words, tags dropped (to read it as a customer does)."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", answer.text)).split())


def shipped_order(session, customer=None, **fields):
    customer = customer or add_customer(session, NOW, f"g{datetime.now().timestamp()}@example.com",
                                        first_name="Grace")
    defaults = dict(state="shipped", step=None, customer=customer, email=customer.email,
                    shipping_address=dict(ADDRESS), promised_delivery=NOW.date() + timedelta(3),
                    placed_at=NOW - timedelta(days=3), shipped_at=NOW - timedelta(days=2))
    return add_order(session, NOW, **(defaults | fields))


def add_parcel(session, order, number="1Z999AA10123456784", status="InTransit", **fields):
    parcel = Shipment(order_id=order.id, carrier="ups", tracking_number=number, status=status,
                      line_items=[], shipped_at=NOW - timedelta(days=2), created_at=NOW,
                      updated_at=NOW, **fields)
    session.add(parcel)
    session.flush()
    return parcel


def add_checkpoint(session, parcel, event_id, tag, hours_ago, message=None, location=None):
    session.add(TrackingEvent(event_id=event_id, shipment_id=parcel.id, tag=tag, message=message,
                              location=location, occurred_at=NOW - timedelta(hours=hours_ago),
                              received_at=NOW, applied=True))


def row_counts(engine) -> dict[str, int]:
    """Rows in every journey table (page_hits is the counters' own table)."""
    with session_scope(engine) as session:
        return {t.name: session.scalar(select(func.count()).select_from(t))
                for t in Base.metadata.sorted_tables if t.name != "page_hits"}


# ---------------------------------------------------------------- what the page shows


def test_the_page_shows_items_timeline_parcels_and_a_masked_address(edge):
    with session_scope(edge.engine) as session:
        order = shipped_order(session, lines=[("TEE-1", 2, "25.00"), ("MUG-1", 1, "18.00")])
        tee = next(line for line in order.lines if line.sku == "TEE-1")
        tee.title, tee.variant_title, tee.refunded_quantity = "Cotton tee", "Blue / M", 1
        parcel = add_parcel(session, order, tracking_url="https://www.ups.com/track?n=1Z9")
        add_checkpoint(session, parcel, "o-1", "InfoReceived", 40, "Label created", "Reno, NV")
        add_checkpoint(session, parcel, "o-2", "InTransit", 20, "Departed facility", "Sparks, NV")
        add_checkpoint(session, parcel, "o-3", "OutForDelivery", 2, None, "Portland, OR")
        order_id, name = order.id, order.name
    answer = get(order_link(edge, order_id))
    page = text_of(answer)
    assert answer.status_code == 200 and f"Order {name}" in page
    assert "Cotton tee Blue / M 1 of 2 (1 refunded)" in page
    # the timeline reached "out for delivery": the step after it is the current one
    assert re.search(r'<li class="done"[^>]*>\s*<strong>Out for delivery', answer.text)
    assert re.search(r'<li class="current" aria-current="step">\s*<strong>Delivered', answer.text)
    # checkpoints newest first, with place; the carrier's own link kept
    assert page.index("Out for delivery · Portland, OR") < page.index("Departed facility") \
        < page.index("Label created · Reno, NV")
    assert 'href="https://www.ups.com/track?n=1Z9"' in answer.text
    assert "UPS 1Z999AA10123456784" in page
    # city, region, postcode, country shown; name and street hidden
    assert "4•• Alder St" in page and "Apt 7•" in page and "G•••• H•••••" in page
    assert "Portland, OR 97209" in page and "United States" in page
    assert "412" not in page and "Grace Hopper" not in page and "Hopper" not in page
    assert "care@northwind.example" in page  # the footer's support contact


def test_related_products_skip_every_variant_already_bought_and_link_to_the_store(edge):
    with session_scope(edge.engine) as session:
        earlier = shipped_order(session, lines=[("BELT-1-32", 1, "40.00")], state="delivered")
        order = shipped_order(session, customer=earlier.customer, lines=[("TEE-1", 1, "25.00")])
        order_id = order.id
    answer = get(order_link(edge, order_id))
    offered = re.findall(r'<a href="(https://northwind\.example/products/[^"]+)">([^<]+)</a>',
                         answer.text)
    titles = [title for _, title in offered]
    # jeans and belts (apparel's affinities), one per product under the product's name (a
    # product with one known variant keeps its full title), in stock and still sold
    assert titles == ["Slim jeans - 30", "Braided belt"]
    assert offered[0][0] == "https://northwind.example/products/JNS-1-30"
    assert "Oak belt" not in answer.text  # bought in 32: no 34 either (issue 17)
    assert "/products/" not in answer.text.replace("https://northwind.example/products/", "")


def test_delivered_order_links_the_survey_and_shows_the_return_policy(edge):
    with session_scope(edge.engine) as session:
        order = shipped_order(session, state="delivered", delivered_at=NOW - timedelta(hours=5))
        add_parcel(session, order, number="DLV1", status="Delivered")
        order_id = order.id
    answer = get(order_link(edge, order_id))
    page = text_of(answer)
    [survey] = re.findall(r'href="(/f/[A-Za-z0-9_-]{48})"', answer.text)
    assert survey == link_url("", edge.secret, Purpose.FEEDBACK, order_id,
                              NOW - timedelta(hours=5))
    assert "Most items can be returned or exchanged within 30 days" in page
    assert "Delivered on" in page and "Revised estimate" not in page


def test_a_late_order_with_an_address_problem_says_so_in_plain_words(edge):
    with session_scope(edge.engine) as session:
        order = shipped_order(session, promised_delivery=NOW.date() - timedelta(days=4))
        add_parcel(session, order, number="EXC1", status="Exception", substatus="Exception_002",
                   expected_delivery=NOW.date() + timedelta(days=2))
        order_id = order.id
    answer = get(order_link(edge, order_id))
    page = text_of(answer)
    assert "The carrier could not deliver: address issue" in page
    assert "Exception_002" not in page
    assert "Running late" in page and "Revised estimate" in page
    assert '<li class="problem"><strong>Delayed</strong></li>' in answer.text


def test_an_order_on_hold_and_a_cancelled_order(edge):
    with session_scope(edge.engine) as session:
        held = shipped_order(session, state="on_hold", hold_reason="fraud_score: 0.93",
                             shipped_at=None).id
        cancelled = shipped_order(session, state="cancelled", cancelled_at=NOW,
                                  shipped_at=None).id
    held_page = text_of(get(order_link(edge, held)))
    assert "On hold" in held_page and "fraud" not in held_page
    cancelled_page = get(order_link(edge, cancelled))
    assert "Cancelled on" in text_of(cancelled_page) and "Shipped" not in cancelled_page.text
    assert "You might also like" not in cancelled_page.text


# ---------------------------------------------------------------- the mails link here


def test_the_order_mails_link_to_this_page(edge):
    rt = edge.rt
    with session_scope(edge.engine) as session:
        customer = add_customer(session, NOW, "mails@example.com", first_name="Grace")
        order = add_order(session, NOW, state=CONFIRMED, step=None, customer=customer,
                          email=customer.email, promised_delivery=NOW.date() + timedelta(3))
        order_id, external_id = order.id, order.external_id
        ingest_shipments(session, [ShipmentIn(
            order_source="shopify", order_external_id=external_id, carrier="ups",
            tracking_number="MAIL1", shipped_at=NOW - timedelta(hours=1))],
            NOW, rt.config, rt.settings.secret_key)
    with session_scope(edge.engine) as session:
        session.execute(Shipment.__table__.update().where(Shipment.order_id == order_id)
                        .values(status="Exception", substatus="Exception_002"))
        track(session, [order_id], NOW, rt)
    with session_scope(edge.engine) as session:
        mails = session.scalars(select(Message).where(Message.order_id == order_id)
                                .order_by(Message.id)).all()
        rendered = [renderer_for(rt.config).render(m.template, m.context) for m in mails]
    assert [m.template for m in mails] == ["shipped", "shipment_exception"]
    for mail in rendered:
        [href] = re.findall(r'href="(http://127\.0\.0\.1:\d+/o/[^"]+)"', mail.html)
        assert href in mail.text and "/track/" not in mail.html + mail.text
        answer = get(href)
        assert answer.status_code == 200 and "address issue" in text_of(answer)


# ---------------------------------------------------------------- reads only; refuses


def test_get_and_head_record_nothing_and_a_post_is_refused(edge):
    with session_scope(edge.engine) as session:
        order_id = shipped_order(session).id
    url = order_link(edge, order_id)
    before = row_counts(edge.engine)
    assert get(url).status_code == 200
    assert httpx.head(url, timeout=10).status_code == 200
    posted = httpx.post(url, data={"state": "delivered"}, timeout=10)
    assert posted.status_code == 405 and "not valid any more" in posted.text
    assert row_counts(edge.engine) == before


def test_wrong_tokens_erased_customers_and_old_track_links_get_the_friendly_page(edge):
    with session_scope(edge.engine) as session:
        order = shipped_order(session)
        add_parcel(session, order, number="OLD123")
        erased = shipped_order(session)
        session.add(Erasure(subject="x" * 64, customer_id=erased.customer_id, actor="test",
                            requested_at=NOW))
        order_id, erased_id = order.id, erased.id
    survey_token = make_token(edge.secret, Purpose.FEEDBACK, order_id, NOW)
    wrong = [order_link(edge, erased_id), f"{edge.url}/o/{survey_token}",
             order_link(edge, 987_654_321), edge.url + "/o/" + "B" * 48,
             link_url(edge.url, "another-secret", Purpose.ORDER, order_id, NOW),
             edge.url + "/track/ups/OLD123", edge.url + "/track/ups/NOPE"]
    answers = [get(url) for url in wrong]
    assert [a.status_code for a in answers] == [404] * len(wrong)
    assert len({text_of(a) for a in answers}) == 1  # the same answer: no hint what exists
    assert "OLD123" not in answers[-2].text and "Alder" not in answers[-2].text


def test_hostile_text_is_escaped_and_a_scripted_carrier_link_is_not_linked(edge):
    with session_scope(edge.engine) as session:
        order = shipped_order(session, name="#<b>1</b>")
        order.lines[0].title = '<script>alert(1)</script>'
        parcel = add_parcel(session, order, number="HOST1", tracking_url="javascript:alert(1)")
        add_checkpoint(session, parcel, "h-1", "InTransit", 1, '<img src=x onerror="x()">',
                       "\u202eevil")
        order_id = order.id
    answer = get(order_link(edge, order_id))
    assert answer.status_code == 200
    assert "<script>alert" not in answer.text and "&lt;script&gt;alert(1)&lt;/script&gt;" \
        in answer.text
    assert "<img src=x" not in answer.text and "<b>1</b>" not in answer.text
    assert "javascript:" not in answer.text
    assert "<script" not in answer.text.lower()

