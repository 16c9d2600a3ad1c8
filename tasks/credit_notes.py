"""Credit notes: the document a refund produces, correcting an invoice that is never rewritten.

One credit note per refund, ever: `CreditIn.key` is the refund's own effect key (a Shopify
refund `shopify-refund:{id}`, a service case `case:{id}:refund`, a return's refund). Numbers come
from a gapless series per store and year (`document_counters`, prefix `credit_note_prefix` in
configs/store.yaml, e.g. CN-2026-000001; tasks/numbering.py, shared with invoices): the counter
row is locked (PostgreSQL `FOR UPDATE`; SQLite's single writer already serialises) before the
keys are checked again, so a repeated key returns the note already issued and takes no number,
and two issuers never share one. A note names the invoice it corrects by that invoice's number
(tasks/invoices.py), or the order's display number for an order invoiced before numbering.

The database row is the truth. The document (configs/templates/documents/credit_note.html,
sandboxed like invoices) is rendered from the stored row and archived as a content-addressed
bundle under documents/ with an `artifacts` row (so archive reconcile and erasure know it); it is
written after the rows, in the same transaction. If the archive is down the note is still issued
with `document_ref` empty, and the next issuing call archives it (`archive_missing`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from tasks.archive import ArchiveError
from tasks.documents import document_context, documents_dir, render_document
from tasks.i18n import available_languages, locales_dir
from tasks.invoices import invoice_numbers
from tasks.messaging.money import format_money
from tasks.numbering import lock_series, series_prefix, take_numbers
from tasks.pack import member_folder
from tasks.runtime import Runtime
from tasks.store.db import is_postgres
from tasks.store.journal import insert_ignoring_duplicates, record_events
from tasks.store.models import Artifact, CreditNote, Order

log = logging.getLogger(__name__)

KIND = "credit_note"  # the document kind, the artifact kind and the timeline event kind
CATCH_UP = 200  # notes without a document archived per call, at most
ZERO = Decimal(0)


class CreditNoteError(ValueError):
    """A credit that cannot be issued; the message is one line for the operator."""


@dataclass(frozen=True)
class CreditIn:
    key: str  # the refund's own effect key (one credit note per refund, ever)
    order_id: int
    goods: Decimal  # goods refunded, before fees
    shipping: Decimal  # shipping refunded
    fees: Decimal  # restocking / return shipping kept back
    reason: str
    lines: list[dict] = field(default_factory=list)  # [{"sku","title","quantity","amount"}]
    return_id: int | None = None

    @property
    def total(self) -> Decimal:
        """What the customer gets back: goods + shipping − fees, never below zero."""
        return max(self.goods + self.shipping - self.fees, ZERO)


def issue_credit_notes(
    session: Session, credits: Sequence[CreditIn], now: datetime, rt: Runtime
) -> dict[str, CreditNote]:
    """key → credit note for every credit, issuing those not issued before (numbered in the
    order given); a known key returns its note and takes no number. The caller commits."""
    wanted = list({c.key: c for c in reversed(credits)}.values())[::-1]  # first per key
    for credit in wanted:
        check_credit(credit)
    notes = notes_by_key(session, [c.key for c in wanted])
    new = [c for c in wanted if c.key not in notes]
    if new:
        notes |= _issue(session, new, now, rt)
    archive_missing(session, now, rt)
    return notes


def check_credit(credit: CreditIn) -> None:
    if not credit.key or len(credit.key) > 200:
        raise CreditNoteError(f"credit note key must be 1-200 characters: {credit.key!r}")
    amounts = {"goods": credit.goods, "shipping": credit.shipping, "fees": credit.fees}
    for name, amount in amounts.items():
        if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
            raise CreditNoteError(f"credit {credit.key}: {name} must be a sum >= 0, not {amount}")


def notes_by_key(session: Session, keys: Sequence[str]) -> dict[str, CreditNote]:
    if not keys:
        return {}
    query = select(CreditNote).where(CreditNote.effect_key.in_(sorted(set(keys))))
    return {note.effect_key: note for note in session.scalars(query)}


def _issue(
    session: Session, credits: Sequence[CreditIn], now: datetime, rt: Runtime
) -> dict[str, CreditNote]:
    """Lock the series, drop keys a concurrent issuer took meanwhile, number and insert."""
    orders = _orders(session, {c.order_id for c in credits})
    store = rt.config.store
    series = series_prefix(store.credit_note_prefix, store.timezone, now)
    issued = lock_series(session, series)
    credits = [c for c in credits if c.key not in notes_by_key(session, [c.key for c in credits])]
    if not credits:
        return {}
    numbers = take_numbers(session, series, issued, len(credits))
    invoiced = invoice_numbers(session, list(orders.values()))
    notes = [_note(c, orders[c.order_id], number, invoiced[c.order_id], now)
             for c, number in zip(credits, numbers, strict=True)]
    session.add_all(notes)
    session.flush()
    record_events(session, [_event(note, now) for note in notes])
    return {note.effect_key: note for note in notes}


def _orders(session: Session, order_ids: set[int]) -> dict[int, Order]:
    query = select(Order).where(Order.id.in_(sorted(order_ids))).options(
        selectinload(Order.lines), selectinload(Order.customer))
    orders = {o.id: o for o in session.scalars(query)}
    missing = sorted(order_ids - set(orders))
    if missing:
        raise CreditNoteError(f"no order {', '.join(map(str, missing))} to credit")
    return orders


def _note(credit: CreditIn, order: Order, number: str, invoice_number: str, now: datetime
          ) -> CreditNote:
    return CreditNote(
        effect_key=credit.key, number=number, order_id=order.id, return_id=credit.return_id,
        invoice_number=invoice_number, currency=order.currency, goods=credit.goods,
        shipping=credit.shipping, fees=credit.fees, total=credit.total,
        reason=(credit.reason or "refund")[:200], lines=[_line(x) for x in credit.lines],
        issued_at=now, document_ref=None,
    )


def _line(line: dict[str, Any]) -> dict[str, Any]:
    return {"sku": line.get("sku") or "", "title": str(line.get("title") or ""),
            "quantity": int(line.get("quantity") or 0),
            "amount": str(Decimal(str(line.get("amount") or 0)))}


def _event(note: CreditNote, now: datetime) -> dict[str, Any]:
    return {"order_id": note.order_id, "at": now, "kind": KIND, "from_state": None,
            "to_state": None, "actor": "journeys",
            "detail": {"number": note.number, "total": str(note.total),
                       "currency": note.currency, "key": note.effect_key,
                       "invoice_number": note.invoice_number}}


# --- the document --------------------------------------------------------------------------


def archive_missing(session: Session, now: datetime, rt: Runtime) -> int:
    """Render and archive notes without a document (this call's, or left by an archive outage)
    as one bundle; returns how many. An archive failure leaves them for the next call."""
    query = (select(CreditNote).where(CreditNote.document_ref.is_(None))
             .order_by(CreditNote.id).limit(CATCH_UP))
    if is_postgres(session):  # a concurrent catch-up archives those it holds, we the rest
        query = query.with_for_update(skip_locked=True)
    notes = list(session.scalars(query))
    if not notes:
        return 0
    orders = _orders(session, {n.order_id for n in notes})
    rendered = {n.id: render_credit_note(n, orders[n.order_id], rt) for n in notes}
    members = {member_name(n, orders[n.order_id]): rendered[n.id] for n in notes}
    try:
        refs = rt.archive.put_bundle(bundle_key(members, now), members)
    except ArchiveError as exc:
        log.warning("credit notes not archived yet (next call retries): %s", exc)
        return 0
    for note in notes:
        note.document_ref = refs[member_name(note, orders[note.order_id])]
    insert_ignoring_duplicates(session, Artifact, [_artifact(n, rendered[n.id], now)
                                                   for n in notes], ["effect_key"])
    session.flush()
    return len(notes)


def member_name(note: CreditNote, order: Order) -> str:
    return f"{member_folder(order)}/{KIND}-{note.number}.html"


def bundle_key(members: dict[str, bytes], now: datetime) -> str:
    """Content-addressed: the same notes give the same key, so a rerun rewrites nothing."""
    fingerprint = "\n".join(f"{name}:{hashlib.sha256(data).hexdigest()}"
                            for name, data in sorted(members.items()))
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    return f"documents/{now:%Y/%m/%d}/credit-notes-{digest}.zip"


def _artifact(note: CreditNote, data: bytes, now: datetime) -> dict[str, Any]:
    return {"effect_key": f"{KIND}:{note.number}", "order_id": note.order_id, "kind": KIND,
            "ref": note.document_ref, "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data), "created_at": now}


def render_credit_note(note: CreditNote, order: Order, rt: Runtime) -> bytes:
    """The credit note's HTML, from the stored row only (a re-render gives the same bytes)."""
    store = rt.config.store
    context = document_context(order, {}, store, available_languages(locales_dir(rt.config.dir)))
    context["credit"] = credit_context(note, context["locale"], ZoneInfo(store.timezone))
    return render_document(documents_dir(rt.config), KIND, context).encode()


def credit_context(note: CreditNote, locale: str, zone: ZoneInfo) -> dict[str, Any]:
    def money(amount: Decimal) -> str:
        return format_money(amount, note.currency, locale)

    issued = note.issued_at.astimezone(zone).date()
    return {
        "number": note.number, "invoice_number": note.invoice_number, "reason": note.reason,
        "date": format_date(issued, format="long", locale=locale),
        "lines": [{**line, "amount": money(Decimal(line["amount"]))} for line in note.lines],
        "goods": money(note.goods), "shipping": money(note.shipping),
        "fees": money(-note.fees) if note.fees else None, "total": money(note.total),
    }


# --- reading -------------------------------------------------------------------------------


def credit_notes_of(session: Session, order_ids: Sequence[int]) -> dict[int, list[CreditNote]]:
    """Each order's credit notes, oldest first (order page, `journeys order`, the report)."""
    found: dict[int, list[CreditNote]] = defaultdict(list)
    if not order_ids:
        return found
    query = (select(CreditNote).where(CreditNote.order_id.in_(sorted(set(order_ids))))
             .order_by(CreditNote.id))
    for note in session.scalars(query):
        found[note.order_id].append(note)
    return found
