"""Credit notes (tasks/credit_notes.py): gapless numbers, one note per refund key, the archived
document naming the invoice it corrects; issued by Shopify refunds and by a case's refund."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select

from tasks import lifecycle
from tasks.aftercare.service import settle_case
from tasks.credit_notes import CreditIn, credit_notes_of, issue_credit_notes
from tasks.privacy import erase_customer
from tasks.store.db import session_factory, session_scope
from tasks.store.models import Artifact, CreditNote, DocumentCounter, OrderEvent, ServiceCase
from tests.factories import add_order
from tests.unit.test_lifecycle import bodies, ipod_order, real

D = Decimal


def counter(session) -> int:
    return session.scalar(select(DocumentCounter.issued)
                          .where(DocumentCounter.series == "CN-2026-"))


def test_numbers_are_gapless_per_key_and_every_refund_path_issues_one(engine, runtime, now):
    with session_scope(engine) as session:
        order = add_order(session, now, [("TEE-1", 2, "25.00")], state="delivered", step=None)
        order_id, invoice, email = order.id, order.name, order.email
    first = [CreditIn("return:1:refund", order_id, D("25.00"), D("5.00"), D("3.50"),
                      "return RMA-1", [{"sku": "TEE-1", "title": "Cotton tee", "quantity": 1,
                                        "amount": D("25.00")}], None),
             CreditIn("return:2:refund", order_id, D("2.00"), D("0"), D("4.00"), "fee > goods",
                      [])]
    with session_scope(engine) as session:
        notes = issue_credit_notes(session, first, now, runtime)
        issued = {k: (n.number, n.total, n.invoice_number) for k, n in notes.items()}
    assert issued == {"return:1:refund": ("CN-2026-000001", D("26.50"), invoice),
                      "return:2:refund": ("CN-2026-000002", D("0"), invoice)}

    # A rerun (with a new refund among them) takes a number only for the new one.
    third = CreditIn("return:3:refund", order_id, D("1.00"), D("0"), D("0"), "third", [])
    with session_scope(engine) as session:
        again = issue_credit_notes(session, [*first, third, first[0]], now + timedelta(1),
                                   runtime)
        assert {k: n.number for k, n in again.items()} == {
            "return:1:refund": "CN-2026-000001", "return:2:refund": "CN-2026-000002",
            "return:3:refund": "CN-2026-000003"}
        assert counter(session) == 3

    with session_scope(engine) as session:
        note = credit_notes_of(session, [order_id])[order_id][0]
        html = runtime.archive.get(note.document_ref).decode()
        artifact = session.scalar(select(Artifact).where(Artifact.kind == "credit_note",
                                                         Artifact.ref == note.document_ref))
        events = session.scalars(select(OrderEvent.detail).where(
            OrderEvent.order_id == order_id, OrderEvent.kind == "credit_note")).all()
    assert "Credit note CN-2026-000001" in html and f"Corrects invoice: {invoice}" in html
    assert "$26.50" in html and "-$3.50" in html and "Cotton tee" in html
    assert artifact is not None and artifact.order_id == order_id
    assert [e["number"] for e in events] == ["CN-2026-000001", "CN-2026-000002",
                                             "CN-2026-000003"]

    # Shopify's refunds/create: one note per refund id, however often it is delivered.
    refund = real("refunds__create", "sdk-refund-509562969-with-line-items")
    with session_scope(engine) as session:
        shop_order = ipod_order(session, now, placed_at=now - timedelta(days=5),
                                delivered_at=now)
        shop_id = shop_order.id
    for _ in range(2):
        with session_scope(engine) as session:
            lifecycle.on_refunds(session, bodies("refunds/create", refund, now=now), now,
                                 runtime)
    with session_scope(engine) as session:
        [shop_note] = credit_notes_of(session, [shop_id])[shop_id]
        assert (shop_note.effect_key, shop_note.number, shop_note.goods, shop_note.total) == (
            "shopify-refund:509562969", "CN-2026-000004", D("391.33"), D("391.33"))
        assert sorted(line["sku"] for line in shop_note.lines) == [
            "IPOD2008BLACK", "IPOD2008GREEN"]

    # A service case decided `refund`: one note keyed by the case.
    with session_scope(engine) as session:
        case = ServiceCase(effect_key=f"order:{order_id}:case:x", order_id=order_id,
                           reason="crushed", proposed="refund", opened_at=now)
        session.add(case)
        session.flush()
        case_id = case.id
    for _ in range(2):
        with session_scope(engine) as session:
            settle_case(session, case_id, "refund", "ops", None, now, runtime,
                        refund_amount=D("10.00"))
    with session_scope(engine) as session:
        case_note = session.scalar(select(CreditNote).where(
            CreditNote.effect_key == f"case:{case_id}:refund"))
        assert (case_note.number, case_note.total) == ("CN-2026-000005", D("10.00"))
        assert session.scalar(select(func.count()).select_from(CreditNote)) == 5
        assert counter(session) == 5

    # Erasure rewrites the bundle; the note's document_ref follows it like the artifact's ref.
    with session_factory(engine)() as session:
        erase_customer(session, email, now, runtime, "privacy officer")
    with session_scope(engine) as session:
        note = credit_notes_of(session, [order_id])[order_id][0]
        erased = runtime.archive.get(note.document_ref).decode()
        assert note.number == "CN-2026-000001" and "Erased at the customer's request" in erased
