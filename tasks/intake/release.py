"""Working the quarantine: release an entry (as it was, or corrected) back into intake.

Every kind the quarantine holds can be released: orders and products through their intake,
shipments, tracking events and feedback through the same writers files and webhooks use
(tasks/intake/writers.py), which need the runtime (config, settings).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tasks.intake.formats import IntakeError, read_orders, read_products
from tasks.intake.ingest import ingest_orders, ingest_products
from tasks.intake.schema import Rejected, sha256_text
from tasks.store.models import Order, Quarantine

if TYPE_CHECKING:
    from tasks.runtime import Runtime

READERS = {"order": (read_orders, ingest_orders), "product": (read_products, ingest_products)}
# Quarantine kind → the writers' kind of input, for kinds whose intake needs the runtime.
WRITER_KINDS = {"shipment": "shipments", "tracking_event": "events", "feedback": "feedback"}
KINDS = (*READERS, *WRITER_KINDS)


class QuarantineNotFound(LookupError):
    """No quarantine entry has that id."""


@dataclass
class ReleaseOutcome:
    """What happened: released, still_rejected (with reasons), dismissed, or for an entry
    settled before: already_released, already_dismissed, already_replaced (by a fix) or erased."""

    status: str
    reasons: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    replaced_by: int | None = None  # a refused fix: the entry now holding the corrected record


def get_entry(session: Session, entry_id: int) -> Quarantine:
    entry = session.get(Quarantine, entry_id)
    if entry is None:
        raise QuarantineNotFound(f"no quarantine entry {entry_id}")
    return entry


def release(
    session: Session, entry_id: int, now: datetime, fixed: Path | None = None,
    rt: Runtime | None = None,
) -> ReleaseOutcome:
    """Re-validate the record (or its corrected version) and feed it back into intake.

    The entry is marked released only when intake accepts the record; releasing twice is a
    no-op. A record that still fails stays in quarantine, and the reasons are returned.
    Shipments, tracking events and feedback need `rt` (their intake queues mail, reads config).
    """
    entry = get_entry(session, entry_id)
    if entry.status != "open":  # released, dismissed, replaced by a fix, or its customer erased
        return ReleaseOutcome(_settled(entry.status))
    if entry.kind not in KINDS:
        raise IntakeError(f"quarantine entry {entry.id}: kind {entry.kind!r} cannot be released")
    if entry.kind in WRITER_KINDS and rt is None:
        raise IntakeError(f"releasing a {entry.kind} needs the runtime (config and settings)")
    items = _read_record(entry, fixed)
    rejected = [item for item in items if isinstance(item, Rejected)]
    if not items:
        return ReleaseOutcome("still_rejected", [{"field": "_record", "reason": "no record"}])
    if rejected:
        return ReleaseOutcome("still_rejected", [r for item in rejected for r in item.reasons])
    if entry.kind in WRITER_KINDS:
        outcome = _write_checked(session, entry, items, now, rt)  # type: ignore[arg-type]
        if outcome.status == "still_rejected":
            return outcome
        counts = outcome.counts
    else:
        if entry.kind == "order" and (refused := _gate_reasons(items, now)):
            return ReleaseOutcome("still_rejected", refused)
        counts = READERS[entry.kind][1](session, items, now).as_dict()
        refused = _not_taken(session, items) if entry.kind == "order" else []
        if refused:
            return ReleaseOutcome("still_rejected", refused, counts)
    session.execute(
        update(Quarantine).where(Quarantine.id == entry.id, Quarantine.status == "open")
        .values(status="released", released_at=now)
    )
    return ReleaseOutcome("released", counts=counts)


def _read_record(entry: Quarantine, fixed: Path | None) -> list[Any]:
    """The corrected file, or the stored record, parsed by the ordinary auto-detecting reader."""
    reader = _reader(entry.kind)
    if fixed is not None:
        return list(reader(fixed, None))
    suffix = ".csv" if entry.source == "csv" else ".jsonl"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"quarantine-{entry.id}{suffix}"
        path.write_text(entry.payload.rstrip("\n") + "\n", encoding="utf-8")
        return list(reader(path, None))


def _reader(kind: str) -> Any:
    if kind in READERS:
        return READERS[kind][0]
    from tasks.intake.writers import read

    return lambda path, fmt: read(WRITER_KINDS[kind], path, fmt)


def _write_checked(
    session: Session, entry: Quarantine, items: list[Any], now: datetime, rt: Runtime
) -> ReleaseOutcome:
    """Feed the records to their writer; if it quarantines any again, undo it all.

    The entry's own fingerprint is moved aside meanwhile, so a record refused again (unknown
    parcel, order not confirmed yet, ...) lands as a new entry whose reasons we can read,
    instead of being taken for a duplicate of this one.
    """
    from tasks.intake.writers import write

    entry_id, fingerprint = entry.id, entry.fingerprint
    last_id = session.scalar(select(func.max(Quarantine.id))) or 0
    savepoint = session.begin_nested()
    _set_fingerprint(session, entry_id, sha256_text(f"releasing quarantine entry {entry_id}"))
    counts = write(WRITER_KINDS[entry.kind], session, items, now, rt, max_failure_rate=1.0)
    if counts.quarantined:
        query = select(Quarantine.reasons).where(Quarantine.id > last_id)
        reasons = [reason for found in session.scalars(query) for reason in found]
        savepoint.rollback()
        return ReleaseOutcome("still_rejected", reasons, counts.as_dict())
    _set_fingerprint(session, entry_id, fingerprint)
    savepoint.commit()
    return ReleaseOutcome("released", counts=counts.as_dict())


def _set_fingerprint(session: Session, entry_id: int, fingerprint: str) -> None:
    session.execute(update(Quarantine).where(Quarantine.id == entry_id)
                    .values(fingerprint=fingerprint).execution_options(synchronize_session=False))


def _gate_reasons(orders: list[Any], now: datetime) -> list[dict[str, Any]]:
    """The data-quality gate's reasons, checked before intake so nothing is re-quarantined."""
    from tasks.quality.gate import gate_orders

    _, refused, _ = gate_orders(orders, now, max_failure_rate=1.0)
    return [reason for _, reasons in refused for reason in reasons]


def _not_taken(session: Session, orders: list[Any]) -> list[dict[str, Any]]:
    """Reasons for each order intake did not store (it is stored iff its version is known)."""
    ids = [order.external_id for order in orders]
    stored = {
        (row.source, row.external_id): row
        for row in session.execute(
            select(Order.source, Order.external_id, Order.state, Order.payload_hash,
                   Order.previous_hashes).where(Order.external_id.in_(ids))
        )
    }
    reasons = []
    for order in orders:
        row = stored.get((order.source, order.external_id))
        if row and order.payload_hash() in (row.payload_hash, *row.previous_hashes):
            continue
        state = row.state if row else "missing"
        reasons.append({"field": "_record", "reason": f"not accepted: order is {state}; "
                        "changes after confirmation need an operator"})
    return reasons


# --- an operator's fix or dismissal -------------------------------------------------------------

FIXED_RECORD_LIMIT = 1_000_000  # characters: one record, however large an order gets


def fix(
    session: Session, entry_id: int, record: str, now: datetime, actor: str,
    rt: Runtime | None = None,
) -> ReleaseOutcome:
    """Re-validate an operator's corrected record and feed it in, as a release with a fixed
    file does. Refused again, nothing is lost: the corrected record becomes a quarantine entry
    of its own with the new reasons, and this entry is marked replaced by it (each entry keeps
    the record its fingerprint was taken from). The same fix twice lands on the same entry.
    """
    entry = get_entry(session, entry_id)
    if entry.status != "open":
        return ReleaseOutcome(_settled(entry.status))
    text = record.strip()
    if not text or len(text) > FIXED_RECORD_LIMIT:
        why = "is empty" if not text else f"is over {FIXED_RECORD_LIMIT:,} characters"
        return ReleaseOutcome("still_rejected", [{"field": "_record",
                                                  "reason": f"the corrected record {why}"}])
    suffix = ".csv" if entry.source == "csv" else ".jsonl"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"quarantine-{entry.id}-fixed{suffix}"
        path.write_text(text + "\n", encoding="utf-8")
        outcome = release(session, entry_id, now, path, rt)
    if outcome.status == "still_rejected" and sha256_text(text) != entry.fingerprint:
        outcome.replaced_by = _replace(session, entry, text, outcome.reasons, now, actor)
    return outcome


def dismiss(session: Session, entry_id: int, reason: str, now: datetime, actor: str
            ) -> ReleaseOutcome:
    """Drop an open entry for good (a test order, a record nobody will correct); who and why
    join its reasons. An entry already settled is left as it is."""
    entry = get_entry(session, entry_id)
    if entry.status != "open":
        return ReleaseOutcome(_settled(entry.status))
    note = {"field": "_dismissed", "reason": f"dismissed by {actor}: {reason}"}
    session.execute(update(Quarantine).where(Quarantine.id == entry.id,
                                             Quarantine.status == "open")
                    .values(status="dismissed", released_at=now,
                            reasons=[*entry.reasons, note]))
    return ReleaseOutcome("dismissed")


def _settled(status: str) -> str:
    return status if status == "erased" else f"already_{status}"


def _replace(session: Session, entry: Quarantine, text: str, reasons: list[dict[str, Any]],
             now: datetime, actor: str) -> int:
    """The corrected record as an open entry (found again if it is one already); `entry` is
    marked replaced by it."""
    from tasks.intake.ingest import quarantine_records

    fingerprint = sha256_text(text)
    origin = f"fix of quarantine entry {entry.id} by {actor}"[:500]
    quarantine_records(session, [Rejected(entry.kind, entry.source, text, reasons, origin,
                                          entry.external_id)], now)
    new_id = session.scalar(select(Quarantine.id).where(Quarantine.kind == entry.kind,
                                                        Quarantine.fingerprint == fingerprint))
    note = {"field": "_replaced", "reason": f"corrected by {actor}; still refused, the "
            f"corrected record is quarantine entry {new_id}"}
    session.execute(update(Quarantine).where(Quarantine.id == entry.id,
                                             Quarantine.status == "open")
                    .values(status="replaced", released_at=now, reasons=[*entry.reasons, note]))
    return new_id


__all__ = ["IntakeError", "QuarantineNotFound", "ReleaseOutcome", "dismiss", "fix", "get_entry",
           "release"]
