"""Review requests (16 CFR Part 465): everyone, every product, never filtered by rating."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from itertools import count

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from tasks.aftercare.reviews import review_rates_by_rating, review_request, review_request_counts
from tasks.aftercare.service import decide_case
from tasks.config.aftercare import ReviewConsent
from tasks.messaging.governor import email_hash, govern
from tasks.messaging.outbox import claim_due_messages
from tasks.messaging.render import renderer_for
from tasks.messaging.unsubscribe import suppress
from tasks.runtime import Runtime
from tasks.store.db import session_scope
from tasks.store.models import (
    FeedbackResponse,
    MailPreference,
    Message,
    Product,
    Return,
    ReturnLine,
    ServiceCase,
    Step,
)
from tests.factories import US_ADDRESS, add_catalog, add_customer, add_order

TWO = [("TEE-1", 1, "25.00"), ("MUG-1", 2, "18.00")]
_emails = count(1)


def delivered(session, now, lines=TWO, **fields):
    """A delivered order of a customer with marketing consent (unless one is given)."""
    if "customer" not in fields:
        fields["customer"] = add_customer(session, now, f"c{next(_emails)}@example.com",
                                          accepts_marketing=True)
        fields["email"] = fields["customer"].email
    return add_order(session, now, lines=lines, state="delivered", step="review_request",
                     delivered_at=now - timedelta(days=7), **fields)


def requests(session, order_id=None):
    query = select(Message).where(Message.template == "review_request").order_by(Message.id)
    if order_id is not None:
        query = query.where(Message.order_id == order_id)
    return session.scalars(query).all()


def test_every_product_is_requested_whatever_the_rating(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        unhappy, happy = delivered(session, now), delivered(session, now)
        silent = delivered(session, now)
        for order, rating in ((unhappy, 1), (happy, 5)):
            session.add(FeedbackResponse(source_key=f"fb:{order.id}", order_id=order.id,
                                         rating=rating, tags=[], received_at=now))
        ids = [unhappy.id, happy.id, silent.id]
    with session_scope(engine) as session:
        result = review_request(session, ids, now, runtime)
    with session_scope(engine) as session:
        review_request(session, ids, now, runtime)  # rerun: nothing new
        by_order = {oid: [(m.topic, m.status) for m in requests(session, oid)] for oid in ids}
        rates = review_rates_by_rating(session)
        [sample] = requests(session, unhappy.id)[:1]
        steps = set(session.scalars(select(Step.status).where(Step.name == "review_request")))
    assert (result.advanced, result.details["messages_enqueued"]) == (3, 6)
    expected = [("TEE-1", "pending"), ("MUG-1", "pending")]
    assert by_order == {oid: expected for oid in ids}
    assert rates == {r: {"delivered": 1, "requested": 1, "rate": 1.0} for r in (1, 5, None)}
    assert sample.effect_key == f"order:{unhappy.id}:review_request:TEE-1:v1"
    assert (sample.msg_class, sample.context["product"]["title"]) == ("marketing", "Cotton tee")
    assert steps == {"done"}
    rendered = renderer_for(runtime.config).render(sample.template, sample.context)
    assert rendered.subject == "How do you like your Cotton tee?"
    assert sample.context["product"]["review_url"] in rendered.text


def test_held_while_a_case_is_open_and_released_after_the_decision(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        order = delivered(session, now)
        case = ServiceCase(effect_key=f"order:{order.id}:case:feedback", order_id=order.id,
                           reason="feedback rating 1", proposed="refund", opened_at=now)
        session.add(case)
        session.flush()
        order_id, case_id = order.id, case.id
    with session_scope(engine) as session:
        held = review_request(session, [order_id], now, runtime)
        step = session.scalars(select(Step).where(Step.name == "review_request")).one()
        assert requests(session) == []
        assert (step.status, step.due_at, step.reason) == (
            "pending", now + timedelta(hours=24), "held: service case open")
    assert held.held == 1
    later = now + timedelta(hours=3)
    with session_scope(engine) as session:
        decide_case(session, case_id, "replacement", "ops", None, later, runtime)
        step = session.scalars(select(Step).where(Step.name == "review_request")).one()
        assert (step.status, step.due_at) == ("pending", later)
    with session_scope(engine) as session:
        released = review_request(session, [order_id], later, runtime)
        assert [m.topic for m in requests(session)] == ["TEE-1", "MUG-1"]
    assert (released.advanced, released.held) == (1, 0)


def test_one_request_per_product_per_twelve_months(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        customer = add_customer(session, now, "repeat@example.com", accepts_marketing=True)
        old = delivered(session, now, lines=[("TEE-1", 1, "25.00")], customer=customer,
                        email=customer.email)
        recent = delivered(session, now, lines=[("MUG-1", 1, "18.00")], customer=customer,
                           email=customer.email)
        new = delivered(session, now, customer=customer, email=customer.email)
        old_id, recent_id, new_id = old.id, recent.id, new.id
    with session_scope(engine) as session:
        review_request(session, [old_id], now - timedelta(days=400), runtime)
        review_request(session, [recent_id], now - timedelta(days=200), runtime)
    with session_scope(engine) as session:
        review_request(session, [new_id], now, runtime)
        rows = [(m.topic, m.status, m.reason) for m in requests(session, new_id)]
    assert rows == [
        ("TEE-1", "pending", None),  # asked 400 days ago: more than 12 months
        ("MUG-1", "skipped", "already asked about this product within 365 days"),
    ]


def test_per_customer_cap_in_thirty_days_records_skipped_reasons(engine, runtime, now):
    with session_scope(engine) as session:
        add_catalog(session, now)
        for n in range(1, 6):
            session.add(Product(sku=f"SOCK-{n}", title=f"Sock {n}", category="socks", tags=[],
                                stock=10, price=Decimal("5.00"), attributes={},
                                updated_at=now))
        customer = add_customer(session, now, "busy@example.com", accepts_marketing=True)
        first = delivered(session, now, lines=[("TEE-1", 1, "25.00"), ("MUG-1", 1, "18.00")],
                          customer=customer, email=customer.email)
        socks = [(f"SOCK-{n}", 1, "5.00") for n in range(1, 6)]
        second = delivered(session, now, lines=socks, customer=customer, email=customer.email)
        first_id, second_id = first.id, second.id
    with session_scope(engine) as session:
        review_request(session, [first_id], now - timedelta(days=10), runtime)
    with session_scope(engine) as session:
        result = review_request(session, [second_id], now, runtime)
        rows = [(m.topic, m.status, m.reason) for m in requests(session, second_id)]
    cap = "cap: 5 review requests per customer per 30 days"
    assert rows == [("SOCK-1", "pending", None), ("SOCK-2", "pending", None),
                    ("SOCK-3", "pending", None), ("SOCK-4", "skipped", cap),
                    ("SOCK-5", "skipped", cap)]
    assert result.details == {"messages_enqueued": 3, "requests_skipped": 2}


def test_no_request_for_a_product_sent_back(engine, runtime, now):
    """Every unit returned: skipped as "returned" (the customer no longer has it); a partial
    return still gets its request."""
    with session_scope(engine) as session:
        add_catalog(session, now)
        order = delivered(session, now, lines=[*TWO, ("COF-1", 2, "14.00")])
        tee, mug, coffee = order.lines
        back = Return(rma="R-2", effect_key="return:2", order_id=order.id,
                      customer_id=order.customer_id, source="page", status="received",
                      resolution="refund", reason="too_small", requested_at=now,
                      goods_value=Decimal("43"), restocking_fee=Decimal(0),
                      shipping_fee=Decimal(0), updated_at=now)
        back.lines = [ReturnLine(order_line_id=tee.id, quantity=1),
                      ReturnLine(order_line_id=coffee.id, quantity=1)]  # one bag of two
        session.add(back)
        order_id = order.id
    with session_scope(engine) as session:
        result = review_request(session, [order_id], now, runtime)
        found = [(m.topic, m.status, m.reason) for m in requests(session, order_id)]
    assert sorted(found) == [("COF-1", "pending", None), ("MUG-1", "pending", None),
                             ("TEE-1", "skipped", "returned")]
    assert result.details["requests_skipped_returned"] == 1


def test_consent_by_ship_to_country_and_the_report_counts_why(engine, runtime, now):
    """Without marketing consent: not asked in the EU, the UK or by default; asked in the US
    as a transactional follow-up once the merchant opts in, but never at an unsubscribed
    address or one that turned reviews off. The report counts each outcome."""
    cfg = runtime.config
    reviews = cfg.aftercare.reviews.model_copy(update={"consent": ReviewConsent(
        regions={"EU": "required", "UK": "required", "US": "transactional"})})
    cfg = cfg.model_copy(update={"aftercare": cfg.aftercare.model_copy(
        update={"reviews": reviews})})
    rt = Runtime(settings=runtime.settings, config=cfg)
    belt = [("BLT-32", 1, "68.00")]
    with session_scope(engine) as session:
        session.add(Product(sku="BLT-32", title="Full-Grain Leather Belt - 32", category="belts",
                            tags=[], stock=5, price=Decimal("68.00"), updated_at=now,
                            attributes={"shopify_product_id": "8001"}))
        orders = {}
        for name, country, consent in (("de", "DE", False), ("gb", "GB", False),
                                       ("ca", "CA", False), ("us", "US", False),
                                       ("unsub", "US", False), ("off", "US", False),
                                       ("fr", "FR", True)):
            customer = add_customer(session, now, f"{name}@example.com",
                                    accepts_marketing=consent)
            order = delivered(session, now, belt, customer=customer, email=customer.email,
                              shipping_address={**US_ADDRESS, "country_code": country})
            order.lines[0].title, order.lines[0].variant_title = "Full-Grain Leather Belt", "32"
            orders[name] = order.id
        suppress(session, "unsub@example.com", "unsubscribe", now, "test")
        session.add(MailPreference(email_hash=email_hash("off@example.com"), topic="reviews",
                                   subscribed=False, updated_at=now))
    with session_scope(engine) as session:
        result = review_request(session, list(orders.values()), now, rt)
        by_order = {m.order_id: m for m in requests(session)}
        step_reason = session.scalar(select(Step.reason).where(Step.order_id == orders["de"]))
        decision = govern(session, claim_due_messages(session, now, 100), now, rt)
        counts = review_request_counts(session)
    outcomes = {name: (by_order[oid].status, by_order[oid].msg_class, by_order[oid].reason)
                for name, oid in orders.items()}
    assert outcomes == {
        "de": ("skipped", "marketing", "no marketing consent (required in EU)"),
        "gb": ("skipped", "marketing", "no marketing consent (required in UK)"),
        "ca": ("skipped", "marketing", "no marketing consent (required by default)"),
        "us": ("pending", "transactional", None),
        "unsub": ("skipped", "marketing", "suppressed: unsubscribe"),
        "off": ("skipped", "marketing", "preference: reviews off"),
        "fr": ("pending", "marketing", None),
    }
    assert step_reason == "no review request sent: no marketing consent (required in EU)"
    assert (result.details["requests_skipped_no_consent"],
            result.details["requests_as_follow_up"]) == (3, 1)
    # The governor sends the follow-up now; the marketing request waits out the quiet hours.
    assert [r.order_id for r in decision.admitted] == [orders["us"]]
    assert [v.reason.split(" ")[:3] for v in decision.held] == [["deferred:", "quiet", "hours"]]
    assert counts == {
        "not sent: no marketing consent (required by default)": 1,
        "not sent: no marketing consent (required in EU)": 1,
        "not sent: no marketing consent (required in UK)": 1,
        "not sent: preference: reviews off": 1,
        "not sent: suppressed: unsubscribe": 1,
        "waiting": 2,
    }
    product = by_order[orders["us"]].context["product"]
    assert (product["title"], product["variant"]) == ("Full-Grain Leather Belt", "32")


def test_review_consent_regions_most_specific_first_and_unknown_refused():
    rules = ReviewConsent(default="transactional",
                          regions={"de": "transactional", "us": "required"})
    assert rules.rule_for("DE") == ("transactional", "DE")  # the country over its group
    assert rules.rule_for("fr") == ("required", "EU")  # the EU needs consent unless listed
    assert rules.rule_for("UK") == rules.rule_for("GB") == ("required", "UK")
    assert rules.rule_for("US") == ("required", "US")
    assert rules.rule_for(None) == rules.rule_for("JP") == ("transactional", "default")
    assert ReviewConsent().rule_for("US") == ("required", "default")
    with pytest.raises(ValidationError, match="unknown region EUROPE, XX"):
        ReviewConsent(regions={"Europe": "required", "XX": "required"})
    with pytest.raises(ValidationError, match="UK and GB"):
        ReviewConsent(regions={"UK": "required", "gb": "transactional"})
