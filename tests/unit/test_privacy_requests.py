"""Shopify's privacy webhooks through the inbox drain: export, redact, shop redact; SQLite + PG.

Bodies are Shopify's documented samples (tests/fixtures/real_privacy) with the seeded
customer's id and e-mail put in; the store is seeded as tests/unit/test_privacy.py seeds it
(two customers packed, confirmed and mailed in shared archive bundles).
"""

from __future__ import annotations

import json
import zipfile
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

import tasks.privacy_requests as privacy_requests
from tasks.archive import ArchiveError, FileStore
from tasks.inbox import Delivery, drain, store
from tasks.reporting import report
from tasks.store.db import session_scope
from tasks.store.models import (
    Base,
    Customer,
    Erasure,
    InboxDelivery,
    Order,
    OrderEvent,
    PrivacyRequest,
)
from tests.unit.test_privacy import EMAIL, seed, traces_in_archive, traces_in_database

SAMPLES = Path(__file__).parents[1] / "fixtures" / "real_privacy"
SHOP = "northwind.myshopify.com"
_delivery_ids = count(1)


def sample(name: str, **customer: Any) -> dict[str, Any]:
    body = json.loads((SAMPLES / f"{name}.json").read_text())
    body["shop_domain"] = SHOP
    if customer:
        body["customer"] = customer
    return body


def deliver(engine, now, topic: str, body: dict[str, Any], shop: str = SHOP) -> None:
    delivery = Delivery("shopify", topic, f"wh-{next(_delivery_ids)}", json.dumps(body).encode(),
                        shop=shop)
    with session_scope(engine) as session:
        store(session, [delivery], now)


def drained(engine, runtime, now) -> list[tuple[str, str, str | None]]:
    """One drain (the inbox shares the app database here): (topic, status, reason) per row."""
    drain(engine, engine, now, runtime)
    with session_scope(engine) as session:
        rows = session.execute(select(InboxDelivery.topic, InboxDelivery.status,
                                      InboxDelivery.reason).order_by(InboxDelivery.id))
        return [tuple(r) for r in rows]


def obligations(engine) -> list[PrivacyRequest]:
    with session_scope(engine) as session:
        return list(session.scalars(select(PrivacyRequest).order_by(PrivacyRequest.id)))


def unexpected(found: list[str]) -> list[str]:
    """Traces other than the inbox's raw bodies (the inbox's retention, not erasure's) and
    Shopify's customer id that the obligation keeps as given (the record of the request)."""
    kept = ("privacy_requests.shopify_customer_id: C-4242", "privacy_requests.request_key: C-4242")
    return [f for f in found if not f.startswith("inbox.") and f not in kept]


def archived_bodies(root: Path) -> list[bytes]:
    """Every archived object, and every member of each bundle."""
    bodies = []
    for path in (p for p in root.rglob("*") if p.is_file()):
        if path.suffix != ".zip":
            bodies.append(path.read_bytes())
            continue
        with zipfile.ZipFile(path) as bundle:
            bodies += [bundle.read(name) for name in bundle.namelist()]
    return bodies


GRACE = {"id": "C-4242", "email": EMAIL.upper(), "phone": "555-625-1199"}


@pytest.fixture
def seeded(engine, runtime, now) -> dict[str, Any]:
    return seed(engine, runtime, now)


def test_a_data_request_exports_the_customers_orders_and_ledger_and_no_one_elses(
        engine, runtime, now, seeded):
    deliver(engine, now, "customers/data_request", sample("customers__data_request", **GRACE))

    [(_, status, reason)] = drained(engine, runtime, now)

    [obligation] = obligations(engine)
    assert obligation.export_ref.endswith("privacy/exports/2026/11/18/9999.json")
    assert (status, reason) == ("processed", f"exported to {obligation.export_ref}")
    assert (obligation.completed_at, obligation.due_at) == (now, now + timedelta(days=30))
    assert obligation.subject and EMAIL not in json.dumps(obligation.counts)
    text = runtime.archive.get(obligation.export_ref).decode()
    export = json.loads(text)
    [customer] = export["customers"]
    with session_scope(engine) as session:
        mine = set(session.scalars(select(Order.external_id)
                                   .where(Order.id.in_(seeded["orders"]))))
        other = session.get(Order, seeded["other"])
        events = session.execute(select(OrderEvent.order_id, OrderEvent.detail)
                                 .where(OrderEvent.kind == "privacy_export")).all()
    assert (customer["email"], customer["external_id"]) == (EMAIL, "C-4242")
    assert {o["external_id"] for o in customer["orders"]} == mine
    assert sorted(e["points"] for e in customer["loyalty_ledger"]) == [-43, -5, 43, 43]
    assert all(o["lines"] and o["messages"] and o["documents"] for o in customer["orders"])
    assert customer["orders"][0]["shipments"][0]["tracking_events"][0]["tag"] == "Delivered"
    assert customer["orders"][0]["feedback"] and customer["orders"][0]["service_cases"]
    assert "bob@example.com" not in text and f'"{other.external_id}"' not in text
    assert sorted(oid for oid, _ in events) == sorted(seeded["orders"])
    assert {d["export"] for _, d in events} == {obligation.export_ref}
    assert drained(engine, runtime, now) == [(_, status, reason)]  # a redrain: nothing new


def test_redact_erases_the_customer_and_their_exports_and_a_rerun_changes_nothing(
        engine, runtime, now, seeded):
    deliver(engine, now, "customers/data_request", sample("customers__data_request", **GRACE))
    drained(engine, runtime, now)
    export_ref = obligations(engine)[0].export_ref
    deliver(engine, now, "customers/redact", sample("customers__redact", **GRACE))

    first = drained(engine, runtime, now)  # erased; the row waits for the archive's commit
    second = drained(engine, runtime, now)

    assert first[1][1:] == ("pending", "1 customers erased in the database; archive next")
    assert second[1][1:] == ("processed", "erased: 1 customers, 2 orders")
    exported, redacted = obligations(engine)
    assert (exported.export_ref, exported.note) == (
        None, "export deleted: the customer was erased since")
    with pytest.raises(ArchiveError, match="not found"):
        runtime.archive.get(export_ref)
    assert (redacted.completed_at, redacted.customer_ids) == (now, [seeded["customer"]])
    assert redacted.counts["orders"] == 2 and redacted.shopify_customer_id == "C-4242"
    with session_scope(engine) as session:
        assert unexpected(traces_in_database(session)) == []
        assert session.scalars(select(Erasure.completed_at)).all() == [now]
        before = {t.name: session.execute(select(t)).all() for t in Base.metadata.sorted_tables
                  if t.name != "inbox"}
    assert traces_in_archive(runtime.archive.root) == []
    files = sorted(Path(runtime.archive.root).rglob("*"))

    deliver(engine, now + timedelta(days=1), "customers/redact",
            sample("customers__redact", **GRACE))  # the same request again, a day later
    assert drained(engine, runtime, now + timedelta(days=1))[2][1:] == (
        "processed", "already erased: nothing held")
    with session_scope(engine) as session:
        after = {t.name: session.execute(select(t)).all() for t in Base.metadata.sorted_tables
                 if t.name not in ("inbox", "privacy_requests")}
    assert after == {k: v for k, v in before.items() if k != "privacy_requests"}
    assert sorted(Path(runtime.archive.root).rglob("*")) == files


def test_shop_redact_erases_every_customer_in_batches(engine, runtime, now, seeded,
                                                      monkeypatch):
    monkeypatch.setattr(privacy_requests, "SHOP_BATCH", 1)
    deliver(engine, now, "shop/redact", sample("shop__redact"))

    passes = [drained(engine, runtime, now)[0][1:] for _ in range(3)]

    assert passes[0] == ("pending", "shop erasure under way: 1 customers erased in this pass, "
                                    "more left")
    assert passes[1] == ("pending", "every customer erased in the database; archive next")
    assert passes[2] == ("processed", "erased: 2 customers, 3 orders")
    with session_scope(engine) as session:
        emails = set(session.scalars(select(Customer.email)))
        assert unexpected(traces_in_database(session)) == []
    assert emails == {f"erased-{seeded['customer']}@invalid",
                      f"erased-{seeded['other_customer']}@invalid"}
    assert traces_in_archive(runtime.archive.root) == []
    assert not any(b"bob@example.com" in body for body in archived_bodies(runtime.archive.root))


def test_open_obligations_show_their_deadline_and_an_archive_failure_is_resumed(
        engine, runtime, now, seeded, monkeypatch):
    def refuse(self, ref):
        raise ArchiveError(f"{ref}: simulated outage")

    monkeypatch.setattr(FileStore, "delete", refuse)
    deliver(engine, now, "customers/redact", sample("customers__redact__email_only",
                                                    email=EMAIL))
    for _ in range(2):
        [(_, status, reason)] = drained(engine, runtime, now)
    with session_scope(engine) as session:
        [(label, shown)] = report(session)["privacy_requests"].items()
    assert status == "pending" and reason.startswith("archive not finished, resumed at the next")
    assert label.startswith("#1 customers/redact") and shown["status"] == "open"
    assert shown["due"] == (now + timedelta(days=30)).isoformat()
    assert shown["note"].startswith("archive not finished") and "simulated outage" in shown[
        "note"]

    monkeypatch.undo()
    later = now + timedelta(hours=1)
    assert drained(engine, runtime, later)[0][1] == "pending"  # finished after this commit
    assert drained(engine, runtime, later)[0][1:] == ("processed", "erased: 1 customers, 2 orders")
    with session_scope(engine) as session:
        [shown] = report(session)["privacy_requests"].values()
    assert (shown["status"], shown["completed"]) == ("done", later.isoformat())
    assert traces_in_archive(runtime.archive.root) == []


def test_unknown_customers_and_broken_bodies_do_not_stop_the_drain(engine, runtime, now):
    nobody = {"id": 191167, "email": "john@example.com", "phone": "555-625-1199"}
    deliver(engine, now, "customers/redact", sample("customers__redact", **nobody))
    deliver(engine, now, "customers/redact", sample("customers__redact", phone="555-625-1199"))
    deliver(engine, now, "customers/data_request", {**sample("customers__data_request"),
                                                    "customer": "john@example.com"})
    deliver(engine, now, "shop/redact", sample("shop__redact"), shop="someone-else.myshopify.com")
    deliver(engine, now, "customers/data_request", sample("customers__data_request", **nobody))

    rows = drained(engine, runtime, now)

    assert [r[1:] for r in rows[:4]] == [
        ("processed", "no such customer: nothing held"),
        ("ignored", "customers/redact: no customer id and no e-mail"),
        ("ignored", "customers/data_request: no customer object"),
        ("ignored", f"shop/redact: shop_domain {SHOP} is not the shop that sent it "
                    "(someone-else.myshopify.com)")]
    assert rows[4][1] == "processed" and rows[4][2].startswith("no such customer: nothing held")
    redact, export = obligations(engine)
    assert (redact.completed_at, redact.shopify_customer_id) == (now, "191167")
    assert json.loads(runtime.archive.get(export.export_ref)) | {"request": None} == {
        "format": "journeys privacy export v1", "request": None, "nothing_held": True,
        "customers": []}


def test_migration_0006_matches_the_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert [d for d in diff if "privacy_requests" in str(d)] == []
