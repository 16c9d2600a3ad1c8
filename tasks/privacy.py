"""Erasing a customer on request (GDPR Art. 17, the "right to be forgotten").

What goes: the customer's name, e-mail, birthday and tags; on their orders the e-mail, the
shipping address (country and province stay, for tax and statistics), the gift note, note
attributes and line properties (the customer's own words); feedback comments; outbox recipients
and render contexts; quarantined raw records holding the address. Where free text may quote the
customer (timeline details, hold and step reasons, service notes, tracking scans, message
reasons), their own strings are replaced by a placeholder. The e-mail becomes a stable
pseudonym, ``erased-<customer id>@invalid``. What stays: ids, amounts, states, the loyalty
ledger (so it still balances) and hashes of old payloads (a resent record stays a duplicate).

The address and its pseudonym are suppressed by HMAC-SHA256 under the secret key (reason
``erasure``, which stops transactional mail too), so the address is not mailed again even if
it comes back with a new order; pending and deferred mail is cancelled.

Order of operations; each step may be repeated, so a rerun finishes whatever a crash left:

1. Database, one transaction, committed: all of the above, an ``erasures`` row (no personal
   data) and an ``erasure`` event in each order's timeline. A crash before the commit changes
   nothing; after it, a rerun finds the erasure by the address's keyed hash.
2. Archive, one bundle at a time: a bundle holding the customer's documents or mails is written
   again with those members replaced by a redaction note (the key is content-addressed, so a
   rerun writes the same object); one transaction points every ref into the old bundle, of any
   order, at the new one and lists the old object in ``stale_objects``; then the old object is
   deleted and taken off the list.
3. When no bundle holds an unredacted member of the customer and nothing is stale, the erasure
   is complete, and another call is a no-op (``already_erased``).

An archive failure (say, an object already moved to GLACIER) leaves the database erased and
raises ErasureIncomplete; the next call resumes at step 2. Because the archive may only change
after the database has, this function commits as it goes: pass a session that is not inside
``session.begin()``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import chain
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from tasks.archive import (
    ArchiveError,
    ArtifactStore,
    bundle_bytes,
    bundle_members,
    sha256_hex,
    split_member_ref,
)
from tasks.messaging.governor import email_hash, email_hmac
from tasks.messaging.render import one_line
from tasks.messaging.unsubscribe import normalise
from tasks.runtime import Runtime
from tasks.store.db import is_postgres
from tasks.store.journal import insert_ignoring_duplicates, record_events
from tasks.store.models import (
    Artifact,
    Customer,
    Erasure,
    FeedbackResponse,
    Message,
    Order,
    OrderEvent,
    OrderLine,
    Quarantine,
    ServiceCase,
    Shipment,
    Step,
    Suppression,
    TrackingEvent,
)

ERASED_NAME = "Erased"
PLACEHOLDER = "[erased]"
KEPT_ADDRESS_FIELDS = ("country_code", "province_code")
NAME_FIELDS = ("name", "first_name", "last_name")
ADDRESS_TEXT_FIELDS = ("company", "address1", "address2", "zip", "phone")
CANCELLED = "cancelled"
CANCEL_REASON = "cancelled: customer erased"
QUARANTINE_NOTE = "[erased: this record held personal data of a customer erased on request]"
ERASURE_LOCK = int.from_bytes(b"erasure!", "big")  # PostgreSQL advisory lock key


class ErasureError(Exception):
    """An erasure that cannot be done; the message is one line the CLI can show."""


class ErasureIncomplete(ErasureError):
    """The database is erased but archive work is left; calling again finishes it."""

    def __init__(self, message: str, outcome: ErasureOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class ErasureOutcome:
    """What this call changed; all zeros with `already_erased` when it was done before."""

    customers: int = 0
    orders: int = 0
    undelivered: int = 0  # erased orders not yet delivered nor cancelled: tell the operator
    events: int = 0  # timeline events rewritten (the new erasure events not counted)
    messages: int = 0  # outbox rows scrubbed
    cancelled: int = 0  # of those, pending or deferred mail cancelled
    quarantine: int = 0  # quarantined raw records redacted
    archive_rewritten: int = 0  # bundles written again without the customer
    archive_removed: int = 0  # replaced bundles deleted
    already_erased: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """The customer being erased: who they were (in memory only) and what they become."""

    customer_id: int
    address: str
    pseudonym: str
    order_ids: list[int]
    redactor: Redactor


def pseudonym_for(customer_id: int) -> str:
    """Stable, unique, undeliverable (RFC 2606 `.invalid`) and reveals nothing of the address."""
    return f"erased-{customer_id}@invalid"


# --- the entry point ------------------------------------------------------------------------


def erase_customer(
    session: Session, email: str, now: datetime, rt: Runtime, actor: str
) -> ErasureOutcome:
    """Erase the customer with this e-mail everywhere we keep them; calling again is safe."""
    if not actor.strip():
        raise ErasureError("say who is erasing (actor): the audit trail records it")
    address = normalise(email)
    subject = email_hmac(address, rt.settings.secret_key)
    outcome = ErasureOutcome()
    lock_erasures(session)
    customer_ids = list(session.scalars(
        select(Customer.id).where(func.lower(Customer.email) == address).order_by(Customer.id)
    ))
    if not customer_ids and not has_erasure(session, subject):
        session.rollback()
        raise ErasureError("no customer with that e-mail")
    for customer_id in customer_ids:
        erase_records(session, customer_id, address, subject, now, rt, actor, outcome)
    outcome.already_erased = not customer_ids
    session.commit()
    finish_archives(session, subject, now, rt, outcome)
    return outcome


def lock_erasures(session: Session) -> None:
    """One erasure at a time (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)."""
    if is_postgres(session):
        session.execute(select(func.pg_advisory_xact_lock(ERASURE_LOCK)))


def has_erasure(session: Session, subject: str) -> bool:
    query = select(func.count()).select_from(Erasure).where(Erasure.subject == subject)
    return bool(session.scalar(query))


# --- step 1: the database -------------------------------------------------------------------


def erase_records(
    session: Session, customer_id: int, address: str, subject: str, now: datetime,
    rt: Runtime, actor: str, outcome: ErasureOutcome,
) -> None:
    """Everything in the database, in the caller's transaction (committed by the caller)."""
    target = load_target(session, customer_id, address)
    outcome.customers += 1
    outcome.orders += len(target.order_ids)
    outcome.undelivered += count_undelivered(session, target.order_ids)
    scrubbed, cancelled = scrub_messages(session, target)
    outcome.messages += scrubbed
    outcome.cancelled += cancelled
    anonymise_orders(session, target)
    outcome.events += redact_order_records(session, target)
    outcome.quarantine += redact_quarantine(session, target)
    anonymise_customer(session, customer_id, target.pseudonym, now)
    suppress_erased(session, [address, target.pseudonym], now, actor, rt.settings.secret_key)
    erasure_id = record_erasure(session, target, subject, actor, now, outcome)
    record_events(session, [
        {"order_id": oid, "at": now, "kind": "erasure", "from_state": None, "to_state": None,
         "actor": actor[:100], "detail": {"erasure_id": erasure_id}}
        for oid in target.order_ids
    ])


def load_target(session: Session, customer_id: int, address: str) -> Target:
    """Lock the customer's orders (a running stage finishes first) and gather their strings."""
    query = select(Order.id).where(
        or_(Order.customer_id == customer_id, func.lower(Order.email) == address)
    ).order_by(Order.id)
    if is_postgres(session):
        query = query.with_for_update(of=Order)
    order_ids = list(session.scalars(query))
    strings = personal_strings(session, customer_id, order_ids)
    pseudonym = pseudonym_for(customer_id)
    return Target(customer_id, address, pseudonym, order_ids,
                  Redactor(strings, address, pseudonym))


def personal_strings(session: Session, customer_id: int, order_ids: Sequence[int]) -> set[str]:
    """Names (whole and word by word) and address lines, as the customer and orders hold them."""
    names = set(session.execute(
        select(Customer.first_name, Customer.last_name).where(Customer.id == customer_id)
    ).one())
    lines: set[Any] = set()
    addresses = session.scalars(select(Order.shipping_address).where(Order.id.in_(order_ids)))
    for shipping in addresses:
        names |= {(shipping or {}).get(field) for field in NAME_FIELDS}
        lines |= {(shipping or {}).get(field) for field in ADDRESS_TEXT_FIELDS}
    words = {word for name in names if isinstance(name, str) for word in name.split()}
    return {str(s).strip() for s in names | lines | words if s and str(s).strip()}


def count_undelivered(session: Session, order_ids: Sequence[int]) -> int:
    query = select(func.count()).select_from(Order).where(
        Order.id.in_(order_ids), Order.delivered_at.is_(None), Order.cancelled_at.is_(None),
        Order.state != "cancelled",
    )
    return int(session.scalar(query) or 0)


class Redactor:
    """Replaces the customer's own strings (e-mail, names, street, phone) inside text or JSON."""

    def __init__(self, strings: Iterable[str], address: str, pseudonym: str) -> None:
        self.replacement = {s.lower(): PLACEHOLDER for s in strings if len(s) >= 2}
        self.replacement[address] = pseudonym
        alternatives = "|".join(map(re.escape, sorted(self.replacement, key=len, reverse=True)))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        # .get: a case-insensitive match may lower-case differently (e.g. a dotted capital I)
        return self.pattern.sub(
            lambda m: self.replacement.get(m.group(0).lower(), PLACEHOLDER), value
        )

    def walk(self, value: Any) -> Any:
        """The same JSON value with every string (keys too) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v) for v in value]
        return value


def update_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """One executemany UPDATE by id; each row is {"id": ..., column: value, ...}."""
    if not rows:
        return
    columns = [name for name in rows[0] if name != "id"]
    statement = update(table).where(table.c.id == bindparam("b_id")).values(
        {name: bindparam(f"b_{name}") for name in columns}
    )
    session.connection().execute(
        statement, [{f"b_{name}": value for name, value in row.items()} for row in rows]
    )


# Mail not sent yet: pending, or claimed by a dispatcher (`sending`; a dispatcher mid-send
# finds it cancelled and leaves it so; one whose lease ran out would have sent it again).
UNSENT = ("pending", "sending")


def scrub_messages(session: Session, target: Target) -> tuple[int, int]:
    """Recipient and context go; pending mail is cancelled. Returns (scrubbed, cancelled)."""
    table = Message.__table__
    query = select(table.c.id, table.c.status, table.c.reason).where(or_(
        table.c.customer_id == target.customer_id, table.c.order_id.in_(target.order_ids),
        func.lower(table.c.to_addr) == target.address,
    ))
    if is_postgres(session):
        query = query.with_for_update()  # waits for a dispatcher holding one of them
    rows = session.execute(query).all()
    unsent = {r.id for r in rows if r.status in UNSENT}
    update_rows(session, table, [
        {"id": r.id, "to_addr": target.pseudonym, "context": {"erased": True},
         "status": CANCELLED if r.id in unsent else r.status,
         "reason": CANCEL_REASON if r.id in unsent else target.redactor.text(r.reason)}
        for r in rows
    ])
    return len(rows), len(unsent)


def anonymise_orders(session: Session, target: Target) -> None:
    """Contact, address and the customer's own words; ids, amounts and states stay."""
    table, redact = Order.__table__, target.redactor
    query = select(table.c.id, table.c.shipping_address, table.c.gift_note,
                   table.c.note_attributes, table.c.tags, table.c.hold_reason, table.c.packing)
    rows = session.execute(query.where(table.c.id.in_(target.order_ids))).all()
    update_rows(session, table, [
        {"id": r.id, "email": target.pseudonym,
         "shipping_address": anonymous_address(r.shipping_address),
         "gift_note": PLACEHOLDER if r.gift_note else r.gift_note,
         "note_attributes": dict.fromkeys(r.note_attributes or {}, PLACEHOLDER),
         "tags": redact.walk(r.tags), "hold_reason": redact.text(r.hold_reason),
         "packing": redacted_packing(r.packing, redact)}
        for r in rows
    ])
    anonymise_lines(session, target.order_ids)


def anonymise_lines(session: Session, order_ids: Sequence[int]) -> None:
    """Line properties are what the customer typed (engravings, names); titles are the shop's."""
    table = OrderLine.__table__
    rows = session.execute(select(table.c.id, table.c.properties)
                           .where(table.c.order_id.in_(order_ids))).all()
    update_rows(session, table, [
        {"id": r.id, "properties": dict.fromkeys(r.properties or {}, PLACEHOLDER)} for r in rows
    ])


def redacted_packing(packing: dict[str, Any] | None, redact: Redactor) -> dict[str, Any] | None:
    """The plan's text redacted; its document refs kept as they are (the archive step's job)."""
    if not packing:
        return packing
    documents = packing.get("documents")
    plan = redact.walk({k: v for k, v in packing.items() if k != "documents"})
    return plan if documents is None else {**plan, "documents": documents}


def anonymous_address(address: dict[str, Any] | None) -> dict[str, Any]:
    """Country and province only (tax and statistics), and a name that says what happened."""
    if not address:
        return {}
    kept = {k: address[k] for k in KEPT_ADDRESS_FIELDS if address.get(k)}
    return {"name": ERASED_NAME, **kept}


def redact_order_records(session: Session, target: Target) -> int:
    """Free text of the orders' other records; returns how many timeline events changed."""
    ids, redact = target.order_ids, target.redactor
    shipments = select(Shipment.id).where(Shipment.order_id.in_(ids))
    changed_events = redact_columns(session, OrderEvent.__table__, ["detail"],
                                    OrderEvent.order_id.in_(ids), redact)
    redact_columns(session, Step.__table__, ["reason"], Step.order_id.in_(ids), redact)
    redact_columns(session, ServiceCase.__table__, ["reason", "note"],
                   ServiceCase.order_id.in_(ids), redact)
    redact_columns(session, Shipment.__table__, ["tracking_url", "line_items"],
                   Shipment.order_id.in_(ids), redact)
    redact_columns(session, TrackingEvent.__table__, ["message", "location"],
                   TrackingEvent.shipment_id.in_(shipments), redact)
    session.execute(
        update(FeedbackResponse).where(FeedbackResponse.order_id.in_(ids),
                                       FeedbackResponse.comment.is_not(None))
        .values(comment=PLACEHOLDER).execution_options(synchronize_session=False)
    )
    return changed_events


def redact_columns(
    session: Session, table: Table, columns: list[str], where: Any, redactor: Redactor
) -> int:
    """Redact text/JSON columns of the matching rows; returns how many rows changed."""
    rows = session.execute(select(table.c.id, *[table.c[c] for c in columns]).where(where)).all()
    changed = []
    for row in rows:
        values = {c: redactor.walk(getattr(row, c)) for c in columns}
        if any(values[c] != getattr(row, c) for c in columns):
            changed.append({"id": row.id, **values})
    update_rows(session, table, changed)
    return len(changed)


def redact_quarantine(session: Session, target: Target) -> int:
    """Raw records that carry the address: the payload goes, an open entry can't be released."""
    table = Quarantine.__table__
    rows = session.execute(
        select(table.c.id, table.c.status, table.c.reasons)
        .where(func.lower(table.c.payload).contains(target.address, autoescape=True))
    ).all()
    update_rows(session, table, [
        {"id": r.id, "payload": QUARANTINE_NOTE, "reasons": target.redactor.walk(r.reasons),
         "status": "erased" if r.status == "open" else r.status}
        for r in rows
    ])
    return len(rows)


def anonymise_customer(session: Session, customer_id: int, pseudonym: str, now: datetime) -> None:
    """The row stays (the ledger refers to it); everything that says who it was goes."""
    session.execute(
        update(Customer).where(Customer.id == customer_id).values(
            email=pseudonym, external_id=None, first_name=ERASED_NAME, last_name=None, tags=[],
            birthday=None, birthday_captured_at=None, accepts_marketing=False, updated_at=now,
        ).execution_options(synchronize_session=False)
    )


def suppress_erased(
    session: Session, addresses: Sequence[str], now: datetime, actor: str, secret_key: str
) -> None:
    """Keyed-hash suppressions replace any plain-hash ones (a plain sha256 can be reversed)."""
    table = Suppression.__table__
    session.execute(delete(table).where(table.c.email_hash.in_([email_hash(a) for a in addresses])))
    keys = [email_hmac(a, secret_key) for a in addresses]
    source = f"erasure by {actor}"[:100]
    insert_ignoring_duplicates(session, Suppression, [
        {"email_hash": None, "email_hmac": key, "reason": "erasure", "source": source,
         "created_at": now} for key in keys
    ], ["email_hmac"])
    session.execute(update(table).where(table.c.email_hmac.in_(keys)).values(reason="erasure"))


def record_erasure(
    session: Session, target: Target, subject: str, actor: str, now: datetime,
    outcome: ErasureOutcome,
) -> int:
    counts = {k: v for k, v in outcome.as_dict().items() if isinstance(v, int)
              and not isinstance(v, bool)}
    erasure = Erasure(subject=subject, customer_id=target.customer_id, actor=actor[:100],
                      requested_at=now, counts=counts, stale_objects=[])
    session.add(erasure)
    session.flush()
    return erasure.id


# --- steps 2 and 3: the archive --------------------------------------------------------------


def finish_archives(
    session: Session, subject: str, now: datetime, rt: Runtime, outcome: ErasureOutcome
) -> None:
    """Finish the archive work of every open erasure of this address, then mark it complete."""
    open_erasures = session.execute(
        select(Erasure.id, Erasure.customer_id)
        .where(Erasure.subject == subject, Erasure.completed_at.is_(None)).order_by(Erasure.id)
    ).all()
    session.commit()
    for erasure_id, customer_id in open_erasures:
        before = (outcome.archive_rewritten, outcome.archive_removed)
        try:
            finish_archive(session, erasure_id, customer_id, rt.archive, outcome)
        except ArchiveError as exc:
            session.rollback()
            raise ErasureIncomplete(one_line(
                f"database erased, archive not finished ({exc}); run the erasure again"
            ), outcome) from exc
        done = (outcome.archive_rewritten - before[0], outcome.archive_removed - before[1])
        mark_complete(session, erasure_id, now, done)


def finish_archive(
    session: Session, erasure_id: int, customer_id: int, store: ArtifactStore,
    outcome: ErasureOutcome,
) -> None:
    """Delete what a crash left stale, then replace bundles until none holds the customer."""
    delete_stale(session, erasure_id, store, outcome)
    clean: set[str] = set()
    while (found := next_unredacted_bundle(session, customer_id, store, clean)) is not None:
        replace_bundle(session, erasure_id, *found, store)
        outcome.archive_rewritten += 1
        delete_stale(session, erasure_id, store, outcome)
    session.commit()


def customer_members(session: Session, customer_id: int) -> dict[str, set[str]]:
    """object ref → names of the customer's members in that bundle, as the database refers."""
    pseudonym = pseudonym_for(customer_id)
    orders = select(Order.id).where(or_(Order.customer_id == customer_id,
                                        Order.email == pseudonym))
    documents = select(Artifact.ref).where(Artifact.order_id.in_(orders))
    mails = select(Message.artifact_ref).where(or_(
        Message.customer_id == customer_id, Message.order_id.in_(orders),
        Message.to_addr == pseudonym,
    ))
    grouped: dict[str, set[str]] = defaultdict(set)
    for ref in chain(session.scalars(documents), session.scalars(mails)):
        object_ref, member = split_member_ref(ref or "")
        if member and "://" in object_ref:
            grouped[object_ref].add(member)
    return grouped


def next_unredacted_bundle(
    session: Session, customer_id: int, store: ArtifactStore, clean: set[str]
) -> tuple[str, set[str], dict[str, bytes]] | None:
    """(object ref, customer's member names, all members) of a bundle still to rewrite.

    Leaves the transaction open, holding the erasure lock, for `replace_bundle` to commit.
    """
    lock_erasures(session)
    for object_ref, names in sorted(customer_members(session, customer_id).items()):
        if object_ref in clean:
            continue
        members = bundle_members(store.get(object_ref), object_ref)
        if all(members[n] == redaction_note(n) for n in names if n in members):
            clean.add(object_ref)
            continue
        return object_ref, names, members
    return None


def redaction_note(member: str) -> bytes:
    """What replaces an erased member: the same for every rerun, so bundle keys repeat."""
    return f"Erased at the customer's request: {member}\n".encode()


def replace_bundle(
    session: Session, erasure_id: int, object_ref: str, names: set[str],
    members: dict[str, bytes], store: ArtifactStore,
) -> None:
    """Write the redacted bundle, point every ref at it, list the old one as stale; commit."""
    redacted = {name: redaction_note(name) if name in names else data
                for name, data in members.items()}
    new_key = rewritten_key(store.key_of(object_ref), redacted)
    store.put_bundle(new_key, redacted)
    new_ref = store.ref_for(new_key)
    repoint_packing(session, object_ref + "#", new_ref + "#")
    repoint(session, Artifact.__table__, "ref", object_ref + "#", new_ref + "#")
    repoint(session, Message.__table__, "artifact_ref", object_ref + "#", new_ref + "#")
    record_redacted_artifacts(session, new_ref + "#", names)
    stale = session.scalar(select(Erasure.stale_objects).where(Erasure.id == erasure_id)) or []
    session.execute(update(Erasure).where(Erasure.id == erasure_id)
                    .values(stale_objects=[*stale, object_ref]))
    session.commit()


def rewritten_key(old_key: str, members: dict[str, bytes]) -> str:
    """Beside the old bundle, named by the new content (an earlier rewrite's suffix replaced)."""
    folder, _, name = old_key.rpartition("/")
    stem = re.sub(r"(-r[0-9a-f]{16})?\.zip$", "", name)
    digest = sha256_hex(bundle_bytes(members))[:16]
    return f"{folder}/{stem}-r{digest}.zip" if folder else f"{stem}-r{digest}.zip"


def repoint(session: Session, table: Table, column: str, old: str, new: str) -> None:
    """Refs starting with `old` (a bundle ref and '#') start with `new` instead."""
    col = table.c[column]
    rows = session.execute(select(table.c.id, col).where(col.startswith(old, autoescape=True)))
    update_rows(session, table, [{"id": i, column: new + ref[len(old):]} for i, ref in rows])


def repoint_packing(session: Session, old: str, new: str) -> None:
    """The packing plans keep their documents' refs too (orders found through `artifacts`)."""
    orders = select(Artifact.order_id).where(Artifact.ref.startswith(old, autoescape=True))
    rows = session.execute(select(Order.id, Order.packing).where(Order.id.in_(orders))).all()
    update_rows(session, Order.__table__, [
        {"id": r.id, "packing": {**r.packing, "documents": {
            kind: new + ref[len(old):] if ref.startswith(old) else ref
            for kind, ref in (r.packing.get("documents") or {}).items()}}}
        for r in rows if r.packing
    ])


def record_redacted_artifacts(session: Session, prefix: str, names: set[str]) -> None:
    """The customer's artifact rows now describe the redaction note they point at."""
    table = Artifact.__table__
    rows = session.execute(select(table.c.id, table.c.ref)
                           .where(table.c.ref.startswith(prefix, autoescape=True))).all()
    notes = {r.id: redaction_note(r.ref[len(prefix):]) for r in rows
             if r.ref[len(prefix):] in names}
    update_rows(session, table, [{"id": i, "sha256": sha256_hex(note), "size": len(note)}
                                 for i, note in notes.items()])


def delete_stale(
    session: Session, erasure_id: int, store: ArtifactStore, outcome: ErasureOutcome
) -> None:
    """Delete replaced objects, then clear the list (a failed delete is retried next time)."""
    stale = session.scalar(select(Erasure.stale_objects).where(Erasure.id == erasure_id)) or []
    for ref in stale:
        store.delete(ref)
        outcome.archive_removed += 1
    if stale:
        session.execute(update(Erasure).where(Erasure.id == erasure_id).values(stale_objects=[]))
    session.commit()


def mark_complete(
    session: Session, erasure_id: int, now: datetime, done: tuple[int, int]
) -> None:
    """Add (rewritten, removed) to the erasure's counts and close it: nothing is left to do."""
    counts = dict(session.scalar(select(Erasure.counts).where(Erasure.id == erasure_id)) or {})
    for name, count in zip(("archive_rewritten", "archive_removed"), done, strict=True):
        counts[name] = counts.get(name, 0) + count
    session.execute(update(Erasure).where(Erasure.id == erasure_id)
                    .values(completed_at=now, counts=counts))
    session.commit()
