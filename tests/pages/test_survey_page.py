"""The delivery survey page over real HTTP: a GET shows, only the POST records (once)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select

from tasks.aftercare.feedback import feedback_request, rating_link
from tasks.links import Purpose, make_token, read_token
from tasks.store.db import session_scope
from tasks.store.models import Erasure, FeedbackResponse, Message, Order, ServiceCase
from tasks.storefront.survey import answer_key, survey_page_counts
from tests.factories import add_order

SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}  # what a browser sends
COUNTS = ("answers via page", "opened (GET)", "HEAD", "submitted (POST)", "prefetches")


def now() -> datetime:
    return datetime.now(UTC)  # the edge reads the real clock: links are issued today


def delivered_order(edge, **fields) -> int:
    with session_scope(edge.engine) as session:
        order = add_order(session, now(), lines=[("MUG-1", 1, "18.00"), ("TEE-1", 2, "25.00")],
                          state="delivered", step="feedback_request",
                          delivered_at=now() - timedelta(days=2), **fields)
        order.lines[0].title = "Glass mug"
        return order.id


def mailed_links(edge, order_id: int) -> list[str]:
    """The five rating links of the survey mail the journey's stage writes for the order."""
    with session_scope(edge.engine) as session:
        feedback_request(session, [order_id], now(), edge.rt)
    with session_scope(edge.engine) as session:
        message = session.scalars(select(Message).where(Message.order_id == order_id)).one()
        return [link["url"] for link in message.context["feedback"]["links"]]


def stored(edge, order_id: int) -> tuple[list[FeedbackResponse], list[ServiceCase]]:
    with session_scope(edge.engine) as session:
        answers = session.scalars(select(FeedbackResponse).where(
            FeedbackResponse.order_id == order_id)).all()
        cases = session.scalars(select(ServiceCase).where(
            ServiceCase.order_id == order_id)).all()
        session.expunge_all()
        return list(answers), list(cases)


def post(url: str, data: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url.partition("?")[0], data=data, timeout=10,
                      headers=SAME_ORIGIN if headers is None else headers)


def checked(page: str) -> list[str]:
    return re.findall(r'name="rating" value="(\d)" required checked', page)


def test_the_report_counts_page_answers_and_prefetches(pages_edge):
    """First in this module: the edge's page_hits hold only what this test sends."""
    order_id = delivered_order(pages_edge)
    url = mailed_links(pages_edge, order_id)[4]
    with session_scope(pages_edge.engine) as session:
        assert survey_page_counts(session) == dict.fromkeys(COUNTS, 0)
    for _ in range(3):  # a mail scanner opens the link; nobody answers
        httpx.get(url, timeout=10)
    httpx.head(url, timeout=10)
    post(url, {"rating": "5"})
    deadline = time.monotonic() + 25  # the edge adds its counts to page_hits every 10 s
    while True:
        with session_scope(pages_edge.engine) as session:
            after = survey_page_counts(session)
        if after["submitted (POST)"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert after == dict(zip(COUNTS, (1, 3, 1, 1, 3), strict=True))


def test_opening_a_mailed_link_shows_the_order_and_the_rating_but_records_nothing(pages_edge):
    order_id = delivered_order(pages_edge)
    links = mailed_links(pages_edge, order_id)
    assert all(url.startswith(f"{pages_edge.url}/f/") for url in links)
    page = httpx.get(links[3], timeout=10)  # r=4
    assert page.status_code == 200
    assert "Glass mug" in page.text and f"#{order_id}" not in page.url.path
    assert checked(page.text) == ["4"]
    assert 'action="/f/' in page.text and 'name="issue_damaged"' in page.text
    assert '<legend>How did your delivery go?</legend>' in page.text
    assert "<script" not in page.text
    for bad in ("?r=9", "?r=", "", "?r=%C2%B2", "?r=1%00"):  # none selected, never an error
        answer = httpx.get(links[0].partition("?")[0] + bad, timeout=10)
        assert answer.status_code == 200 and checked(answer.text) == [], bad
    assert httpx.head(links[0], timeout=10).status_code == 200
    assert stored(pages_edge, order_id) == ([], [])


def test_an_unhappy_answer_is_stored_once_and_opens_one_case(pages_edge):
    order_id = delivered_order(pages_edge)
    url = mailed_links(pages_edge, order_id)[0]
    form = {"rating": "1", "issue_damaged": "1", "comment": "The mug was in pieces."}
    first = post(url, form)
    again = post(url, form)  # the same form twice: nothing changes
    assert first.status_code == again.status_code == 200
    assert "opened a case" in first.text and "within one business day" in first.text
    [answer], [case] = stored(pages_edge, order_id)
    assert (answer.source_key, answer.rating, answer.tags, answer.comment) == (
        answer_key(order_id), 1, ["damaged"], "The mug was in pieces.")
    assert (case.proposed, case.reason) == ("replacement", "feedback rating 1; issues: damaged")
    changed = post(url, {"rating": "2", "issue_late": "1"})  # within the change window
    assert changed.status_code == 200
    [answer], cases = stored(pages_edge, order_id)
    assert (answer.rating, answer.tags, answer.comment) == (2, ["late"], None)
    assert [c.id for c in cases] == [case.id]  # still the one case
    reopened = httpx.get(url, timeout=10)  # the form shows the answer it would replace
    assert "You can still change it" in reopened.text and 'id="issue-late" name="issue_late"' \
        ' value="1" checked' in reopened.text


def test_a_happy_answer_thanks_and_links_the_order_page(pages_edge):
    order_id = delivered_order(pages_edge)
    url = mailed_links(pages_edge, order_id)[4]
    thanks = post(url, {"rating": "5", "comment": "Lovely"})
    assert thanks.status_code == 200 and "Thank you" in thanks.text
    assert "opened a case" not in thanks.text
    [token] = re.findall(r'href="/o/([A-Za-z0-9_-]{48})"', thanks.text)
    assert read_token(pages_edge.secret, token, Purpose.ORDER, now().date()).subject == order_id
    [answer], cases = stored(pages_edge, order_id)
    assert (answer.rating, answer.comment, cases) == (5, "Lovely", [])


def test_after_the_change_window_the_answer_stands(pages_edge):
    order_id = delivered_order(pages_edge)
    with session_scope(pages_edge.engine) as session:
        session.add(FeedbackResponse(source_key=answer_key(order_id), order_id=order_id,
                                     rating=4, comment=None, tags=[],
                                     received_at=now() - timedelta(days=2)))
    url = mailed_links(pages_edge, order_id)[0]
    for answer in (httpx.get(url, timeout=10), post(url, {"rating": "1"})):
        assert answer.status_code == 200 and "already recorded" in answer.text
    [answer], cases = stored(pages_edge, order_id)
    assert (answer.rating, cases) == (4, [])


def test_hostile_or_invalid_forms_are_refused_with_a_message_and_escaped(pages_edge):
    order_id = delivered_order(pages_edge)
    url = mailed_links(pages_edge, order_id)[2]
    limit = pages_edge.cfg.pages.max_comment_chars
    too_long = post(url, {"rating": "3", "comment": "x" * (limit + 1)})
    assert too_long.status_code == 422 and f"up to {limit:,}" in too_long.text
    assert "x" * (limit + 1) in too_long.text  # given back whole, never cut
    no_rating = post(url, {"rating": "9", "comment": "<script>alert(1)</script>"})
    assert no_rating.status_code == 422 and "Please choose a rating" in no_rating.text
    assert "<script>alert" not in no_rating.text and "&lt;script&gt;" in no_rating.text
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = post(url, {"rating": "1", "issue_other": "1"}, headers)
        assert refused.status_code == 403 and "another website" in refused.text
    huge = post(url, {"rating": "3", "comment": "y" * 70_000})
    assert huge.status_code == 413
    assert stored(pages_edge, order_id) == ([], [])
    raw = httpx.post(url.partition("?")[0], content=b"rating=3&comment=ok%00\xff<b>", timeout=10,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert raw.status_code == 200 and "Traceback" not in raw.text
    [answer], _ = stored(pages_edge, order_id)
    assert answer.rating == 3 and "\x00" not in answer.comment and answer.comment.startswith("ok")


def test_wrong_tokens_and_erased_customers_get_the_friendly_page(pages_edge):
    order_id = delivered_order(pages_edge)
    url = mailed_links(pages_edge, order_id)[0].partition("?")[0]
    order_token = make_token(pages_edge.secret, Purpose.ORDER, order_id, now())
    forged = make_token("another-secret", Purpose.FEEDBACK, order_id, now())
    for path in (f"/f/{order_token}", f"/f/{forged}", "/f/" + "A" * 48, "/f/%3Cscript%3E"):
        assert httpx.get(pages_edge.url + path, timeout=10).status_code == 404, path
        assert post(pages_edge.url + path, {"rating": "1"}).status_code == 404, path
    with session_scope(pages_edge.engine) as session:
        customer_id = session.get(Order, order_id).customer_id
        session.add(Erasure(subject="h" * 64, customer_id=customer_id, actor="test",
                            requested_at=now(), counts={}))
    for answer in (httpx.get(url, timeout=10), post(url, {"rating": "1"})):
        assert answer.status_code == 404 and "not valid any more" in answer.text
    assert stored(pages_edge, order_id) == ([], [])


def test_links_from_earlier_mails_open_the_same_form(pages_edge):
    order_id = delivered_order(pages_edge)
    old = rating_link(pages_edge.url, pages_edge.secret, order_id, 2)
    page = httpx.get(old, timeout=10)
    assert page.status_code == 200 and checked(page.text) == ["2"]
    [action] = re.findall(r'action="(/f/[A-Za-z0-9_-]{48})"', page.text)
    assert stored(pages_edge, order_id) == ([], [])
    for forged in (old.replace("r=2", "r=5"), old.replace("sig=", "sig=0"), old + "&o=1",
                   f"{pages_edge.url}/feedback?o=abc&r=2&sig=x", f"{pages_edge.url}/feedback"):
        assert httpx.get(forged, timeout=10).status_code == 404, forged
    assert post(pages_edge.url + action, {"rating": "2"}).status_code == 200
    [answer], [case] = stored(pages_edge, order_id)
    assert (answer.rating, case.proposed) == (2, "refund")


def fit_survey_links(edge) -> tuple[int, list[str], str]:
    """An apparel order delivered 10 days ago through the registry's fit_survey step: its
    order id, the mail's three links and the rendered text part."""
    from tasks import journey
    from tasks.messaging.render import renderer_for
    from tasks.store.models import Product
    from tests.factories import add_catalog

    with session_scope(edge.engine) as session:
        if session.get(Product, "TEE-1") is None:
            add_catalog(session, now())
        order = add_order(session, now(), lines=[("TEE-1", 1, "25.00"), ("MUG-1", 1, "18.00")],
                          state="delivered", step="fit_survey",
                          delivered_at=now() - timedelta(days=10))
        order.lines[0].title, order.lines[0].variant_title = "Cotton tee - M", "M"
        order_id = order.id
    stage = journey.step("fit_survey").stage_fn()
    with session_scope(edge.engine) as session:
        stage(session, [order_id], now(), edge.rt)
    with session_scope(edge.engine) as session:
        message = session.scalars(select(Message).where(
            Message.order_id == order_id, Message.template == "fit_survey")).one()
        fit = message.context["fit"]
        text = renderer_for(edge.rt.config).render("fit_survey", message.context).text
    assert fit["products"] == ["Cotton tee"]  # the product, not its size
    return order_id, [link["url"] for link in fit["links"]], text


def test_the_fit_survey_answer_comes_back_through_the_survey_page(pages_edge):
    """A new time-based mail step (tasks/journey.py fit_survey): the mail's buttons open the
    survey page's fit form; only its POST stores a `fit` answer, and it opens no case."""
    from tasks.storefront.survey import fit_answers

    order_id, links, text = fit_survey_links(pages_edge)
    assert [link.rpartition("=")[2] for link in links] == ["too_small", "just_right", "too_big"]
    assert "Cotton tee" in text and links[0] in text
    opened = httpx.get(links[0], timeout=10)
    assert opened.status_code == 200 and "How does it fit?" in opened.text
    assert 'value="too_small" required checked' in opened.text
    assert stored(pages_edge, order_id) == ([], [])  # opening records nothing
    refused = post(links[0], {"fit": "tiny"})
    assert refused.status_code == 422 and "Please choose how it fits." in refused.text
    thanks = post(links[0], {"fit": "too_small", "comment": "Runs small"})
    assert thanks.status_code == 200 and "Thank you" in thanks.text
    answers, cases = stored(pages_edge, order_id)
    assert [(a.topic, a.rating, a.tags, a.comment) for a in answers] == [
        ("fit", None, ["too_small"], "Runs small")]
    assert cases == []
    with session_scope(pages_edge.engine) as session:
        assert fit_answers(session) == {"too_small": 1}
