"""Erasing a customer: database, suppression, outbox, archive bundles, reruns; SQLite and PG.

The erased customer's data is seeded through the real stages (pack, confirm, dispatch with the
file transport), so their documents and mails share archive bundles with another customer's.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, update

import tasks.privacy as privacy
import tasks.privacy_archive as privacy_archive
from tasks.archive import ArchiveError, FileStore, S3Store, split_member_ref
from tasks.confirm import confirm
from tasks.intake.release import release
from tasks.loyalty import balances, liability
from tasks.messaging.governor import email_hmac
from tasks.messaging.outbox import dispatch, enqueue
from tasks.messaging.unsubscribe import suppress
from tasks.pack import pack
from tasks.privacy import ErasureError, ErasureIncomplete, erase_customer
from tasks.privacy_scrub import Redactor
from tasks.store.db import session_factory, session_scope
from tasks.store.journal import record_events
from tasks.store.models import (
    Artifact,
    Base,
    Customer,
    Erasure,
    FeedbackResponse,
    LoyaltyEntry,
    Message,
    Order,
    OrderEvent,
    Quarantine,
    Return,
    ServiceCase,
    Shipment,
    Step,
    Suppression,
    TrackingEvent,
)
from tests.factories import add_catalog, add_customer, add_order
from tests.unit.test_governor import DAYTIME, row, use_recorder

EMAIL = "rear_admiral.g@example.com"
ADDRESS = {
    "name": "Grace Hopper", "address1": "17 Cobol Lane", "address2": "Suite 9",
    "city": "Arlington", "province_code": "VA", "zip": "22201", "country_code": "US",
    "phone": "+1 555 0100 777",
}
GIFT_NOTE = "Anchors aweigh, admiral!"
ENGRAVING = "To my dear Commodore"
COMMENT = "Box crushed, ring me on +1 555 0100 777"
# Everything that would identify the erased customer; none may survive anywhere.
TRACES = [EMAIL, "Grace", "Hopper", "17 Cobol Lane", "Suite 9", "22201", "555 0100 777",
          "Anchors aweigh", "Commodore", "Box crushed", "1906-12-09", "C-4242"]
ACTOR = "dpo@northwind.example"


# --- seeding --------------------------------------------------------------------------------


def add_erased_customer(session, now) -> tuple[Customer, list[int]]:
    """The customer to erase (two orders, one with a gift note and an engraving)."""
    customer = add_customer(session, now, EMAIL, first_name="Grace", birthday=date(1906, 12, 9),
                            birthday_captured_at=now, tags=["navy"], external_id="C-4242",
                            accepts_marketing=True)
    customer.last_name = "Hopper"
    lines = [("MUG-1", 1, "18.00"), ("TEE-1", 1, "25.00")]
    first = add_order(session, now, lines=lines, state="verified", step="pack", customer=customer,
                      email=EMAIL, shipping_address=dict(ADDRESS), gift_note=GIFT_NOTE,
                      note_attributes={"gift_message": GIFT_NOTE})
    first.lines[0].properties = {"engraving": ENGRAVING}
    second = add_order(session, now, state="verified", step="pack", customer=customer,
                       email=EMAIL, shipping_address=dict(ADDRESS))
    return customer, [first.id, second.id]


def add_records_around(session, now, order_id: int) -> None:
    """Feedback, a service case, a shipment scan, a timeline note, a hold reason, quarantine."""
    session.add_all([
        FeedbackResponse(source_key="fb:1", order_id=order_id, rating=2, comment=COMMENT,
                         tags=["damaged"], received_at=now),
        ServiceCase(effect_key="case:1", order_id=order_id, reason="damaged", proposed="refund",
                    note="Grace Hopper called, wants a refund", opened_at=now),
        Step(order_id=order_id, name="review_request", due_at=now, status="held",
             reason="held: open case for Grace Hopper", updated_at=now),
        Quarantine(kind="order", source="canonical", external_id="x1", fingerprint="f" * 64,
                   payload=json.dumps({"email": EMAIL.upper(), "name": "Grace Hopper"}),
                   reasons=[{"field": "total", "reason": "not a number"}], created_at=now),
    ])
    shipment = Shipment(order_id=order_id, carrier="ups", tracking_number="1Z999",
                        status="Delivered", shipped_at=now, created_at=now, updated_at=now)
    session.add(shipment)
    session.flush()
    session.add(TrackingEvent(event_id="ev1", shipment_id=shipment.id, tag="Delivered",
                              message="Delivered to GRACE HOPPER", location="17 Cobol Lane",
                              occurred_at=now, received_at=now, applied=True))
    record_events(session, [{"order_id": order_id, "at": now, "kind": "note", "actor": "ops",
                             "detail": {"note": "Grace asked to leave it at the door"}}])
    customer_id = session.get(Order, order_id).customer_id
    session.add(Return(rma="R-TESTRMA1", effect_key="return:1", order_id=order_id,
                       customer_id=customer_id, source="page", status="requested",
                       resolution="refund", reason="too_small",
                       comment="Grace Hopper: too small", decision_note="called Grace Hopper",
                       requested_at=now, goods_value=Decimal("10"), restocking_fee=Decimal(0),
                       shipping_fee=Decimal(0), updated_at=now))


def add_ledger(session, now, customer_id: int, order_id: int, other: tuple[int, int]) -> None:
    """Earned, approved and reversed points for the erased customer, earned for the other."""
    def entry(key, customer, order, kind, points, status):
        return LoyaltyEntry(source_key=key, customer_id=customer, order_id=order, kind=kind,
                            points=points, status=status, rule_version="v1",
                            basis=Decimal("43.00"), created_at=now)
    session.add_all([
        entry("e1", customer_id, order_id, "earn", 43, "pending"),
        entry("e2", customer_id, order_id, "approve", -43, "pending"),
        entry("e3", customer_id, order_id, "approve", 43, "approved"),
        entry("e4", customer_id, order_id, "reverse", -5, "approved"),
        entry("e5", *other, "earn", 30, "pending"),
    ])


@pytest.fixture
def seeded(engine, runtime, now) -> dict[str, Any]:
    return seed(engine, runtime, now)


def seed(engine, runtime, now) -> dict[str, Any]:
    """Two customers packed, confirmed and mailed in the same batches; one has much more."""
    with session_scope(engine) as session:
        add_catalog(session, now)
        customer, ids = add_erased_customer(session, now)
        other = add_order(session, now, state="verified", step="pack", email="bob@example.com")
        add_records_around(session, now, ids[0])
        label = runtime.archive.put("returns/labels/R-TESTRMA1/label.pdf",
                                    b"%PDF-1.4 Grace Hopper, 17 Cobol Lane", "application/pdf")
        session.execute(update(Return).values(label_ref=label))  # a label carries the address
        add_ledger(session, now, customer.id, ids[0], (other.customer_id, other.id))
        suppress(session, EMAIL, "unsubscribe", now, "link")
        seeded = {"customer": customer.id, "orders": ids, "other": other.id,
                  "other_customer": other.customer_id}
    all_ids = [*ids, other.id]
    with session_scope(engine) as session:
        pack(session, all_ids, now, runtime)
    with session_scope(engine) as session:
        confirm(session, all_ids, now, runtime)
    with session_scope(engine) as session:
        assert dispatch(session, now, runtime).sent == 3
        later = row(session.get(Customer, customer.id), now + timedelta(days=2))
        enqueue(session, [later | {"msg_class": "marketing", "order_id": ids[1]}], now)
    return seeded


def erase(engine, runtime, now, email=EMAIL):
    with session_factory(engine)() as session:
        return erase_customer(session, email, now, runtime, ACTOR)


# --- reading back ---------------------------------------------------------------------------


def table_rows(session) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, in primary-key order."""
    rows = {}
    for table in Base.metadata.sorted_tables:
        query = select(table).order_by(*table.primary_key.columns)
        rows[table.name] = [dict(r) for r in session.execute(query).mappings()]
    return rows


def traces_in_database(session) -> list[str]:
    """'table.column: trace' for every value (text and JSON alike) still holding a trace."""
    found = []
    for name, rows in table_rows(session).items():
        for values in rows:
            for column, value in values.items():
                text = json.dumps(value, default=str) if isinstance(value, dict | list) else (
                    str(value))
                found += [f"{name}.{column}: {t}" for t in TRACES if t.lower() in text.lower()]
    return found


def traces_in_archive(root: Path) -> list[str]:
    """'file[#member]: trace' for every archived object (and bundle member) holding a trace."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        parts = {path.name: data}
        if path.suffix == ".zip":
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                parts = {f"{path.name}#{n}": bundle.read(n) for n in bundle.namelist()}
        for name, body in parts.items():
            text = body.decode("utf-8", "replace").lower()
            found += [f"{name}: {t}" for t in TRACES if t.lower() in text]
    return found


def archived(session, store, order_id: int) -> dict[str, bytes]:
    """ref → content of every document and mail the database records for an order."""
    refs = list(session.scalars(select(Artifact.ref).where(Artifact.order_id == order_id)))
    refs += session.scalars(select(Message.artifact_ref).where(
        Message.order_id == order_id, Message.artifact_ref.is_not(None)))
    return {ref: store.get(ref) for ref in refs}


def bundle_objects(session) -> set[str]:
    refs = list(session.scalars(select(Artifact.ref)))
    refs += session.scalars(select(Message.artifact_ref).where(Message.artifact_ref.is_not(None)))
    return {split_member_ref(ref)[0] for ref in refs}


# --- the database ---------------------------------------------------------------------------


def test_erasure_leaves_no_trace_in_any_table(engine, runtime, now, seeded):
    with session_scope(engine) as session:
        assert traces_in_database(session)  # the scan does see them before
    outcome = erase(engine, runtime, now)

    assert (outcome.customers, outcome.orders, outcome.undelivered) == (1, 2, 2)
    assert (outcome.messages, outcome.cancelled, outcome.quarantine) == (3, 1, 1)
    assert outcome.events >= 1 and not outcome.already_erased
    with session_scope(engine) as session:
        assert traces_in_database(session) == []
        customer = session.get(Customer, seeded["customer"])
        order = session.get(Order, seeded["orders"][0])
        assert (customer.email, customer.first_name, customer.birthday, customer.tags) == (
            f"erased-{customer.id}@invalid", "Erased", None, [])
        assert order.email == customer.email and order.gift_note == "[erased]"
        assert order.shipping_address == {"name": "Erased", "country_code": "US",
                                          "province_code": "VA"}
        assert order.lines[0].properties == {"engraving": "[erased]"}
        entry_id = session.scalar(select(Quarantine.id))
        assert release(session, entry_id, now).status == "erased"


def test_ids_amounts_states_and_the_ledger_are_kept(engine, runtime, now, seeded):
    customers = [seeded["customer"], seeded["other_customer"]]

    def kept(session):
        orders = session.execute(select(Order.id, Order.state, Order.subtotal, Order.total,
                                        Order.customer_id).order_by(Order.id)).all()
        ledger = session.execute(select(LoyaltyEntry.id, LoyaltyEntry.points,
                                        LoyaltyEntry.status).order_by(LoyaltyEntry.id)).all()
        return orders, ledger, balances(session, customers), liability(session)

    with session_scope(engine) as session:
        before = kept(session)
    erase(engine, runtime, now)
    with session_scope(engine) as session:
        after = kept(session)
    assert after == before
    assert after[2][seeded["customer"]] == {"pending": 0, "approved": 38}


def test_pending_mail_is_cancelled_with_a_reason(engine, runtime, now, seeded):
    erase(engine, runtime, now)
    with session_scope(engine) as session:
        rows = session.execute(select(Message.status, Message.reason, Message.to_addr)
                               .where(Message.order_id.in_(seeded["orders"]))).all()
    pseudonym = f"erased-{seeded['customer']}@invalid"
    assert sorted((s, r) for s, r, _ in rows) == [
        ("cancelled", "cancelled: customer erased"), ("sent", None), ("sent", None)]
    assert {to for *_, to in rows} == {pseudonym}


def test_the_address_is_never_mailed_again_even_with_a_new_order(engine, runtime, now, seeded):
    erase(engine, runtime, now)
    recorder = use_recorder(runtime)
    with session_scope(engine) as session:
        again = add_customer(session, now, EMAIL, accepts_marketing=True)  # came back
        pseudonym = session.get(Customer, seeded["customer"]).email
        enqueue(session, [row(again, DAYTIME, "transactional"), row(again, DAYTIME),
                          row(None, DAYTIME, to_addr=" Rear_Admiral.G@Example.COM"),
                          row(None, DAYTIME, "transactional", to_addr=pseudonym)], now)
        result = dispatch(session, DAYTIME, runtime)
        reasons = set(session.scalars(select(Message.reason).where(Message.status == "skipped")))
        suppressions = session.execute(select(Suppression.email_hash, Suppression.email_hmac,
                                              Suppression.reason)).all()
    assert (result.skipped, result.sent, recorder.mails) == (4, 0, [])
    assert reasons == {"suppressed: erasure"}
    secret = runtime.settings.secret_key
    assert sorted(suppressions) == sorted(
        [(None, email_hmac(EMAIL, secret), "erasure"), (None, email_hmac(pseudonym, secret),
                                                        "erasure")])
    assert hashlib.sha256(EMAIL.encode()).hexdigest() not in {h for h, *_ in suppressions}


def test_each_order_gets_an_erasure_event_without_personal_data(engine, runtime, now, seeded):
    erase(engine, runtime, now)
    with session_scope(engine) as session:
        erasure = session.scalars(select(Erasure)).one()
        events = session.execute(select(OrderEvent.order_id, OrderEvent.at, OrderEvent.actor,
                                        OrderEvent.detail).where(OrderEvent.kind == "erasure")
                                 .order_by(OrderEvent.order_id)).all()
    assert events == [(oid, now, ACTOR, {"erasure_id": erasure.id}) for oid in seeded["orders"]]
    assert (erasure.actor, erasure.requested_at, erasure.completed_at) == (ACTOR, now, now)
    assert erasure.subject == email_hmac(EMAIL, runtime.settings.secret_key)
    assert erasure.counts["orders"] == 2 and erasure.stale_objects == []


def test_a_second_call_changes_nothing(engine, runtime, now, seeded):
    erase(engine, runtime, now)
    with session_scope(engine) as session:
        before = table_rows(session)
    files = sorted(Path(runtime.archive.root).rglob("*"))
    again = erase(engine, runtime, now + timedelta(hours=1), email=f" {EMAIL.upper()} ")
    with session_scope(engine) as session:
        assert table_rows(session) == before
    assert sorted(Path(runtime.archive.root).rglob("*")) == files
    assert again == privacy.ErasureOutcome(already_erased=True)


def test_an_unknown_address_is_a_one_line_error(engine, runtime, now, seeded):
    with pytest.raises(ErasureError, match=r"^no customer with that e-mail$"):
        erase(engine, runtime, now, email="nobody@example.com")
    with session_factory(engine)() as session, pytest.raises(ErasureError, match="actor"):
        erase_customer(session, EMAIL, now, runtime, " ")


def test_a_crash_inside_the_database_step_changes_nothing(engine, runtime, now, seeded,
                                                          monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("worker died")

    with session_scope(engine) as session:
        before = table_rows(session)
    monkeypatch.setattr(privacy, "record_erasure", crash)
    with pytest.raises(RuntimeError):
        erase(engine, runtime, now)
    with session_scope(engine) as session:
        assert table_rows(session) == before
    monkeypatch.undo()
    assert erase(engine, runtime, now).customers == 1


# --- the archive ----------------------------------------------------------------------------


def test_bundles_are_rewritten_and_other_orders_documents_kept(engine, runtime, now, seeded):
    store = runtime.archive
    with session_scope(engine) as session:
        others = archived(session, store, seeded["other"])
        old_objects = bundle_objects(session)
    assert len(others) == 3 and len(old_objects) == 2  # packing slip, invoice, mail; 2 bundles

    outcome = erase(engine, runtime, now)

    # two bundles rewritten; removed: the two old bundles and the return label
    assert (outcome.archive_rewritten, outcome.archive_removed) == (2, 3)
    with session_scope(engine) as session:
        now_others = archived(session, store, seeded["other"])
        mine = [archived(session, store, oid) for oid in seeded["orders"]]
        packing = session.get(Order, seeded["other"]).packing["documents"]
        notes = session.execute(select(Artifact.sha256, Artifact.size)
                                .where(Artifact.order_id == seeded["orders"][0])).all()
        assert bundle_objects(session).isdisjoint(old_objects)
    assert sorted(now_others.values()) == sorted(others.values())  # same bytes, new refs
    assert set(packing.values()) <= set(now_others)
    assert all(body.startswith(b"Erased at the customer's request")
               for docs in mine for body in docs.values())
    assert all(size < 100 for _, size in notes)
    assert not any(Path(ref.removeprefix("file://")).exists() for ref in old_objects)
    assert not any(Path(ref.removeprefix("file://") + ".sha256").exists() for ref in old_objects)
    assert traces_in_archive(store.root) == []


def test_a_rerun_deletes_what_a_crash_left_behind(engine, runtime, now, seeded, monkeypatch):
    """Crash after the refs moved to the new bundle but before the old one was deleted."""
    def refuse(self, ref):
        raise ArchiveError(f"{ref}: simulated outage")

    monkeypatch.setattr(FileStore, "delete", refuse)
    with pytest.raises(ErasureIncomplete, match="database erased, archive not finished"):
        erase(engine, runtime, now)
    with session_scope(engine) as session:
        erasure = session.scalars(select(Erasure)).one()
        # the return label, the first object to delete, is left for the rerun
        assert len(erasure.stale_objects) == 1 and erasure.completed_at is None
        assert traces_in_database(session) == []
    assert traces_in_archive(runtime.archive.root)
    monkeypatch.undo()

    outcome = erase(engine, runtime, now)

    assert outcome.already_erased and outcome.customers == 0
    # the label the crash left, then both bundles rewritten and their old objects removed
    assert (outcome.archive_rewritten, outcome.archive_removed) == (2, 3)
    assert traces_in_archive(runtime.archive.root) == []
    with session_scope(engine) as session:
        erasure = session.scalars(select(Erasure)).one()
        assert (erasure.stale_objects, erasure.completed_at) == ([], now)


def test_a_rerun_after_a_crash_before_the_refs_moved_writes_the_same_bundle(
    engine, runtime, now, seeded, monkeypatch
):
    """The rewritten bundle's key is content-addressed: the rerun's PUT is an idempotent one."""
    def crash(*args, **kwargs):
        raise ArchiveError("simulated crash after the PUT")

    monkeypatch.setattr(privacy_archive, "repoint_packing", crash)
    with pytest.raises(ErasureIncomplete):
        erase(engine, runtime, now)
    written = {p.name for p in Path(runtime.archive.root).rglob("*-r*.zip")}
    monkeypatch.undo()

    outcome = erase(engine, runtime, now)

    assert (outcome.archive_rewritten, outcome.archive_removed) == (2, 2)
    final = {p.name for p in Path(runtime.archive.root).rglob("*.zip")}
    assert len(written) == 1 and written <= final and len(final) == 2
    assert traces_in_archive(runtime.archive.root) == []


def test_bundles_on_s3_are_rewritten_and_the_old_objects_deleted(
    sqlite_engine, runtime, now, s3_server
):
    bucket = s3_server.create_bucket()
    store = S3Store(bucket, "journeys", s3_server.endpoint_url)
    runtime.archive = store
    ids = seed(sqlite_engine, runtime, now)
    with session_scope(sqlite_engine) as session:
        others = archived(session, store, ids["other"])
        old_objects = bundle_objects(session)

    outcome = erase(sqlite_engine, runtime, now)

    assert (outcome.archive_rewritten, outcome.archive_removed) == (2, 3)  # and the label
    with session_scope(sqlite_engine) as session:
        assert sorted(archived(session, store, ids["other"]).values()) == sorted(others.values())
    listed = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    keys = {f"s3://{bucket}/{o['Key']}" for o in listed}
    assert len(keys) == 2 and keys.isdisjoint(old_objects)


# --- pieces ---------------------------------------------------------------------------------


def test_redactor_replaces_whole_words_in_any_case_and_the_address_by_the_pseudonym():
    redact = Redactor(["Grace Hopper", "Grace", "Hopper", "22201", "x"], EMAIL, "erased-7@invalid")
    assert redact.text("Mail REAR_ADMIRAL.G@example.com re GRACE hopper, 22201-4000") == (
        "Mail erased-7@invalid re [erased], [erased]-4000")  # the longest match wins
    assert redact.text("Dear grace,") == "Dear [erased],"
    assert redact.text("Graceful hoppers in 122201") == "Graceful hoppers in 122201"
    assert redact.walk({"Grace": ["Hopper", 3, None]}) == {"[erased]": ["[erased]", 3, None]}


def test_migration_0004_matches_the_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert [d for d in diff if "erasures" in str(d) or "suppressions" in str(d)] == []
