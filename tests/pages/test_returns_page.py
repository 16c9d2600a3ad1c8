"""The returns page over real HTTP: a GET shows and writes nothing, the POST opens one return
(the same form twice: the same RMA), a wrong quantity is a 422 with a message, and a token for
another page or another site's form gets nowhere."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import func, select

from tasks.links import Purpose, link_url, make_token
from tasks.messaging.render import renderer_for
from tasks.returns.decisions import attach_label
from tasks.returns.notices import returns_url
from tasks.store.db import session_scope
from tasks.store.models import Message, Order, Product, Return, Shipment
from tasks.tracking.stage import delivered_message
from tests.factories import add_order

LABEL = b"%PDF-1.4\n% a carrier's return label\n%%EOF\n"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}  # what a browser sends


def now() -> datetime:
    return datetime.now(UTC)  # the edge reads the real clock


def returnable_order(edge) -> tuple[int, list[int], str]:
    """A delivered order: 2 tees (returnable) and a final-sale ring; its returns link."""
    with session_scope(edge.engine) as session:
        if session.get(Product, 1) is None:
            session.add_all([
                Product(sku=sku, title=title, category=category, tags=tags, stock=5, reserved=0,
                        price=None, attributes={}, updated_at=now())
                for sku, title, category, tags in (
                    ("TEE-M", "Cotton tee - M", "apparel", []),
                    ("TEE-L", "Cotton tee - L", "apparel", []),
                    ("RING-F", "Engraved ring", "jewelry", ["personalised"]))])
        order = add_order(session, now(), [("TEE-M", 2, "25.00"), ("RING-F", 1, "90.00")],
                          state="delivered", step=None, delivered_at=now() - timedelta(days=2))
        order.lines[0].title, order.lines[1].title = "Cotton tee", "Engraved ring"
        ids = [line.id for line in order.lines]
        return order.id, ids, returns_url(edge.cfg, edge.secret, order.id, now())


def counts(edge, order_id: int) -> tuple[int, int]:
    with session_scope(edge.engine) as session:
        returns = session.scalar(select(func.count()).select_from(Return)
                                 .where(Return.order_id == order_id))
        mails = session.scalar(select(func.count()).select_from(Message)
                               .where(Message.order_id == order_id))
        return returns, mails


def post(url: str, data: dict[str, str], headers=None) -> httpx.Response:
    return httpx.post(url, data=data, timeout=10,
                      headers=SAME_ORIGIN if headers is None else headers)


def test_returns_page(pages_edge):
    order_id, (tee, ring), url = returnable_order(pages_edge)
    assert url.startswith(f"{pages_edge.url}/returns/")
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "<script" not in page.text
    assert "Cotton tee" in page.text and f'name="qty_{tee}"' in page.text
    assert "Engraved ring" in page.text and "final sale" in page.text
    assert f'name="qty_{ring}"' not in page.text
    assert 'value="TEE-L"' in page.text  # the other size, in stock, for an exchange
    assert httpx.head(url, timeout=10).status_code == 200
    assert counts(pages_edge, order_id) == (0, 0)  # GET and HEAD write nothing

    seq = re.search(r'name="seq" value="(\d+)"', page.text).group(1)
    form = {"seq": seq, f"qty_{tee}": "1", "reason": "too_small", "resolution": "refund"}
    first = post(url, form)
    assert first.status_code == 200, first.text
    rma = re.search(r"Your return number is (R-[2-9A-Z]{8})", first.text).group(1)
    assert "Send it by" in first.text and "What you get" in first.text
    again = post(url, form)  # a double submit
    assert again.status_code == 200 and f"Your return number is {rma}" in again.text
    assert counts(pages_edge, order_id) == (1, 1)  # one return, one mail
    shown = httpx.get(url, timeout=10).text
    assert f"Return {rma}" in shown and "Approved: please send it back" in shown
    order_page = httpx.get(link_url(pages_edge.url, pages_edge.secret, Purpose.ORDER, order_id,
                                    now()), timeout=10).text
    assert "Start a return" in order_page and f"<strong>{rma}</strong>" in order_page

    too_many = post(url, {**form, "seq": "1", f"qty_{tee}": "2"})
    assert too_many.status_code == 422 and "at most 1 can be returned" in too_many.text
    garbage = post(url, {**form, f"qty_{tee}": "abc"})
    assert garbage.status_code == 422 and "choose a number of units" in garbage.text
    no_reason = post(url, {**form, "seq": "1", "reason": ""})
    assert no_reason.status_code == 422 and "Choose a reason" in no_reason.text
    assert 'role="alert"' in no_reason.text
    foreign = post(url, {**form, "seq": "1"}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert counts(pages_edge, order_id) == (1, 1)

    # A PDF label an operator attached is served from the page (the customer's only way to it).
    with session_scope(pages_edge.engine) as session:
        ret_id = session.scalar(select(Return.id).where(Return.rma == rma))
        attach_label(session, ret_id, now(), pages_edge.rt, "ops", pdf=LABEL)
    label_link = re.search(r'href="(/returns/[^"]+/label/' + rma + ')"',
                           httpx.get(url, timeout=10).text).group(1)
    label = httpx.get(f"{pages_edge.url}{label_link}", timeout=10)
    assert label.headers["content-type"] == "application/pdf" and label.content == LABEL
    elsewhere = httpx.get(f"{pages_edge.url}{label_link[:-8]}R-2222222", timeout=10)
    assert elsewhere.status_code == 404 and "not valid any more" in elsewhere.text

    order_token = make_token(pages_edge.secret, Purpose.ORDER, order_id, now())
    for token in (order_token, "x" * 48, "short"):
        wrong = httpx.get(f"{pages_edge.url}/returns/{token}", timeout=10)
        assert wrong.status_code == 404 and "not valid any more" in wrong.text
        assert post(f"{pages_edge.url}/returns/{token}", form).status_code == 404


def test_the_delivered_mail_links_the_returns_page(pages_edge):
    order_id, _, _ = returnable_order(pages_edge)
    with session_scope(pages_edge.engine) as session:
        order = session.get(Order, order_id)
        parcel = Shipment(order_id=order_id, carrier="ups", status="Delivered",
                          delivered_at=now() - timedelta(days=2))
        row = delivered_message(order, [parcel], pages_edge.cfg, now(), pages_edge.secret)
    text = renderer_for(pages_edge.cfg).render("delivered", row["context"]).text
    link = re.search(r"Start a return:\s+(\S+)", text).group(1)
    assert link.startswith(f"{pages_edge.url}/returns/")
    assert "Cotton tee" in httpx.get(link, timeout=10).text
