"""Delivery survey: links to the survey page, answers stored once, unhappy ones open a case."""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from tasks.aftercare.feedback import (
    feedback_request,
    ingest_feedback,
    proposal,
    rating_link,
    rating_signature,
    read_feedback,
    verify_rating_link,
)
from tasks.config.aftercare import FeedbackRules
from tasks.links import Link, Purpose, read_token
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.models import FeedbackResponse, Message, OrderEvent, Quarantine, ServiceCase, Step
from tests.conftest import FIXTURES
from tests.factories import add_order


def opened_by_page(url, secret):
    """What the survey page's /feedback route accepts of an old signed link (flows/pages/
    survey.py: o, r and sig checked by verify_rating_link): (order id, rating) or None."""
    query = parse_qs(urlsplit(url).query)
    order_id, rating, sig = int(query["o"][0]), int(query["r"][0]), query["sig"][0]
    return (order_id, rating) if verify_rating_link(secret, order_id, rating, sig) else None


def delivered(session, now, **fields):
    return add_order(session, now, state="delivered", step="feedback_request",
                     delivered_at=now - timedelta(days=2), **fields)


def test_survey_links_open_the_survey_page_and_old_signed_links_still_verify(
    engine, runtime, now
):
    with session_scope(engine) as session:
        order_id = delivered(session, now).id
        undelivered = add_order(session, now, state="shipped", step="feedback_request").id
    with session_scope(engine) as session:
        result = feedback_request(session, [order_id, undelivered], now, runtime)
    with session_scope(engine) as session:
        feedback_request(session, [order_id], now, runtime)  # rerun: nothing new
        [message] = session.scalars(select(Message)).all()
        steps = dict(session.execute(select(Step.order_id, Step.status)).all())
    assert (result.advanced, result.closed) == (1, 1)
    assert steps == {order_id: "done", undelivered: "closed"}
    assert (message.template, message.msg_class, message.order_id) == (
        "feedback_request", "transactional", order_id)
    links = message.context["feedback"]["links"]
    assert [link["rating"] for link in links] == [1, 2, 3, 4, 5]
    assert [link["label"] for link in links] == ["Very poor", "Poor", "OK", "Good", "Excellent"]
    secret = runtime.settings.secret_key
    base = runtime.config.store.links_base_url
    for link in links:
        path, _, query = link["url"].partition("?")
        assert path.startswith(f"{base}/f/") and query == f"r={link['rating']}"
        assert read_token(secret, path.rsplit("/", 1)[1], Purpose.FEEDBACK, now.date()) == Link(
            Purpose.FEEDBACK, order_id, 0, now.date())
        assert str(order_id) not in path.rsplit("/", 1)[1]
    assert len({link["url"].partition("?")[0] for link in links}) == 1  # one token, five r=N
    rendered = renderer_for(runtime.config).render(message.template, message.context)
    assert all(link["url"] in rendered.text for link in links)
    assert "1 – Very poor" in rendered.text and "5 – Excellent" in rendered.text
    assert rendered.html.count('class="rating"') == 5 and "min-height: 44px" in rendered.html
    assert "<script" not in rendered.html
    # Links mailed before the page existed keep verifying (the page opens them).
    old = rating_link(base, secret, order_id, 5)
    assert opened_by_page(old, secret) == (order_id, 5)
    assert opened_by_page(old.replace("r=5", "r=1"), secret) is None
    assert opened_by_page(old, "another-secret") is None
    assert not verify_rating_link(secret, order_id + 1, 1, rating_signature(secret, order_id, 1))
    assert not verify_rating_link(secret, order_id, 1, None)


def test_ingest_quarantines_bad_lines_and_opens_cases_with_proposals(engine, runtime, now):
    with session_scope(engine) as session:
        ids = {ext: delivered(session, now, external_id=ext).id for ext in ("FB-1", "FB-2", "FB-3")}
    items = read_feedback(FIXTURES / "feedback.jsonl")
    with session_scope(engine) as session:
        first = ingest_feedback(session, items, now, runtime)
    with session_scope(engine) as session:
        again = ingest_feedback(session, read_feedback(FIXTURES / "feedback.jsonl"), now, runtime)
    assert first.as_dict() == {"received": 7, "accepted": 3, "updated": 0, "duplicates": 0,
                               "quarantined": 4, "deferred": 0}
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 7, 0)
    with session_scope(engine) as session:
        answers = session.scalars(select(FeedbackResponse)).all()
        cases = {c.order_id: c for c in session.scalars(select(ServiceCase))}
        quarantine = session.scalars(select(Quarantine).order_by(Quarantine.id)).all()
        events = session.scalars(select(OrderEvent).where(OrderEvent.kind == "case_opened")).all()
    assert sorted(a.rating for a in answers) == [1, 2, 5]
    assert set(cases) == {ids["FB-1"], ids["FB-3"]}  # rating 5 without issues: no case
    assert (cases[ids["FB-1"]].proposed, cases[ids["FB-1"]].status) == ("replacement", "open")
    assert cases[ids["FB-1"]].effect_key == f"order:{ids['FB-1']}:case:feedback"
    assert cases[ids["FB-1"]].reason == "feedback rating 1; issues: damaged"
    assert cases[ids["FB-3"]].proposed == "refund"
    assert len(events) == 2
    reasons = {q.origin: q.reasons for q in quarantine}
    assert all(q.kind == "feedback" for q in quarantine)
    assert reasons["feedback.jsonl:line 4"][0]["field"] == "rating"
    assert reasons["feedback.jsonl:line 5"][0]["field"] == "tags[0]"
    assert reasons["feedback.jsonl:line 6"][0]["reason"].startswith("not valid JSON")
    assert reasons["feedback.jsonl:line 7"] == [
        {"field": "order_external_id", "reason": "unknown order"}]


def _line(**record) -> str:
    return json.dumps({"submitted_at": "2026-11-17T09:00:00Z", **record})


def test_signed_answers_are_accepted_and_forged_or_unsigned_quarantined(
    engine, runtime, now, tmp_path
):
    secret = runtime.settings.secret_key
    with session_scope(engine) as session:
        order_id = delivered(session, now).id
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join([
        _line(order_id=order_id, rating=4, sig=rating_signature(secret, order_id, 4)),
        _line(order_id=order_id, rating=1, sig=rating_signature(secret, order_id, 5),
              submitted_at="2026-11-17T09:05:00Z"),
        _line(order_id=order_id, rating=2, submitted_at="2026-11-17T09:06:00Z"),
        _line(order_id=order_id, rating=1, sig=rating_signature("guess", order_id, 1),
              submitted_at="2026-11-17T09:07:00Z"),
    ]) + "\n")
    with session_scope(engine) as session:
        result = ingest_feedback(session, read_feedback(path), now, runtime)
        stored = session.scalars(select(Quarantine).order_by(Quarantine.id))
        reasons = [q.reasons[0] for q in stored]
        assert session.scalars(select(ServiceCase)).all() == []
    assert (result.accepted, result.quarantined) == (1, 3)
    assert [r["field"] for r in reasons] == ["sig", "sig", "sig"]
    assert reasons[0]["reason"].startswith("forged")
    assert reasons[1]["reason"].startswith("unsigned")


@pytest.mark.parametrize(("rating", "tags", "expected"), [
    (5, [], None), (3, [], None), (2, [], "refund"), (1, [], "refund"),
    (5, ["late"], "keep_with_credit"), (4, ["wrong_item"], "replacement"),
    (1, ["late", "missing_item"], "replacement"), (5, ["other"], "keep_with_credit"),
])
def test_proposal_by_tag_then_low_rating(rating, tags, expected):
    assert proposal(rating, tags, FeedbackRules()) == expected
