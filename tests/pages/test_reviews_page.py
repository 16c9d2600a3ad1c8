"""/r/{token}: the review link from a real review request, over real HTTP; moderation (the
deciding logic, and the operator form's shape); the exports; the report."""

from __future__ import annotations

import csv
import io
import json
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from typer.testing import CliRunner

from tasks.aftercare.reviews import review_request
from tasks.links import Purpose, link_url
from tasks.reporting import report
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.models import Erasure, Message, OrderLine, PageHit, Review
from tasks.storefront import reviews
from tests.factories import add_catalog, add_order

NOW = datetime.now(UTC).replace(microsecond=0)  # the edge reads tokens on the real clock
REASONS = ["profanity", "personal_data", "off_topic", "spam"]
_catalog: list[bool] = []


def delivered(edge, lines=(("TEE-1", 1, "25.00"), ("MUG-1", 1, "18.00")), **fields):
    """A delivered order (catalog added once per module); returns (order id, line ids)."""
    with session_scope(edge.engine) as session:
        if not _catalog:
            add_catalog(session, NOW)
            _catalog.append(True)
        order = add_order(session, NOW, lines=list(lines), state="delivered",
                          step="review_request", delivered_at=NOW - timedelta(days=7),
                          **fields)
        return order.id, [line.id for line in order.lines]


def review_link(edge, order_id: int, line_id: int) -> str:
    return link_url(edge.url, edge.secret, Purpose.REVIEW, order_id, NOW, line_id)


def mailed_links(edge, order_id: int) -> dict[str, str]:
    """Run the review request stage as the sweep does; the links its mails carry, by SKU."""
    with session_scope(edge.engine) as session:
        review_request(session, [order_id], NOW, edge.rt)
    with session_scope(edge.engine) as session:
        rows = session.scalars(select(Message).where(Message.order_id == order_id,
                                                     Message.template == "review_request"))
        return {m.topic: m.context["product"]["review_url"] for m in rows}


def stored(edge, order_id: int) -> list[Review]:
    with session_scope(edge.engine) as session:
        rows = list(session.scalars(select(Review).where(Review.order_id == order_id)
                                    .order_by(Review.id)))
        session.expunge_all()
        return rows


def post(url: str, data: dict[str, str], **headers: str) -> httpx.Response:
    return httpx.post(url, data=data, timeout=10, headers={"Sec-Fetch-Site": "same-origin",
                                                           **headers})


GOOD = {"rating": "2", "title": "Shrank in the wash", "body": "Nice colour.\nToo small now.",
        "display_name": "Ada L."}


def test_the_mailed_link_opens_the_form_and_only_a_post_records_once(pages_edge):
    order_id, (tee, mug) = delivered(pages_edge)
    links = mailed_links(pages_edge, order_id)
    assert set(links) == {"TEE-1", "MUG-1"}
    assert links["TEE-1"] == review_link(pages_edge, order_id, tee)  # one link per order line
    assert links["TEE-1"].startswith(f"{pages_edge.url}/r/") and "sku=" not in links["TEE-1"]

    for method in ("GET", "HEAD", "GET"):  # a mail scanner's prefetches record nothing
        assert httpx.request(method, links["TEE-1"], timeout=10).status_code == 200
    page = httpx.get(links["TEE-1"], timeout=10).text
    assert "Cotton tee" in page and 'value="Ada L."' in page and "verified buyer" in page
    assert page.count('type="radio" name="rating"') == 5 and "<script" not in page
    assert stored(pages_edge, order_id) == []

    for _ in range(2):  # the same POST twice: one review
        answer = post(links["TEE-1"], GOOD)
        assert answer.status_code == 200 and "Thank you for your review" in answer.text
    [review] = stored(pages_edge, order_id)
    assert (review.effect_key, review.sku, review.rating, review.status, review.verified_buyer) \
        == (f"review:{tee}", "TEE-1", 2, "pending", True)
    assert review.body == GOOD["body"] and review.display_name == "Ada L."

    post(links["TEE-1"], {**GOOD, "rating": "4", "display_name": "Ada"})  # while pending: replaced
    [review] = stored(pages_edge, order_id)
    assert (review.rating, review.display_name) == (4, "Ada")
    assert 'value="4" required checked' in httpx.get(links["TEE-1"], timeout=10).text

    post(links["MUG-1"], {**GOOD, "rating": "5"})  # the other line: its own review
    assert [r.sku for r in stored(pages_edge, order_id)] == ["TEE-1", "MUG-1"]


def test_a_decided_review_shows_its_status_and_the_page_never_changes_it(pages_edge):
    order_id, (tee, mug) = delivered(pages_edge)
    for line in (tee, mug):
        post(review_link(pages_edge, order_id, line), GOOD)
    first, second = stored(pages_edge, order_id)
    decisions = [reviews.Decision(first.id, "approve"),
                 reviews.Decision(second.id, "reject", "personal_data")]
    with session_scope(pages_edge.engine) as session:
        counts = reviews.moderate(session, decisions, "  ana\nops ", NOW, REASONS)
    assert (counts["approve"], counts["reject"], counts["refused"]) == (1, 1, [])

    answer = post(review_link(pages_edge, order_id, tee), {**GOOD, "rating": "5"})
    assert "was published" in answer.text
    assert "was not published" in httpx.get(review_link(pages_edge, order_id, mug),
                                             timeout=10).text
    first, second = stored(pages_edge, order_id)
    assert (first.status, first.rating, first.moderated_by) == ("approved", 2, "ana ops")
    assert (second.status, second.reject_reason) == ("rejected", "personal_data")
    with session_scope(pages_edge.engine) as session:  # a second operator: already decided
        again = reviews.moderate(session, [reviews.Decision(first.id, "reject", "spam")],
                                 "lee", NOW, REASONS)
    assert again["already_decided"] == 1 and stored(pages_edge, order_id)[0].status == "approved"


def test_rejection_needs_a_content_reason_and_the_rating_is_no_reason(pages_edge):
    order_id, (tee,) = delivered(pages_edge, lines=[("TEE-1", 1, "25.00")])
    post(review_link(pages_edge, order_id, tee), {**GOOD, "rating": "1"})
    [review] = stored(pages_edge, order_id)
    with session_scope(pages_edge.engine) as session:
        pending = {p.id: p for p in reviews.pending_reviews(session, 100)}
        assert (pending[review.id].product, pending[review.id].rating) == ("Cotton tee", 1)
        counts = reviews.moderate(session, [reviews.Decision(review.id, "reject", None),
                                            reviews.Decision(review.id, "reject", "low_rating"),
                                            reviews.Decision(review.id, "keep")],
                                  "ana", NOW, REASONS)
    assert len(counts["refused"]) == 2 and counts["keep"] == 1
    assert stored(pages_edge, order_id)[0].status == "pending"

    from flows.decisions import decision_form
    from flows.moderation import review_choice, review_item

    with session_scope(pages_edge.engine) as session:
        items = [review_item(p) for p in reviews.pending_reviews(session, 100)]
    form = decision_form("ReviewModeration", items, review_choice(REASONS), "intro")
    field = items[0].field
    assert form(operator="ana", **{field: {"decision": "reject", "reason": "spam"}})
    with pytest.raises(ValidationError):
        form(operator="ana", **{field: {"decision": "reject", "reason": "low_rating"}})


def test_hostile_input_is_refused_or_escaped_and_never_stored_raw(pages_edge):
    order_id, (tee,) = delivered(pages_edge, lines=[("TEE-1", 1, "25.00")])
    url = review_link(pages_edge, order_id, tee)
    hostile = {"rating": "5", "title": "<script>alert(1)</script>\x00\x07",
               "body": "fine\x00 <img src=x onerror=alert(1)>", "display_name": "<b>Eve</b>"}

    cross = post(url, hostile, **{"Sec-Fetch-Site": "cross-site"})
    spoofed = post(url, hostile, Origin="https://evil.example")
    assert (cross.status_code, spoofed.status_code) == (403, 403)
    too_long = post(url, {**hostile, "body": "x" * 2001})
    assert too_long.status_code == 422 and "under 2000 characters" in too_long.text
    assert post(url, {**hostile, "rating": "6"}).status_code == 422
    assert post(url, {**hostile, "rating": "-1"}).status_code == 422
    bad_bytes = httpx.post(url, content=b"rating=5&title=\xff\xfe&display_name=x", timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bad_bytes.status_code == 200 and "Traceback" not in bad_bytes.text
    huge = post(url, {**hostile, "body": "x" * 70_000})
    assert huge.status_code == 413
    assert [r.title for r in stored(pages_edge, order_id)] == ["\ufffd\ufffd"]

    thanks = post(url, hostile, Origin="null")  # a same-origin form under no-referrer
    assert thanks.status_code == 200
    for text in (thanks.text, httpx.get(url, timeout=10).text):
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>Eve" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    [review] = stored(pages_edge, order_id)
    assert (review.title, review.body) == ("<script>alert(1)</script>",
                                           "fine <img src=x onerror=alert(1)>")


def test_wrong_foreign_and_erased_links_get_the_friendly_page(pages_edge):
    order_id, (tee,) = delivered(pages_edge, lines=[("TEE-1", 1, "25.00")])
    other_id, (other_line,) = delivered(pages_edge, lines=[("MUG-1", 1, "18.00")])
    wrong = [f"{pages_edge.url}/r/{'A' * 48}", f"{pages_edge.url}/r/short",
             review_link(pages_edge, order_id, other_line),  # a line of another order
             link_url(pages_edge.url, pages_edge.secret, Purpose.FEEDBACK, order_id, NOW,
                      tee).replace("/f/", "/r/")]  # a token for another page
    for url in wrong:
        for answer in (httpx.get(url, timeout=10), post(url, GOOD)):
            assert answer.status_code == 404 and "not valid any more" in answer.text, url
    with session_scope(pages_edge.engine) as session:
        customer = session.scalar(select(OrderLine).where(OrderLine.id == tee)).order.customer_id
        session.add(Erasure(subject="x" * 64, customer_id=customer, actor="test",
                            requested_at=NOW, counts={}))
    url = review_link(pages_edge, order_id, tee)
    for answer in (httpx.get(url, timeout=10), post(url, GOOD)):
        assert answer.status_code == 404 and "not valid any more" in answer.text
    assert stored(pages_edge, order_id) == [] and stored(pages_edge, other_id) == []


def review_hits(edge, method: str) -> int:
    with session_scope(edge.engine) as session:
        return session.scalar(select(func.coalesce(func.sum(PageHit.hits), 0)).where(
            PageHit.page == "review", PageHit.method == method))


def test_hits_are_counted_per_method(pages_edge):
    order_id, (tee,) = delivered(pages_edge, lines=[("TEE-1", 1, "25.00")])
    time.sleep(0.5)
    before = review_hits(pages_edge, "HEAD")
    for _ in range(3):
        httpx.head(review_link(pages_edge, order_id, tee), timeout=10)
    deadline = time.monotonic() + 25  # the edge adds its counts every 10 s
    while review_hits(pages_edge, "HEAD") < before + 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert review_hits(pages_edge, "HEAD") >= before + 3


def test_a_store_on_a_review_platform_gets_links_to_it(pages_edge):
    order_id, (tee, mug) = delivered(pages_edge, name="#7001")
    rules = pages_edge.cfg.pages.reviews.model_copy(update={
        "platform": "judgeme", "platform_urls": {
            "judgeme": "https://shop.example/products/{product}?sku={sku}&order={order}"}})
    cfg = pages_edge.cfg.model_copy(update={"pages": pages_edge.cfg.pages.model_copy(
        update={"reviews": rules})})
    rt = Runtime(settings=pages_edge.rt.settings, config=cfg)
    with session_scope(pages_edge.engine) as session:
        review_request(session, [order_id], NOW, rt)
    with session_scope(pages_edge.engine) as session:
        urls = {m.topic: m.context["product"]["review_url"] for m in session.scalars(
            select(Message).where(Message.order_id == order_id))}
    assert urls["TEE-1"] == "https://shop.example/products/cotton-tee?sku=TEE-1&order=%237001"
    assert str(order_id) not in urls["MUG-1"].split("order=")[1]  # the store's name, not our id


def test_exports_hold_only_approved_reviews_and_the_report_counts_them(pages_edge, tmp_path,
                                                                       monkeypatch):
    order_id, (tee, mug) = delivered(pages_edge)
    post(review_link(pages_edge, order_id, tee),
         {**GOOD, "rating": "3", "title": "=SUM(A1) & <ok>", "body": "Fine \"quoted\" tee"})
    post(review_link(pages_edge, order_id, mug), {**GOOD, "rating": "1"})
    tee_review, mug_review = stored(pages_edge, order_id)
    with session_scope(pages_edge.engine) as session:
        before = report(session)["approved_reviews_by_rating"]["3"]
        reviews.moderate(session, [reviews.Decision(tee_review.id, "approve")], "ana", NOW,
                         REASONS)
    with session_scope(pages_edge.engine) as session:
        shown = report(session)["approved_reviews_by_rating"]
    assert set(shown) == {"1", "2", "3", "4", "5"} and shown["3"] == before + 1

    from flows import common
    from flows.cli import app
    from tasks.settings import get_settings

    monkeypatch.setenv("JOURNEYS_DATABASE_URL", str(pages_edge.engine.url))
    monkeypatch.setenv("JOURNEYS_SECRET_KEY", pages_edge.secret)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for cached in (get_settings, common.runtime):
        cached.cache_clear()
    try:
        outputs = {}
        for fmt in ("google", "json", "csv"):
            target = tmp_path / f"reviews.{fmt}"
            result = CliRunner().invoke(app, ["reviews", "export", "--format", fmt,
                                              "--output", str(target)])
            assert result.exit_code == 0, result.output
            outputs[fmt] = target.read_text(encoding="utf-8")
        refused = CliRunner().invoke(app, ["reviews", "export", "--format", "yaml"])
        assert refused.exit_code == 2
    finally:
        for cached in (get_settings, common.runtime):
            cached.cache_clear()

    feed = ET.fromstring(outputs["google"].encode())
    assert feed.tag == "feed" and [c.tag for c in feed] == ["version", "publisher", "reviews"]
    assert feed.findtext("version") == "2.4"
    assert feed.findtext("publisher/name") == pages_edge.cfg.store.name
    ours = [r for r in feed.iterfind("reviews/review") if r.findtext("review_id")
            == f"r{tee_review.id}"]
    assert len(ours) == 1 and all(r.findtext("review_id") != f"r{mug_review.id}"
                                  for r in feed.iterfind("reviews/review"))
    review = ours[0]
    assert [c.tag for c in review] == ["review_id", "reviewer", "review_timestamp", "title",
                                       "content", "review_url", "ratings", "products",
                                       "is_spam", "collection_method"]
    overall = review.find("ratings/overall")
    assert (overall.text, overall.get("min"), overall.get("max")) == ("3", "1", "5")
    assert review.findtext("title") == "=SUM(A1) & <ok>"  # escaped in the XML, intact when read
    assert review.findtext("reviewer/name") == "Ada L."
    assert review.findtext("products/product/product_ids/skus/sku") == "TEE-1"
    assert review.findtext("products/product/product_name") == "Cotton tee"
    assert review.findtext("review_timestamp").endswith("Z")

    [entry] = [e for e in json.loads(outputs["json"]) if e["review_id"] == f"r{tee_review.id}"]
    assert (entry["rating"], entry["content"], entry["verified_buyer"]) == (
        3, 'Fine "quoted" tee', True)
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    [row] = [r for r in rows if r["review_id"] == f"r{tee_review.id}"]
    assert row["title"] == "'=SUM(A1) & <ok>"  # never a formula in a spreadsheet
    assert all(r["review_id"] != f"r{mug_review.id}" for r in rows)


def test_submit_and_moderate_behave_alike_on_sqlite_and_postgresql(engine, now):
    """The page's and the form's writes, straight on each database (the edge above is SQLite)."""
    with session_scope(engine) as session:
        add_catalog(session, now)
        order = add_order(session, now, lines=[("TEE-1", 1, "25.00")], state="delivered",
                          step=None)
        line = order.lines[0]
        draft = reviews.Draft(4, "Good", None, "Ada L.")
        outcomes = [reviews.submit(session, order, line, draft, now) for _ in range(2)]
        outcomes.append(reviews.submit(session, order, line, reviews.Draft(5, None, None, "A"),
                                       now))
        [review_id] = session.scalars(select(Review.id))
        counts = reviews.moderate(session, [reviews.Decision(review_id, "approve")], "ana", now,
                                  REASONS)
        outcomes.append(reviews.submit(session, order, line, draft, now))
        shown = reviews.approved_by_rating(session)
        review = session.get(Review, review_id)
        assert (review.rating, review.title, review.status) == (5, None, "approved")
    assert outcomes == ["stored", "same", "stored", "approved"]
    assert counts["approve"] == 1 and shown == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 1}
