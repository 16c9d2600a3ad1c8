"""Issue 13: real Shopify fulfillments and AfterShip webhooks (tests/fixtures/real_tracking)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy import select, update

from tasks.aftercare.feedback import ingest_feedback, parse_feedback_line
from tasks.archive import check_key
from tasks.intake.release import release
from tasks.messaging.outbox import dispatch
from tasks.messaging.transports import FileTransport, OutgoingMail, member_name
from tasks.store.db import session_scope
from tasks.store.journal import CONFIRMED
from tasks.store.models import Message, Order, OrderEvent, Quarantine, Shipment, TrackingEvent
from tasks.tracking.formats import event_from_json, shipments_from_json
from tasks.tracking.ingest import ingest_events, ingest_shipments
from tests.conftest import FIXTURES
from tests.factories import add_order

REAL = FIXTURES / "real_tracking"
ORDER_ID, NUMBER = "450789469", "1Z2345"
HOSTILE = "#☠1☢\n---\n4321\n"
LATER = datetime(2026, 11, 19, 10, 0, tzinfo=UTC)
EVENT_IDS = count(1)


def fulfillment(**changes: Any) -> dict[str, Any]:
    return json.loads((REAL / "shopify_fulfillment.json").read_text()) | changes


def untracked(**changes: Any) -> dict[str, Any]:
    return fulfillment(tracking_company=None, tracking_number=None, tracking_numbers=[],
                       tracking_url=None, tracking_urls=[], **changes)


def webhook(event: str = "tracking_update", **msg: Any) -> dict[str, Any]:
    body = json.loads((REAL / "aftership_tracking_update.json").read_text())
    return body | {"event": event, "event_id": f"{body['event_id']}-{next(EVENT_IDS)}",
                   "msg": body["msg"] | msg}


def ship(session, bodies: list[dict[str, Any]], cfg) -> dict[str, int]:
    items = [item for body in bodies
             for item in shipments_from_json(body, "shopify", json.dumps(body), "test")]
    return ingest_shipments(session, items, LATER, cfg, "test-secret").as_dict()


def track(session, bodies: list[dict[str, Any]], at: datetime = LATER) -> dict[str, int]:
    items = [event_from_json(body, "aftership", json.dumps(body), "test") for body in bodies]
    return ingest_events(session, items, at).as_dict()


def counts(received: int, accepted=0, updated=0, duplicates=0, quarantined=0, deferred=0
           ) -> dict[str, int]:
    return {"received": received, "accepted": accepted, "updated": updated,
            "duplicates": duplicates, "quarantined": quarantined, "deferred": deferred}


def confirmed_order(session, now, external_id: str = ORDER_ID) -> int:
    return add_order(session, now, state=CONFIRMED, step=None, external_id=external_id,
                     name="#1001" if external_id == ORDER_ID else f"#{external_id}",
                     promised_delivery=date(2026, 11, 23)).id


def parcels(session) -> list[Shipment]:
    return session.scalars(select(Shipment).order_by(Shipment.id)).all()


# ---------------------------------------------------------------- 1. keys, paths, mail


def test_member_name_is_a_valid_stable_unique_archive_key_whatever_the_key_holds():
    keys = [f"order:1:ship-{HOSTILE}:shipped:v1", "order:1:ship-#1:shipped:v1",
            "order:1:ship-a/../b:shipped:v1", "order:1:ship-:shipped:v1", "", "x" * 400,
            "order:1:ship-\udc00:shipped:v1", "order:7:confirm:confirmation:v2"]
    names = [member_name(key) for key in keys]
    for name in names:
        check_key(name)  # raises on '#', '/', '..', empty parts
        assert name.isascii() and name.isprintable() and len(name) <= 160
    assert names == [member_name(key) for key in keys]  # stable
    assert len(set(names)) == len(keys)  # unique
    assert names[-1] == "order_7_confirm_confirmation_v2.eml"  # plain keys keep their name


def test_control_characters_are_refused_per_field_and_the_rest_ships_and_mails(
    sqlite_engine, runtime, now
):
    with session_scope(sqlite_engine) as session:
        hostile_order = confirmed_order(session, now, "1")
        order_id = confirmed_order(session, now)
        result = ship(session, [
            fulfillment(id=1, order_id=1, tracking_number=HOSTILE, tracking_numbers=[HOSTILE]),
            fulfillment(tracking_number="  #☠1☢4321 ", tracking_numbers=[]),
        ], runtime.config)
    with session_scope(sqlite_engine) as session:
        entry = session.scalars(select(Quarantine)).one()
        [parcel] = parcels(session)
        mail = session.scalars(select(Message)).one()
        sent = dispatch(session, LATER, runtime)
        status = session.scalar(select(Message.status).where(Message.id == mail.id))
        states = {o.id: o.state for o in session.scalars(select(Order))}
    assert result == counts(2, accepted=1, quarantined=1)
    assert entry.reasons == [{"field": "tracking_number", "reason": "contains a control "
                              "character (U+000A); it cannot be part of a key"}]
    assert parcel.tracking_number == "#☠1☢4321"  # trimmed; '#' and symbols are kept
    assert mail.effect_key.startswith(f"order:{order_id}:parcel-") and "#" not in mail.effect_key
    assert (sent.sent, status) == (1, "sent")
    assert states == {hostile_order: CONFIRMED, order_id: "shipped"}


def test_file_transport_archives_a_mail_whose_legacy_key_holds_a_hash_sign(runtime):
    mail = OutgoingMail(1, "order:9:ship-#1\n2:shipped:v1", "a@x.example", "b@x.example",
                        b"Subject: x\r\n\r\nbody\r\n", LATER)
    [outcome] = FileTransport(runtime.archive).send_batch([mail])
    assert outcome.status == "sent"
    assert runtime.archive.get(outcome.artifact_ref) == mail.data


# ---------------------------------------------------------------- 3. fulfillments


def test_untracked_fulfillment_ships_and_a_later_update_fills_the_same_parcel(
    engine, runtime, now
):
    with session_scope(engine) as session:
        order_id = confirmed_order(session, now)
    with session_scope(engine) as session:
        created = ship(session, [untracked()], runtime.config)
    with session_scope(engine) as session:
        updated = ship(session, [fulfillment()], runtime.config)
    with session_scope(engine) as session:
        again = ship(session, [fulfillment(), untracked()], runtime.config)
        [parcel] = parcels(session)
        [mail] = session.scalars(select(Message)).all()
        state = session.get(Order, order_id).state
    assert (created, updated, again) == (counts(1, accepted=1), counts(1, updated=1),
                                         counts(2, duplicates=2))
    assert (parcel.fulfillment_id, parcel.carrier, parcel.tracking_number) == (
        "255858046", "usps", NUMBER)
    assert state == "shipped"
    assert mail.context["shipment"]["tracking_number"] == "not available yet"
    assert f"order:{order_id}:parcel-" in mail.effect_key


def test_pending_and_open_fulfillments_wait_and_success_ships(sqlite_engine, runtime, now):
    with session_scope(sqlite_engine) as session:
        order_id = confirmed_order(session, now)
        other = fulfillment(id=2, status="open", tracking_number="9300", tracking_numbers=[])
        waiting = ship(session, [fulfillment(status="pending"), other], runtime.config)
        state, shipped = session.get(Order, order_id).state, parcels(session)
        notes = [e.detail["note"] for e in session.scalars(select(OrderEvent).where(
            OrderEvent.kind == "shipment"))]
        success = ship(session, [fulfillment()], runtime.config)
        after = session.scalar(select(Order.state).where(Order.id == order_id))
    assert waiting == counts(2, deferred=2)  # not shipped, not quarantined: waiting
    assert (state, shipped, after) == (CONFIRMED, [], "shipped")
    assert notes == ["fulfillment 255858046 is pending: not shipped yet",
                     "fulfillment 2 is open: not shipped yet"]
    assert success == counts(1, accepted=1)


@pytest.mark.parametrize("status", ["cancelled", "failure", "error"])
def test_failed_fulfillment_undoes_its_parcel_and_never_creates_one(
    sqlite_engine, runtime, now, status
):
    with session_scope(sqlite_engine) as session:
        order_id = confirmed_order(session, now)
        split_id = confirmed_order(session, now, "2")
        ship(session, [fulfillment(), fulfillment(id=2, order_id=2, tracking_number="9300",
                                                  tracking_numbers=[]),
                       fulfillment(id=3, order_id=2, tracking_number="9400",
                                   tracking_numbers=[])], runtime.config)
        undone = ship(session, [fulfillment(status=status), fulfillment(id=3, order_id=2,
                      tracking_number="9400", tracking_numbers=[], status=status)],
                      runtime.config)
        never = ship(session, [fulfillment(id=4, tracking_number="X9", tracking_numbers=[],
                                           status=status)], runtime.config)
        again = ship(session, [fulfillment(status=status)], runtime.config)
        found = {(p.fulfillment_id, p.status, p.substatus) for p in parcels(session)}
        order = session.execute(select(Order.state, Order.shipped_at).where(
            Order.id == order_id)).one()
        split_state = session.scalar(select(Order.state).where(Order.id == split_id))
        quarantined = session.scalars(select(Quarantine)).all()
    assert (undone, never, again) == (counts(2, updated=2), counts(1, deferred=1),
                                      counts(1, duplicates=1))
    assert found == {("255858046", "Cancelled", status), ("3", "Cancelled", status),
                     ("2", "Pending", None)}
    assert (order.state, order.shipped_at) == (CONFIRMED, None)  # nothing else under way
    assert (split_state, quarantined) == ("shipped", [])  # its other parcel is still live


# ---------------------------------------------------------------- 4. AfterShip events


def test_events_match_carrier_and_number_and_the_order_they_name(engine, runtime, now):
    with session_scope(engine) as session:
        confirmed_order(session, now)
        confirmed_order(session, now, "2")
        ship(session, [
            fulfillment(tracking_company="My Custom Shipping Company", tracking_number="123456789",
                        tracking_numbers=[], tracking_url=None, tracking_urls=[]),
            fulfillment(id=2, order_id=2, tracking_company="DHL", tracking_number="555",
                        tracking_numbers=[]),
            fulfillment(id=3, order_id=2, tracking_company="UPS", tracking_number="555",
                        tracking_numbers=[])], runtime.config)
    with session_scope(engine) as session:
        result = track(session, [
            webhook(slug="tnt"),  # same number, other carrier: not ours
            webhook(slug=None, tracking_number="555", order_id=None, order_number=None),
            webhook(slug="dhl", tracking_number="555"),  # names order 450789469, parcel is 2's
            webhook(slug="my-custom-shipping-company", order_id=None, order_number="1001"),
        ])
        reasons = [q.reasons[0] for q in session.scalars(select(Quarantine).order_by(
            Quarantine.id))]
        moved = {p.carrier: p.status for p in parcels(session)}
    assert result == counts(4, accepted=1, quarantined=3)
    assert sorted(r["field"] for r in reasons) == ["carrier", "order_id", "tracking_number"]
    assert any("no tnt parcel has tracking number 123456789" in r["reason"] for r in reasons)
    assert moved == {"my-custom-shipping-company": "InTransit", "dhl": "Pending", "ups": "Pending"}


def test_old_checkpoints_revised_estimates_and_pending_alerts_move_nothing(
    sqlite_engine, runtime, now
):
    with session_scope(sqlite_engine) as session:
        order_id = confirmed_order(session, now)
        ship(session, [fulfillment(tracking_company="TNT", tracking_number="123456789",
                                   tracking_numbers=[])], runtime.config)
        before_shipping = {"checkpoint_time": "2026-11-18T12:00:00Z", "tag": "InTransit"}
        result = track(session, [
            webhook(checkpoints=[before_shipping]),  # shipped at 13:30Z
            webhook("edd_revise", expected_delivery="2026-11-25"),
            webhook("tracking_pending_time", tag="Pending", checkpoints=[]),
        ])
        [parcel] = parcels(session)
        applied = {e.tag: e.applied for e in session.scalars(select(TrackingEvent))}
        promised = session.get(Order, order_id).promised_delivery
    assert result == counts(3, accepted=3)
    assert (parcel.status, parcel.status_at) == ("Pending", None)
    assert parcel.expected_delivery == date(2026, 11, 25)  # the carrier's estimate ...
    assert promised == date(2026, 11, 23)  # ... never our promise
    assert applied == {"InTransit": False, "Pending": False}


# ---------------------------------------------------------------- 2. quarantine release


def quarantine_one(session, kind: str, runtime) -> int:
    """One entry of `kind`, quarantined because what it names does not exist yet."""
    if kind == "shipment":
        ship(session, [fulfillment()], runtime.config)
    elif kind == "tracking_event":
        track(session, [webhook(slug="usps", tracking_number=NUMBER)])
    else:
        answer = {"order_external_id": ORDER_ID, "rating": 5,
                  "submitted_at": "2026-11-19T09:00:00Z"}
        ingest_feedback(session, [parse_feedback_line(json.dumps(answer), "t")], LATER, runtime)
    return session.scalars(select(Quarantine.id).where(Quarantine.kind == kind)).one()


def released(engine, runtime, entry_id: int) -> str:
    with session_scope(engine) as session:
        return release(session, entry_id, LATER, rt=runtime).status


def test_release_works_for_shipments_and_feedback(sqlite_engine, runtime, now):
    with session_scope(sqlite_engine) as session:
        shipment = quarantine_one(session, "shipment", runtime)
        feedback = quarantine_one(session, "feedback", runtime)
    with session_scope(sqlite_engine) as session:
        early = release(session, shipment, LATER, rt=runtime)
    with session_scope(sqlite_engine) as session:
        entries = session.scalars(select(Quarantine.status)).all()
        order_id = confirmed_order(session, now)
    first = released(sqlite_engine, runtime, shipment)
    with session_scope(sqlite_engine) as session:
        session.execute(update(Order).where(Order.id == order_id).values(
            state="delivered", delivered_at=LATER - timedelta(days=1)))
    assert early.status == "still_rejected"  # the order is still unknown: nothing changes
    assert early.reasons == [{"field": "order_id", "reason": f"no such order: shopify/{ORDER_ID}"}]
    assert entries == ["open", "open"]
    assert (first, released(sqlite_engine, runtime, shipment)) == ("released", "already_released")
    assert released(sqlite_engine, runtime, feedback) == "released"
    with session_scope(sqlite_engine) as session:
        assert [p.order_id for p in parcels(session)] == [order_id]


@pytest.mark.slow  # the tracking-events quality gate loads Great Expectations (once per process)
def test_release_works_for_tracking_events(sqlite_engine, runtime, now):
    with session_scope(sqlite_engine) as session:
        entry = quarantine_one(session, "tracking_event", runtime)
        confirmed_order(session, now)
        ship(session, [fulfillment()], runtime.config)
    assert released(sqlite_engine, runtime, entry) == "released"
    with session_scope(sqlite_engine) as session:
        assert [e.applied for e in session.scalars(select(TrackingEvent))] == [True]
