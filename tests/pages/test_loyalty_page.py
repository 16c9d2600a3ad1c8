"""The rewards page (/l/{token}) over real HTTP: the ledger in plain words, joining once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count

import httpx
import pytest
from sqlalchemy import select

from tasks.links import Purpose, link_url
from tasks.loyalty import (
    Refund,
    approve,
    balances,
    earn,
    reverse_refunds,
    rolling_spend,
    update_tiers,
)
from tasks.store.db import session_scope
from tasks.store.models import Customer, Erasure, Message, Order, PageHit
from tests.factories import add_customer, add_order

NOW = datetime.now(UTC).replace(microsecond=0)  # the edge reads tokens on the real clock
_emails = count(1)


def customer_with_points(edge, accepts: bool = False) -> dict[str, int]:
    """Two delivered orders: the first approved (40 days ago), the second pending and partly
    refunded. Returns the customer's and orders' ids."""
    with session_scope(edge.engine) as session:
        customer = add_customer(session, NOW, f"points{next(_emails)}@example.com",
                                accepts_marketing=accepts)
        old = add_order(session, NOW, lines=[("TEE-1", 4, "30.00")], state="delivered",
                        step=None, customer=customer, placed_at=NOW - timedelta(days=45),
                        delivered_at=NOW - timedelta(days=40))
        new = add_order(session, NOW, lines=[("MUG-1", 2, "25.00")], state="delivered",
                        step=None, customer=customer, placed_at=NOW - timedelta(days=5),
                        delivered_at=NOW - timedelta(days=2))
        ids = {"customer": customer.id, "old": old.id, "new": new.id}
    with session_scope(edge.engine) as session:
        earn(session, [ids["old"]], NOW - timedelta(days=40), edge.rt)
        earn(session, [ids["new"]], NOW - timedelta(days=2), edge.rt)
        approve(session, [ids["old"]], NOW - timedelta(days=1), edge.rt)
        reverse_refunds(session, [Refund(ids["new"], Decimal("10.00"), "refund-1")], NOW, edge.rt)
    return ids


def rewards_url(edge, customer_id: int) -> str:
    return link_url(edge.url, edge.secret, Purpose.LOYALTY, customer_id, NOW)


def enrolled_at(edge, customer_id: int):
    with session_scope(edge.engine) as session:
        return session.get(Customer, customer_id).loyalty_enrolled_at


def post(url: str, data, origin: str | None, **headers) -> httpx.Response:
    if origin:
        headers["Origin"] = origin
    return httpx.post(url, data=data, headers=headers, timeout=10)


def test_the_page_shows_the_ledgers_numbers_and_a_get_changes_nothing(pages_edge):
    ids = customer_with_points(pages_edge)
    url = rewards_url(pages_edge, ids["customer"])
    for method in ("GET", "HEAD", "GET"):  # a scanner's prefetch, then the customer
        answer = httpx.request(method, url, timeout=10)
        assert answer.status_code == 200
    with session_scope(pages_edge.engine) as session:
        points = balances(session, [ids["customer"]])[ids["customer"]]
        names = {key: session.get(Order, ids[key]).name for key in ("old", "new")}
    assert enrolled_at(pages_edge, ids["customer"]) is None
    # 120 approved from the first order; the second earned 50, 10 of them reversed
    assert points == {"approved": 120, "pending": 40}
    text = answer.text
    assert f"<strong>{points['approved']} points</strong> ready for you when you join" in text
    assert f"{points['pending']} points pending" in text
    available = (NOW - timedelta(days=2) + timedelta(days=30)).strftime("%b %-d, %Y")
    assert f"40 points from order {names['new']} — available from {available}" in text
    assert f"Earned 50 points for order {names['new']} — available from {available}" in text
    assert f"10 points reversed: order {names['new']} refunded" in text
    assert f"120 points from order {names['old']} became yours to spend" in text
    # newest first: the refund (today) above the first order's earn (40 days ago)
    assert text.index("reversed") < text.index(f"Earned 120 points for order {names['old']}")
    assert "1 point for every $1.00 you spend" in text and "pending for 30 days" in text
    assert '<button type="submit" class="wide">Join rewards</button>' in text
    assert "Your tier" not in text  # tiers are for members


def test_joining_records_once_and_shows_the_tier_and_what_the_next_needs(pages_edge):
    ids = customer_with_points(pages_edge)
    url = rewards_url(pages_edge, ids["customer"])
    first = post(url, {"action": "join"}, pages_edge.url, **{"Sec-Fetch-Site": "same-origin"})
    joined = enrolled_at(pages_edge, ids["customer"])
    second = post(url, {"action": "join"}, pages_edge.url)
    assert first.status_code == second.status_code == 200
    assert "Welcome! You are now a member" in first.text
    assert "already a member. Nothing was changed" in second.text
    assert joined is not None and enrolled_at(pages_edge, ids["customer"]) == joined
    with session_scope(pages_edge.engine) as session:
        spend = rolling_spend(session, [ids["customer"]], datetime.now(UTC), 365)[ids["customer"]]
    assert spend == Decimal("160.00")  # 120 + 50 - 10 refunded
    assert "Your tier: Bronze" in second.text and "You spent $160.00" in second.text
    assert "Spend $340.00 more to reach Silver" in second.text
    assert "Join rewards" not in second.text
    assert "<strong>120 points</strong> to spend" in second.text


def test_the_tier_mail_links_to_the_members_page(pages_edge):
    with session_scope(pages_edge.engine) as session:
        customer = add_customer(session, NOW, f"silver{next(_emails)}@example.com",
                                accepts_marketing=True)
        order = add_order(session, NOW, lines=[("RING-1", 1, "600.00")], state="delivered",
                          step=None, customer=customer, placed_at=NOW - timedelta(days=3),
                          delivered_at=NOW - timedelta(days=1))
        customer_id, order_id = customer.id, order.id
    with session_scope(pages_edge.engine) as session:
        earn(session, [order_id], NOW, pages_edge.rt)  # consent: enrolled automatically
        update_tiers(session, [customer_id], NOW, pages_edge.rt)
    with session_scope(pages_edge.engine) as session:
        [mail] = session.scalars(select(Message).where(Message.customer_id == customer_id)).all()
    url = mail.context["loyalty"]["url"]
    assert url.startswith(pages_edge.url + "/l/") and url == rewards_url(pages_edge, customer_id)
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    assert "Your tier: Silver" in answer.text and "to reach Gold" in answer.text
    assert "600 points pending" in answer.text and "Join rewards" not in answer.text


@pytest.mark.parametrize("headers", [{"Origin": "https://evil.example"},
                                     {"Sec-Fetch-Site": "cross-site", "Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}])
def test_a_join_sent_from_another_site_is_refused(pages_edge, headers):
    ids = customer_with_points(pages_edge)
    answer = httpx.post(rewards_url(pages_edge, ids["customer"]), data={"action": "join"},
                        headers=headers, timeout=10)
    assert answer.status_code == 403 and "another site" in answer.text
    assert enrolled_at(pages_edge, ids["customer"]) is None


def test_hostile_forms_are_refused_and_never_echoed(pages_edge):
    ids = customer_with_points(pages_edge)
    url = rewards_url(pages_edge, ids["customer"])
    script = post(url, {"action": "<script>alert(1)</script>\x00"}, pages_edge.url)
    assert script.status_code == 400 and "could not read that form" in script.text
    assert "<script>" not in script.text
    broken = httpx.post(url, content=b"action=\xff\xfe\x00join", timeout=10, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": pages_edge.url})
    assert broken.status_code == 400
    huge = post(url, {"action": "join", "x": "a" * 70_000}, pages_edge.url)
    assert huge.status_code == 413 and "Traceback" not in huge.text
    assert enrolled_at(pages_edge, ids["customer"]) is None


def test_wrong_tokens_old_links_and_erased_customers_get_the_friendly_page(pages_edge):
    ids = customer_with_points(pages_edge)
    other_page = link_url(pages_edge.url, pages_edge.secret, Purpose.PREFERENCES,
                          ids["customer"], NOW).replace("/u/", "/l/")
    for url in (f"{pages_edge.url}/l/{'A' * 48}", f"{pages_edge.url}/l/short", other_page):
        for answer in (httpx.get(url, timeout=10),
                       post(url, {"action": "join"}, pages_edge.url)):
            assert answer.status_code == 404, url
            assert "not valid any more" in answer.text
    assert enrolled_at(pages_edge, ids["customer"]) is None
    for path in ("/rewards", "/rewards/join"):
        answer = httpx.get(pages_edge.url + path, timeout=10)
        assert answer.status_code == 410 and "care@northwind.example" in answer.text
    url = rewards_url(pages_edge, ids["customer"])
    with session_scope(pages_edge.engine) as session:
        session.add(Erasure(subject="x" * 64, customer_id=ids["customer"], actor="test",
                            requested_at=NOW))
    for answer in (httpx.get(url, timeout=10), post(url, {"action": "join"}, pages_edge.url)):
        assert answer.status_code == 404 and "not valid any more" in answer.text
        assert "points" not in answer.text
    assert enrolled_at(pages_edge, ids["customer"]) is None


def test_requests_are_counted_per_method(pages_edge):
    ids = customer_with_points(pages_edge)
    url = rewards_url(pages_edge, ids["customer"])
    httpx.head(url, timeout=10)
    deadline = time.monotonic() + 20  # the edge adds its counts every 10 s
    hits = 0
    while time.monotonic() < deadline and not hits:
        with session_scope(pages_edge.engine) as session:
            hits = session.scalar(select(PageHit.hits).where(
                PageHit.page == "loyalty", PageHit.method == "HEAD")) or 0
        time.sleep(0.5)
    assert hits >= 1
