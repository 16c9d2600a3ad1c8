"""Erasure's archive step: bundles holding an erased customer's papers are written again.

A bundle holding the customer's documents or mails is written again with those members replaced
by a redaction note (the key is content-addressed, so a rerun writes the same object); one
transaction points every ref into the old bundle, of any order, at the new one and lists the old
object in ``stale_objects``; then the old object is deleted and taken off the list. Called by
tasks/privacy.py once the database part is committed, and by tasks/privacy_requests.py.
"""

from __future__ import annotations

import re
from collections import defaultdict
from itertools import chain
from typing import TYPE_CHECKING

from sqlalchemy import Table, delete, func, or_, select, update
from sqlalchemy.orm import Session

from tasks.archive import (
    ArtifactStore,
    bundle_bytes,
    bundle_members,
    sha256_hex,
    split_member_ref,
)
from tasks.privacy_scrub import pseudonym_for, update_rows
from tasks.store.db import is_postgres
from tasks.store.models import Artifact, CreditNote, Erasure, Message, Order, Return

if TYPE_CHECKING:
    from tasks.privacy import ErasureOutcome

ERASURE_LOCK = int.from_bytes(b"erasure!", "big")  # PostgreSQL advisory lock key
PRINT_BATCH = "print_batch"  # the artifact kind of a print batch's rows (tasks/print_batch.py)


def lock_erasures(session: Session) -> None:
    """One erasure at a time (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)."""
    if is_postgres(session):
        session.execute(select(func.pg_advisory_xact_lock(ERASURE_LOCK)))


def finish_archive(
    session: Session, erasure_id: int, customer_id: int, store: ArtifactStore,
    outcome: ErasureOutcome,
) -> None:
    """Delete what a crash left stale and the customer's return labels, then replace bundles
    until none holds the customer."""
    drop_return_labels(session, erasure_id, customer_id)
    drop_print_batches(session, erasure_id, customer_id)
    delete_stale(session, erasure_id, store, outcome)
    clean: set[str] = set()
    while (found := next_unredacted_bundle(session, customer_id, store, clean)) is not None:
        replace_bundle(session, erasure_id, *found, store)
        outcome.archive_rewritten += 1
        delete_stale(session, erasure_id, store, outcome)
    session.commit()


def drop_return_labels(session: Session, erasure_id: int, customer_id: int) -> None:
    """A return label carries the customer's address: its archived PDF joins the objects to
    delete (in the same transaction that forgets it), and a carrier's label URL is forgotten."""
    labelled = session.execute(select(Return.id, Return.label_ref).where(
        Return.customer_id == customer_id,
        or_(Return.label_ref.is_not(None), Return.label_url.is_not(None)))).all()
    if not labelled:
        return
    refs = [ref for _, ref in labelled if ref]
    stale = session.scalar(select(Erasure.stale_objects).where(Erasure.id == erasure_id)) or []
    session.execute(update(Erasure).where(Erasure.id == erasure_id)
                    .values(stale_objects=sorted(set(stale) | set(refs))))
    session.execute(update(Return).where(Return.id.in_([rid for rid, _ in labelled]))
                    .values(label_ref=None, label_url=None))
    session.commit()


def drop_print_batches(session: Session, erasure_id: int, customer_id: int) -> None:
    """A print batch (tasks/print_batch.py) is one plain PDF of many orders' packing slips: one
    holding the customer's joins the objects to delete, and its rows go in the same transaction.
    The orders' own PDFs are bundle members, rewritten like any other."""
    pseudonym = pseudonym_for(customer_id)
    orders = select(Order.id).where(or_(Order.customer_id == customer_id,
                                        Order.email == pseudonym))
    refs = set(session.scalars(select(Artifact.ref).where(
        Artifact.kind == PRINT_BATCH, Artifact.order_id.in_(orders))))
    if not refs:
        return
    stale = session.scalar(select(Erasure.stale_objects).where(Erasure.id == erasure_id)) or []
    session.execute(update(Erasure).where(Erasure.id == erasure_id)
                    .values(stale_objects=sorted(set(stale) | refs)))
    session.execute(delete(Artifact).where(Artifact.kind == PRINT_BATCH,
                                           Artifact.ref.in_(sorted(refs))))
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
    repoint(session, CreditNote.__table__, "document_ref", object_ref + "#", new_ref + "#")
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
