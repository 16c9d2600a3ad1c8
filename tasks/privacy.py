"""Erasing a customer on request (GDPR Art. 17, the "right to be forgotten").

What goes: the customer's name, e-mail, birthday and tags; on their orders the e-mail, the
shipping address (country and province stay, for tax and statistics), the gift note, note
attributes and line properties (the customer's own words); feedback comments; outbox recipients
and render contexts; quarantined raw records holding the address. Where free text may quote the
customer (timeline details, hold and step reasons, service notes, tracking scans, message
reasons), their own strings are replaced by a placeholder. The e-mail becomes a stable
pseudonym, ``erased-<customer id>@invalid``. What stays: ids, amounts, states, the loyalty
ledger (so it still balances) and hashes of old payloads (a resent record stays a duplicate);
also, as before issue 15, the buyer's note to the store and product reviews (their columns are
marked personal with ``erase: kept``, so the gap is visible and one word to close).

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

What is scrubbed in step 1 is not listed here: it is derived from the personal-data marks on
the models (``info={"personal": ..., "erase": ...}``, tasks/store/models.py) by
tasks/privacy_scrub.py, which also holds the few tables' hooks. Step 2 is tasks/privacy_archive.py.

An archive failure (say, an object already moved to GLACIER) leaves the database erased and
raises ErasureIncomplete; the next call resumes at step 2. Because the archive may only change
after the database has, this function commits as it goes: pass a session that is not inside
``session.begin()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from tasks.archive import ArchiveError
from tasks.messaging.governor import email_hash, email_hmac
from tasks.messaging.render import one_line
from tasks.messaging.unsubscribe import normalise
from tasks.privacy_archive import finish_archive, lock_erasures
from tasks.privacy_scrub import (
    UNSENT,
    Redactor,
    Scrubbed,
    Target,
    marks,
    pseudonym_for,
    scrub_customer_data,
)
from tasks.runtime import Runtime
from tasks.states import OrderState
from tasks.store.db import is_postgres
from tasks.store.journal import insert_ignoring_duplicates, record_events
from tasks.store.models import Customer, Erasure, Order, Suppression

# Strings in a shipping address that name or locate the customer: redacted wherever quoted.
NAME_FIELDS = ("name", "first_name", "last_name")
ADDRESS_TEXT_FIELDS = ("company", "address1", "address2", "zip", "phone")


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


def has_erasure(session: Session, subject: str) -> bool:
    query = select(func.count()).select_from(Erasure).where(Erasure.subject == subject)
    return bool(session.scalar(query))


# --- step 1: the database -------------------------------------------------------------------


def erase_records(
    session: Session, customer_id: int, address: str, subject: str, now: datetime,
    rt: Runtime, actor: str, outcome: ErasureOutcome,
) -> None:
    """Everything in the database, in the caller's transaction (committed by the caller)."""
    target = load_target(session, customer_id, address, now)
    outcome.customers += 1
    outcome.orders += len(target.order_ids)
    outcome.undelivered += count_undelivered(session, target.order_ids)
    count_scrubbed(outcome, scrub_customer_data(session, target))
    suppress_erased(session, [address, target.pseudonym], now, actor, rt.settings.secret_key)
    erasure_id = record_erasure(session, target, subject, actor, now, outcome)
    record_events(session, [
        {"order_id": oid, "at": now, "kind": "erasure", "from_state": None, "to_state": None,
         "actor": actor[:100], "detail": {"erasure_id": erasure_id}}
        for oid in target.order_ids
    ])


def count_scrubbed(outcome: ErasureOutcome, scrubbed: dict[str, Scrubbed]) -> None:
    """The outcome's figures: mail scrubbed and cancelled, timeline events changed, quarantine."""
    messages = scrubbed.get("messages", Scrubbed()).rows
    outcome.messages += len(messages)
    outcome.cancelled += sum(row.status in UNSENT for row in messages)
    outcome.events += scrubbed.get("order_events", Scrubbed()).changed
    outcome.quarantine += len(scrubbed.get("quarantine", Scrubbed()).rows)


def load_target(session: Session, customer_id: int, address: str, now: datetime) -> Target:
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
                  Redactor(strings, address, pseudonym), now)


def personal_strings(session: Session, customer_id: int, order_ids: Sequence[int]) -> set[str]:
    """Names (whole and word by word) and address lines, as the customer and orders hold them.

    The customer's names are its columns marked ``personal: name``."""
    table = Customer.__table__
    named = [table.c[c] for c, (kind, _) in marks(table).items() if kind == "name"]
    names = set(session.execute(select(*named).where(table.c.id == customer_id)).one())
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
        Order.state != OrderState.CANCELLED,
    )
    return int(session.scalar(query) or 0)


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


# --- steps 2 and 3: the archive (tasks/privacy_archive.py) --------------------------------


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
