"""Reading shipment and tracking-event files: Shopify, AfterShip and canonical records."""

from __future__ import annotations

from datetime import UTC, date, datetime

from tasks.intake.schema import Rejected
from tasks.tracking.formats import ShipmentIn, TrackingEventIn, read_events, read_shipments
from tests.conftest import FIXTURES


def test_shipments_from_fulfillments_orders_and_canonical_records():
    items = list(read_shipments(FIXTURES / "shipments_shopify.jsonl"))
    good = [i for i in items if isinstance(i, ShipmentIn)]
    bad = [i for i in items if isinstance(i, Rejected)]

    assert [(s.order_source, s.order_external_id, s.carrier, s.tracking_number) for s in good] == [
        ("shopify", "5001", "ups", "1Z999AA10123456784"),
        ("shopify", "5002", "usps", "9400100000000000000001"),
        ("shopify", "5002", "usps", "9400100000000000000002"),
        ("canonical", "MP-5003", "dhl", "JD014600006281230704"),
        ("shopify", "777777", "ups", "1Z999AA10000000000"),
        ("shopify", "5001", "ups", "1Z999AA19999999999"),  # cancelled: intake undoes, not here
    ]
    assert [s.status for s in good] == ["success"] * 5 + ["cancelled"]
    assert good[0].shipped_at == datetime(2026, 11, 18, 17, 30, tzinfo=UTC)
    assert good[3].shipped_at == datetime(2026, 11, 18, 7, 0, tzinfo=UTC)
    assert good[2].line_items == [{"sku": "COF-1", "title": "Coffee beans", "quantity": 2}]
    reasons = [r.reasons for r in bad]
    assert {r["field"] for r in reasons[0]} == {"tracking_number", "shipped_at"}
    assert reasons[1][0]["reason"].startswith("not valid JSON")
    assert all(r.kind == "shipment" and r.origin.startswith("shipments_shopify.jsonl:line ")
               for r in bad)


def test_events_from_aftership_webhooks_and_canonical_records():
    items = list(read_events(FIXTURES / "tracking_aftership.jsonl"))
    good = [i for i in items if isinstance(i, TrackingEventIn)]
    bad = [i for i in items if isinstance(i, Rejected)]

    first = good[0]
    assert (first.event_id, first.carrier, first.tag, first.subtag) == (
        "evt-001", "ups", "InTransit", "InTransit_007")
    assert first.occurred_at == datetime(2026, 11, 18, 14, 0, tzinfo=UTC)  # latest checkpoint
    assert first.location == "Portland, OR, USA"
    assert first.expected_delivery == date(2026, 11, 20)
    assert [e.event_id for e in good] == ["evt-001", "evt-001", "evt-002", "evt-003"]
    assert bad[0].reasons == [{"field": "tag",
                               "reason": "not an AfterShip status tag: 'Teleported'"}]
    assert bad[1].reasons == [{"field": "_record",
                               "reason": "unexpected structure: msg is not an object"}]
    assert bad[2].reasons[0]["reason"].startswith("not valid JSON")
    assert all(r.kind == "tracking_event" for r in bad)


def test_aftership_event_without_checkpoints_is_timed_by_ts(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"event_id": "e9", "ts": 1795000000, "msg": {"tracking_number": "T1", '
                    '"slug": "fedex", "tag": "OutForDelivery", "checkpoints": []}}\n')
    [event] = read_events(path)
    assert event.occurred_at == datetime.fromtimestamp(1795000000, tz=UTC)
    assert (event.carrier, event.tag) == ("fedex", "OutForDelivery")
