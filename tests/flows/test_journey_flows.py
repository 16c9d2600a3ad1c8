"""The journey through real Prefect flows, on SQLite and PostgreSQL: ingest → confirmation mail."""

from __future__ import annotations

import email
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from flows.parameters import OrderJourneyRequest, SweepRequest
from infra.tooling.demo_data import demo_catalog
from tasks.intake import ingest_orders, ingest_products, read_orders, read_products
from tasks.store.db import session_scope
from tasks.store.models import Artifact, Message, Order, OrderEvent
from tests.conftest import FIXTURES


def ingest_fixtures(engine, now, tmp_path):
    """The demo catalog (it carries every SKU the Shopify fixture orders) and those orders."""
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in demo_catalog(7)))
    with session_scope(engine) as session:
        ingest_products(session, list(read_products(catalog)), now)
    with session_scope(engine) as session:
        return ingest_orders(session, list(read_orders(FIXTURES / "orders_shopify.jsonl")), now)


def counts(engine) -> dict[str, int]:
    with session_scope(engine) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Order, Message, Artifact, OrderEvent)
        }


def test_shopify_orders_journey_to_a_sent_confirmation(engine, flow_env, now, tmp_path):
    assert ingest_fixtures(engine, now, tmp_path).accepted == 3
    report = flow_env.sweep(SweepRequest(as_of=now))

    assert report["stages"]["confirm"]["advanced"] == 3
    assert report["messages"]["sent"] == 3
    assert report["output_checks"]["rows"] == 3 and report["output_checks"]["failed_rows"] == 0
    assert report["manifest"]["unexplained"] == 0
    with session_scope(engine) as session:
        order = session.scalars(select(Order).where(Order.external_id == "5432100001")).one()
        assert order.state == "confirmed" and order.promised_delivery is not None
        message = session.scalars(select(Message).where(Message.order_id == order.id)).one()
        assert (message.status, message.template) == ("sent", "confirmation")
        kinds = set(session.scalars(select(Artifact.kind).where(Artifact.order_id == order.id)))
    assert kinds == {"packing_slip", "invoice"}
    mail = email.message_from_bytes(flow_env.runtime().archive.get(message.artifact_ref))
    assert mail["To"] == "Ava Nguyen <ava.nguyen@example.com>"
    assert mail["Message-ID"] == message.message_id
    assert mail.get_content_type() == "multipart/alternative"


def test_rerunning_ingest_and_sweep_changes_nothing(engine, flow_env, now, tmp_path):
    ingest_fixtures(engine, now, tmp_path)
    flow_env.sweep(SweepRequest(as_of=now))
    before = counts(engine)

    again = ingest_fixtures(engine, now + timedelta(minutes=5), tmp_path)
    report = flow_env.sweep(SweepRequest(as_of=now + timedelta(minutes=5)))

    assert (again.accepted, again.duplicates) == (0, 3)
    assert all(s["advanced"] == 0 for s in report["stages"].values())
    assert report["messages"].get("sent", 0) == 0
    assert counts(engine) == before


def test_order_journey_advances_only_that_order(engine, flow_env, now, tmp_path):
    ingest_fixtures(engine, now, tmp_path)
    report = flow_env.order_journey(OrderJourneyRequest(order_id="5432100002", as_of=now))

    assert report["stages"]["confirm"]["advanced"] == 1
    with session_scope(engine) as session:
        states = dict(session.execute(select(Order.external_id, Order.state)).all())
    assert states == {"5432100001": "received", "5432100002": "confirmed",
                      "5432100003": "received"}


def journeys_events(prefix: str, timeout: float = 30) -> list[dict]:
    """Order events as the Prefect server stored them (its persister writes them in batches)."""
    import time

    from prefect import get_client

    body = {"filter": {"event": {"prefix": [prefix]}, "occurred": {
        "since": "2026-01-01T00:00:00Z", "until": "2027-12-31T00:00:00Z"}}, "limit": 50}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            found = client.request("POST", "/events/filter", json=body).json()["events"]
            if len(found) >= 3 or time.monotonic() > deadline:
                return found
            time.sleep(1)


@pytest.fixture
def every_event():
    """The operator chose `all` order events (the default is exceptions only)."""
    from prefect.variables import Variable

    Variable.set("journeys_prefect_events", "all", overwrite=True)
    yield
    Variable.unset("journeys_prefect_events")


def test_state_changes_reach_prefect_as_order_events(engine, flow_env, now, tmp_path, every_event):
    ingest_fixtures(engine, now, tmp_path)
    flow_env.sweep(SweepRequest(as_of=now))

    confirmed = journeys_events("journeys.order.confirmed")
    resources = sorted(e["resource"]["prefect.resource.id"] for e in confirmed)
    assert resources[-3:] == [f"journeys.order.543210000{n}" for n in (1, 2, 3)]
    assert {e["payload"]["from_state"] for e in confirmed} == {"packed"}
    assert not any("@" in json.dumps(e) for e in confirmed)  # no customer e-mail in events


def test_mail_goes_out_when_the_server_cannot_give_the_mail_slot(
        engine, flow_env, now, tmp_path, monkeypatch):
    # A 503 from the server on the slot can't be produced on demand: the one mock here.
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    def refuse(*args, **kwargs):
        raise ConcurrencySlotAcquisitionError("503 Service Unavailable")

    monkeypatch.setattr(flow_env, "concurrency", refuse)
    assert ingest_fixtures(engine, now, tmp_path).accepted == 3
    report = flow_env.sweep(SweepRequest(as_of=now))
    assert report["messages"]["sent"] == 3
