"""Shipments, tracking events and the track stage, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select

from tasks.links import Purpose, link_url
from tasks.messaging.render import renderer_for
from tasks.store.db import session_scope
from tasks.store.journal import CONFIRMED
from tasks.store.models import (
    Message,
    Order,
    Quarantine,
    ServiceCase,
    Shipment,
    Step,
    TrackingEvent,
)
from tasks.tracking.formats import ShipmentIn, TrackingEventIn, read_events, read_shipments
from tasks.tracking.ingest import ingest_events, ingest_shipments
from tasks.tracking.stage import delay_watch_ids, late_cases, track
from tests.conftest import FIXTURES
from tests.factories import add_customer, add_order

UPS = "1Z999AA10123456784"
SECRET = "tracking-test-secret"


def confirmed_order(session, now, external_id, promised=date(2026, 11, 23), **fields):
    customer = add_customer(session, now, f"c{external_id.lower()}@example.com",
                            first_name="Grace")
    return add_order(session, now, state=CONFIRMED, step=None, customer=customer,
                     email=customer.email, external_id=external_id, name=f"#{external_id}",
                     promised_delivery=promised, **fields)


def shipment(order_ext, number, at, carrier="ups"):
    return ShipmentIn(order_source="shopify", order_external_id=order_ext, carrier=carrier,
                      tracking_number=number, shipped_at=at,
                      line_items=[{"title": "Cotton tee", "quantity": 1}])


def event(event_id, number, tag, at, subtag=None, expected=None):
    return TrackingEventIn(event_id=event_id, tracking_number=number, tag=tag, subtag=subtag,
                           occurred_at=at, expected_delivery=expected)


def messages(session, template=None):
    query = select(Message).order_by(Message.id)
    if template:
        query = query.where(Message.template == template)
    return session.scalars(query).all()


def render_all(rows, cfg):
    renderer = renderer_for(cfg)
    return [renderer.render(row.template, row.context) for row in rows]


def test_fulfillment_ships_the_order_and_mails_once(engine, runtime, now):
    cfg = runtime.config
    with session_scope(engine) as session:
        order_id = confirmed_order(session, now, "5001").id
        canonical_id = confirmed_order(session, now, "MP-5003", source="canonical").id
        split_id = confirmed_order(session, now, "5002").id
    later = now + timedelta(days=1)
    with session_scope(engine) as session:
        first = ingest_shipments(session, read_shipments(FIXTURES / "shipments_shopify.jsonl"),
                                 later, cfg, SECRET)
    with session_scope(engine) as session:
        again = ingest_shipments(session, read_shipments(FIXTURES / "shipments_shopify.jsonl"),
                                 later, cfg, SECRET)

    # 5 shipments + the cancelled fulfillment + the bad record + the broken line; a cancelled
    # fulfillment that never shipped is not quarantined: understood, nothing to do (deferred)
    assert first.as_dict() == {"received": 8, "accepted": 4, "updated": 0, "duplicates": 0,
                               "quarantined": 3, "deferred": 1}
    assert again.as_dict() == {"received": 8, "accepted": 0, "updated": 0, "duplicates": 7,
                               "quarantined": 0, "deferred": 1}
    with session_scope(engine) as session:
        orders = {o.id: o for o in session.scalars(select(Order))}
        mails = messages(session, "shipped")
        quarantined = session.scalars(select(Quarantine).order_by(Quarantine.id)).all()
        rendered = render_all(mails, cfg)
        assert {o.state for o in orders.values()} == {"shipped"}
        assert orders[order_id].shipped_at == datetime(2026, 11, 18, 17, 30, tzinfo=UTC)
        assert orders[split_id].shipped_at == datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
        assert sorted(m.effect_key for m in mails) == sorted([
            f"order:{order_id}:ship-{UPS}:shipped:v1",
            f"order:{split_id}:ship-9400100000000000000001:shipped:v1",
            f"order:{split_id}:ship-9400100000000000000002:shipped:v1",
            f"order:{canonical_id}:ship-JD014600006281230704:shipped:v1",
        ])
        unknown = next(q for q in quarantined if q.external_id == "777777")
    assert unknown.reasons == [{"field": "order_id", "reason": "no such order: shopify/777777"}]
    ups_mail = next(r for r, m in zip(rendered, mails, strict=True) if m.order_id == order_id)
    # The mails link to the order page (/o/, signed for the order), never to a /track/ page;
    # the carrier's own link is kept for that page.
    base = cfg.store.links_base_url
    ups_link = link_url(base, SECRET, Purpose.ORDER, order_id, later)
    assert ups_link in ups_mail.text and f'href="{ups_link}"' in ups_mail.html
    assert next(m for m in mails if m.order_id == order_id).context["shipment"][
        "tracking_url"] == "https://www.ups.com/track?tracknum=1Z999AA10123456784"
    dhl_mail = next(r for r, m in zip(rendered, mails, strict=True) if m.order_id == canonical_id)
    assert link_url(base, SECRET, Purpose.ORDER, canonical_id, later) in dhl_mail.html
    assert "/track/" not in dhl_mail.html + dhl_mail.text


def test_split_shipment_is_delivered_only_when_both_parcels_are(engine, runtime, now):
    with session_scope(engine) as session:
        order_id = confirmed_order(session, now, "6001").id
    t0 = now + timedelta(hours=1)
    with session_scope(engine) as session:
        ingest_shipments(session, [shipment("6001", "P1", t0), shipment("6001", "P2", t0)],
                         t0, runtime.config, SECRET)
    first_at, second_at = now + timedelta(days=1), now + timedelta(days=2)
    with session_scope(engine) as session:
        ingest_events(session, [event("a1", "P1", "Delivered", first_at, "Delivered_001")],
                      first_at)
        result = track(session, [order_id], first_at, runtime)
    assert (result.advanced, session_state(engine, order_id)) == (0, "shipped")

    with session_scope(engine) as session:
        ingest_events(session, [event("a2", "P2", "Delivered", second_at, "Delivered_003")],
                      second_at)
        due = session.scalars(select(Step.order_id).where(
            Step.name == "track", Step.status == "pending", Step.due_at <= second_at)).all()
        result = track(session, due, second_at, runtime)
    with session_scope(engine) as session:
        rerun = track(session, [order_id], second_at, runtime)
    assert (due, result.advanced, rerun.advanced) == ([order_id], 1, 0)
    with session_scope(engine) as session:
        order = session.get(Order, order_id)
        steps = {s.name: (s.status, s.due_at) for s in session.scalars(
            select(Step).where(Step.order_id == order_id))}
        delivered = messages(session, "delivered")
        assert (order.state, order.delivered_at) == ("delivered", second_at)
        assert [m.effect_key for m in delivered] == [f"order:{order_id}:deliver:delivered:v1"]
        assert "was delivered on" in render_all(delivered, runtime.config)[0].text
    assert steps["track"][0] == "done"
    assert steps["feedback_request"] == ("pending", second_at + timedelta(hours=48))
    assert steps["review_request"] == ("pending", second_at + timedelta(hours=168))
    assert steps["care_guide"] == ("pending", second_at + timedelta(hours=72))
    assert steps["cross_sell"] == ("pending", second_at + timedelta(hours=336))
    assert steps["replenishment"] == ("pending", second_at)
    assert steps["loyalty_earn"] == ("pending", second_at)


def session_state(engine, order_id):
    with session_scope(engine) as session:
        return session.get(Order, order_id).state


def shipped_order(engine, runtime, now, external_id, number, **fields):
    with session_scope(engine) as session:
        order_id = confirmed_order(session, now, external_id, **fields).id
        ingest_shipments(session, [shipment(external_id, number, now)], now, runtime.config,
                         SECRET)
    return order_id


def test_duplicate_event_is_ignored(engine, runtime, now):
    shipped_order(engine, runtime, now, "7001", "D1")
    at = now + timedelta(hours=2)
    with session_scope(engine) as session:
        first = ingest_events(session, [event("d1", "D1", "InTransit", at)] * 2, at)
    with session_scope(engine) as session:
        again = ingest_events(session, [event("d1", "D1", "InTransit", at)], at)
        stored = session.scalars(select(TrackingEvent)).all()
    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (1, 1, 0, 1)
    assert len(stored) == 1


def test_stale_event_is_stored_but_never_moves_the_shipment_back(engine, runtime, now):
    shipped_order(engine, runtime, now, "7101", "S1")
    early, late = now + timedelta(hours=1), now + timedelta(hours=5)
    with session_scope(engine) as session:
        ingest_events(session, [event("s2", "S1", "Delivered", late, "Delivered_001")],
                      late)
    with session_scope(engine) as session:
        result = ingest_events(session, [
            event("s1", "S1", "InTransit", early),  # older than the status: stale
            event("s3", "S1", "InTransit", late + timedelta(hours=1)),  # newer, but after Delivered
        ], late + timedelta(hours=1))
    with session_scope(engine) as session:
        parcel = session.scalars(select(Shipment)).one()
        applied = dict(session.execute(select(TrackingEvent.event_id, TrackingEvent.applied)).all())
    assert result.accepted == 2
    assert (parcel.status, parcel.status_at, parcel.delivered_at) == ("Delivered", late, late)
    assert applied == {"s1": False, "s2": True, "s3": False}


def test_out_of_order_events_in_one_batch_apply_in_time_order(engine, runtime, now):
    shipped_order(engine, runtime, now, "7201", "O1")
    t1, t2 = now + timedelta(hours=1), now + timedelta(hours=3)
    with session_scope(engine) as session:
        ingest_events(session, [event("o2", "O1", "OutForDelivery", t2),
                                event("o1", "O1", "InTransit", t1)], t2)
    with session_scope(engine) as session:
        parcel = session.scalars(select(Shipment)).one()
    assert (parcel.status, parcel.status_at) == ("OutForDelivery", t2)


def test_unknown_tracking_number_and_malformed_events_are_quarantined(engine, runtime, now):
    shipped_order(engine, runtime, now, "5001", UPS)
    later = now + timedelta(days=3)
    with session_scope(engine) as session:
        result = ingest_events(session, read_events(FIXTURES / "tracking_aftership.jsonl"), later)
    with session_scope(engine) as session:
        entries = {q.external_id: q for q in session.scalars(select(Quarantine))}
        parcel = session.scalars(select(Shipment)).one()
    assert result.as_dict() == {"received": 7, "accepted": 2, "updated": 0, "duplicates": 1,
                                "quarantined": 4, "deferred": 0}
    assert entries["evt-003"].reasons == [
        {"field": "tracking_number", "reason": "unknown tracking number: NOPE-0000 (no shipment)"}]
    assert entries["evt-004"].reasons[0]["field"] == "tag"
    assert any(q.reasons[0]["reason"].startswith("not valid JSON") for q in entries.values())
    assert all(q.kind == "tracking_event" for q in entries.values())
    assert parcel.status == "Delivered"


def test_event_from_the_future_is_quarantined(engine, runtime, now):
    shipped_order(engine, runtime, now, "7301", "F1")
    with session_scope(engine) as session:
        result = ingest_events(session, [event("f1", "F1", "InTransit", now + timedelta(hours=1))],
                               now)
        [entry] = session.scalars(select(Quarantine)).all()
    assert result.quarantined == 1
    assert entry.reasons == [{"field": "occurred_at",
                              "reason": "more than 5 minutes in the future"}]


def test_exception_produces_one_notice(engine, runtime, now):
    order_id = shipped_order(engine, runtime, now, "8001", "X1")
    t1, t2 = now + timedelta(hours=1), now + timedelta(hours=2)
    with session_scope(engine) as session:
        ingest_events(session, [event("x1", "X1", "Exception", t1, "Exception_011")], t1)
        first = track(session, [order_id], t1, runtime)
    with session_scope(engine) as session:
        ingest_events(session, [event("x2", "X1", "Exception", t2, "Exception_011")], t2)
        second = track(session, [order_id], t2, runtime)
        notices = messages(session, "shipment_exception")
        rendered = render_all(notices, runtime.config)
    assert first.details.get("shipment_exception_queued") == 1
    assert "shipment_exception_queued" not in second.details
    assert len(notices) == 1
    assert notices[0].context["notice"] == {"kind": "damaged"}
    assert "damaged in transit" in rendered[0].text


def test_failed_attempt_then_pickup_are_two_notices(engine, runtime, now):
    order_id = shipped_order(engine, runtime, now, "8101", "X2")
    t1, t2 = now + timedelta(hours=1), now + timedelta(hours=2)
    with session_scope(engine) as session:
        ingest_events(session, [event("y1", "X2", "AttemptFail", t1, "AttemptFail_001")], t1)
        track(session, [order_id], t1, runtime)
        ingest_events(session, [event("y2", "X2", "AvailableForPickup", t2)], t2)
        track(session, [order_id], t2, runtime)
        kinds = [m.context["notice"]["kind"] for m in messages(session, "shipment_exception")]
    assert kinds == ["failed_attempt", "pickup"]


def test_missed_promise_brings_one_apology_then_a_late_case(engine, runtime, now):
    # Promised for Monday 16 Nov (Los Angeles); it is Wednesday 18 Nov and still in transit.
    order_id = shipped_order(engine, runtime, now, "9001", "L1", promised=date(2026, 11, 16))
    on_time = shipped_order(engine, runtime, now, "9002", "L2", promised=date(2026, 11, 20))
    with session_scope(engine) as session:
        ingest_events(session, [event("l1", "L1", "InTransit", now, expected=date(2026, 11, 21))],
                      now)
        watched = delay_watch_ids(session, now, 100, runtime.config.store.timezone)
        result = track(session, [order_id, on_time], now, runtime)
    with session_scope(engine) as session:
        again = track(session, delay_watch_ids(session, now, 100, "America/Los_Angeles")
                      + [order_id], now, runtime)
        apologies = messages(session, "delay_apology")
        steps = {(s.order_id, s.name): (s.status, s.due_at) for s in session.scalars(select(Step))}
        rendered = render_all(apologies, runtime.config)
    assert watched == [order_id]
    assert (result.details["late"], again.details["late"]) == (1, 1)
    assert [(m.order_id, m.context["order"]["new_estimate"]) for m in apologies] == [
        (order_id, "2026-11-21")]
    assert "Nov 21, 2026" in rendered[0].text
    deadline = datetime(2026, 11, 17, 8, 0, tzinfo=UTC)  # end of 16 Nov in Los Angeles
    assert steps[(order_id, "open_late_case")] == ("pending", deadline + timedelta(days=5))
    # The on-time order sleeps until its own promise runs out.
    assert steps[(on_time, "track")] == ("pending", datetime(2026, 11, 21, 8, 0, tzinfo=UTC))

    case_due = deadline + timedelta(days=5)
    with session_scope(engine) as session:
        opened = late_cases(session, [order_id], case_due, runtime)
    with session_scope(engine) as session:
        rerun = late_cases(session, [order_id], case_due, runtime)
        [case] = session.scalars(select(ServiceCase)).all()
    assert (opened.advanced, rerun.advanced) == (1, 0)
    assert (case.effect_key, case.proposed, case.status) == (
        f"order:{order_id}:case:late", "refund", "open")
    assert case.reason == "late: promised 2026-11-16, not delivered 5 days later"


def test_apology_estimate_without_carrier_date_is_promise_plus_extra_days(engine, runtime, now):
    order_id = shipped_order(engine, runtime, now, "9101", "L3", promised=date(2026, 11, 17))
    with session_scope(engine) as session:
        track(session, [order_id], now, runtime)
        [apology] = messages(session, "delay_apology")
    assert apology.context["order"]["new_estimate"] == "2026-11-20"


def test_late_case_is_not_opened_once_delivered(engine, runtime, now):
    order_id = shipped_order(engine, runtime, now, "9201", "L4", promised=date(2026, 11, 16))
    t1 = now + timedelta(hours=1)
    with session_scope(engine) as session:
        track(session, [order_id], now, runtime)
        ingest_events(session, [event("l4", "L4", "Delivered", t1)], t1)
        track(session, [order_id], t1, runtime)
        result = late_cases(session, [order_id], now + timedelta(days=6), runtime)
        step = session.scalars(select(Step).where(Step.order_id == order_id,
                                                  Step.name == "open_late_case")).one()
        assert session.scalars(select(ServiceCase)).all() == []
    assert (result.advanced, result.skipped, step.status) == (0, 1, "closed")


def test_shipment_for_unconfirmed_order_is_quarantined(engine, runtime, now):
    with session_scope(engine) as session:
        add_order(session, now, state="packed", step=None, external_id="9301")
        result = ingest_shipments(session, [shipment("9301", "U1", now)], now, runtime.config,
                                  SECRET)
        [entry] = session.scalars(select(Quarantine)).all()
    assert result.quarantined == 1
    assert json.loads(entry.payload)["tracking_number"] == "U1"
    assert entry.reasons == [{"field": "order_id",
                              "reason": "order is packed; only confirmed orders can be shipped"}]
