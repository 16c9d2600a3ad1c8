"""The preferences page and RFC 8058 one-click unsubscribe, over real HTTP against an edge.

The governor runs here against the same database the edge writes, so "the next marketing mail
is skipped" is checked on what the edge really stored.
"""

from __future__ import annotations

import email
import re
from email.policy import default as default_policy
from itertools import count
from types import SimpleNamespace

import httpx
from sqlalchemy import select

from tasks.messaging.governor import email_hash
from tasks.messaging.outbox import dispatch, enqueue
from tasks.messaging.unsubscribe import preferences_url, suppress, unsubscribe_url
from tasks.store.db import session_scope
from tasks.store.models import Erasure, MailPreference, Suppression
from tasks.storefront.preferences import ALL
from tests.conftest import NOW
from tests.factories import add_customer
from tests.unit.test_governor import DAYTIME, decide, keys_in, row, use_recorder

ONE_CLICK = {"List-Unsubscribe": "One-Click"}
_people = count(1)


def customer(edge, **fields):
    with session_scope(edge.engine) as session:
        person = add_customer(session, NOW, f"pref{next(_people)}@example.com",
                              accepts_marketing=True, **fields)
        return person.id, person.email


def suppressions(edge, address: str) -> list[str]:
    with session_scope(edge.engine) as session:
        return list(session.scalars(select(Suppression.reason).where(
            Suppression.email_hash == email_hash(address))))


def preferences(edge, address: str) -> dict[str, tuple[bool, object]]:
    with session_scope(edge.engine) as session:
        rows = session.scalars(select(MailPreference).where(
            MailPreference.email_hash == email_hash(address)))
        return {r.topic: (r.subscribed, r.updated_at) for r in rows}


def page_post(url: str, edge, **fields) -> httpx.Response:
    """A POST as the page's own form sends it (same origin)."""
    return httpx.post(url, data=fields, headers={"Origin": edge.url,
                                                 "Sec-Fetch-Site": "same-origin"}, timeout=10)


def test_get_and_head_show_the_page_and_change_nothing(pages_edge):
    cid, address = customer(pages_edge)
    url = preferences_url(cid, NOW, pages_edge.rt)
    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "Unsubscribe from all marketing" in page.text
    for topic in pages_edge.cfg.pages.topics:
        assert f'name="topic_{topic}"' in page.text and f'for="topic-{topic}"' in page.text
    assert page.text.count(" checked") == len(pages_edge.cfg.pages.topics)
    assert "order confirmations" in page.text and "<script" not in page.text
    assert address not in page.text and "•••@example.com" in page.text  # masked
    assert httpx.head(url, timeout=10).status_code == 200
    assert suppressions(pages_edge, address) == [] and preferences(pages_edge, address) == {}


def test_one_click_from_the_mails_header_suppresses_once_and_the_next_mail_is_skipped(
        pages_edge):
    recorder = use_recorder(pages_edge.rt)
    cid, address = customer(pages_edge)
    person = SimpleNamespace(id=cid, email=address)
    with session_scope(pages_edge.engine) as session:
        enqueue(session, [row(person, DAYTIME)], NOW)
    with session_scope(pages_edge.engine) as session:
        assert dispatch(session, DAYTIME, pages_edge.rt).sent >= 1
    (mail,) = [m for m in recorder.mails if m.recipient == address]
    parsed = email.message_from_bytes(mail.wire_bytes(), policy=default_policy)
    links = re.findall(r"<([^>]+)>", parsed["List-Unsubscribe"])
    assert links[0].startswith(pages_edge.url + "/u/") and links[1].startswith("mailto:")

    # A mail provider: no cookies, no origin, urlencoded — then a multipart repeat.
    answer = httpx.post(links[0], data=ONE_CLICK, timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert "unsubscribed" in answer.text
    again = httpx.post(links[0], files={"List-Unsubscribe": (None, "One-Click")}, timeout=10)
    assert again.status_code == 200
    assert suppressions(pages_edge, address) == ["unsubscribe"]
    assert preferences(pages_edge, address)[ALL][0] is False

    with session_scope(pages_edge.engine) as session:
        enqueue(session, [row(person, DAYTIME)], NOW)
        (key,) = keys_in(session)[-1:]
        admitted, held = decide(session, DAYTIME, pages_edge.rt)
    assert key not in admitted and held[key].reason == "suppressed: unsubscribe"
    page = httpx.get(links[0], timeout=10)
    assert "You are unsubscribed" in page.text and "Subscribe again" in page.text


def test_topics_from_the_page_skip_only_that_topics_mail_and_resubscribe(pages_edge):
    cid, address = customer(pages_edge)
    url = preferences_url(cid, NOW, pages_edge.rt)
    saved = page_post(url, pages_edge, action="topics", topic_reviews="on", topic_care="on",
                      topic_birthday="on", topic_loyalty="on")
    assert saved.status_code == 200 and "Saved" in saved.text
    first = preferences(pages_edge, address)
    assert first["offers"][0] is False and first["reviews"][0] is True
    page_post(url, pages_edge, action="topics", topic_reviews="on", topic_care="on",
              topic_birthday="on", topic_loyalty="on")
    assert preferences(pages_edge, address) == first  # the same choice again writes nothing
    assert suppressions(pages_edge, address) == []

    person = SimpleNamespace(id=cid, email=address)
    with session_scope(pages_edge.engine) as session:
        enqueue(session, [row(person, DAYTIME, template="cross_sell", priority=10),
                          row(person, DAYTIME, template="review_request", priority=20)], NOW)
        offer, review = keys_in(session)[-2:]
        admitted, held = decide(session, DAYTIME, pages_edge.rt)
    assert held[offer].reason == "preference: offers off" and review in admitted

    assert "You are unsubscribed" in page_post(url, pages_edge, action="unsubscribe").text
    assert suppressions(pages_edge, address) == ["unsubscribe"]
    back = page_post(url, pages_edge, action="resubscribe")
    assert back.status_code == 200 and "Unsubscribe from all marketing" in back.text
    assert suppressions(pages_edge, address) == []
    assert preferences(pages_edge, address)[ALL][0] is True  # the resubscribe is recorded


def test_a_bounce_is_never_lifted_by_a_resubscribe(pages_edge):
    cid, address = customer(pages_edge)
    with session_scope(pages_edge.engine) as session:
        suppress(session, address, "bounce", NOW, "ses")
    url = preferences_url(cid, NOW, pages_edge.rt)
    assert "could not be delivered" in httpx.get(url, timeout=10).text
    page_post(url, pages_edge, action="resubscribe")
    assert suppressions(pages_edge, address) == ["bounce"]


def test_page_posts_from_another_site_are_refused_but_one_click_is_not(pages_edge):
    cid, address = customer(pages_edge)
    url = preferences_url(cid, NOW, pages_edge.rt)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": "null"}):
        refused = httpx.post(url, data={"action": "unsubscribe"}, headers=headers, timeout=10)
        assert refused.status_code == 403 and "another website" in refused.text
    assert suppressions(pages_edge, address) == []
    one_click = httpx.post(url, data=ONE_CLICK, headers={"Origin": "https://mail.example",
                                                          "Sec-Fetch-Site": "cross-site"},
                           timeout=10)
    assert one_click.status_code == 200 and suppressions(pages_edge, address) == ["unsubscribe"]


def test_hostile_input_and_wrong_links(pages_edge):
    cid, address = customer(pages_edge)
    url = preferences_url(cid, NOW, pages_edge.rt)
    odd = page_post(url, pages_edge, action="<script>alert(1)</script>", topic_x="\x00")
    assert odd.status_code == 400 and "<script>" not in odd.text
    huge = httpx.post(url, content=b"action=topics&x=" + b"a" * 70_000, timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413 and "Traceback" not in huge.text
    broken = httpx.post(url, content=b"action=\xff\xfe", timeout=10,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert broken.status_code == 400
    assert suppressions(pages_edge, address) == [] and preferences(pages_edge, address) == {}

    wrong = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert httpx.get(wrong, timeout=10).status_code == 404
    assert "not valid any more" in httpx.get(wrong, timeout=10).text
    bad_click = httpx.post(wrong, data=ONE_CLICK, timeout=10)
    assert bad_click.status_code == 404 and bad_click.headers["content-type"].startswith(
        "text/plain")
    order_token = url.replace("/u/", "/o/")  # a /u/ token is no order link, and vice versa
    assert httpx.get(order_token, timeout=10).status_code == 404


def test_an_erased_customers_link_gets_the_friendly_page(pages_edge):
    cid, address = customer(pages_edge)
    with session_scope(pages_edge.engine) as session:
        session.add(Erasure(subject="e" * 64, customer_id=cid, actor="test", requested_at=NOW))
    url = preferences_url(cid, NOW, pages_edge.rt)
    page = httpx.get(url, timeout=10)
    assert page.status_code == 404 and "not valid any more" in page.text
    assert httpx.post(url, data=ONE_CLICK, timeout=10).status_code == 404


def test_links_mailed_before_still_work(pages_edge):
    _, address = customer(pages_edge)
    old = unsubscribe_url(address, pages_edge.rt)
    assert "/unsubscribe?token=" in old
    page = httpx.get(old, timeout=10)
    assert page.status_code == 200 and "Unsubscribe from all marketing" in page.text
    assert suppressions(pages_edge, address) == []
    answer = httpx.post(old, data=ONE_CLICK, timeout=10)
    assert answer.status_code == 200 and suppressions(pages_edge, address) == ["unsubscribe"]
    tampered = old[:-2] + ("AA" if not old.endswith("AA") else "BB")
    assert httpx.get(tampered, timeout=10).status_code == 404
