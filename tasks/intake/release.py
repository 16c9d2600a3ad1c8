"""Working the quarantine: release an entry (as it was, or corrected) back into intake."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tasks.intake.formats import IntakeError, read_orders, read_products
from tasks.intake.ingest import ingest_orders, ingest_products
from tasks.intake.schema import Rejected
from tasks.store.models import Order, Quarantine

READERS = {"order": (read_orders, ingest_orders), "product": (read_products, ingest_products)}


class QuarantineNotFound(LookupError):
    """No quarantine entry has that id."""


@dataclass
class ReleaseOutcome:
    """What happened: released, still_rejected (with reasons), already_released or erased."""

    status: str
    reasons: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def get_entry(session: Session, entry_id: int) -> Quarantine:
    entry = session.get(Quarantine, entry_id)
    if entry is None:
        raise QuarantineNotFound(f"no quarantine entry {entry_id}")
    return entry


def release(
    session: Session, entry_id: int, now: datetime, fixed: Path | None = None
) -> ReleaseOutcome:
    """Re-validate the record (or its corrected version) and feed it back into intake.

    The entry is marked released only when intake accepts the record; releasing twice is a
    no-op. A record that still fails stays in quarantine, and the reasons are returned.
    """
    entry = get_entry(session, entry_id)
    if entry.status == "released":
        return ReleaseOutcome("already_released")
    if entry.status == "erased":  # its customer was erased (tasks/privacy.py): nothing to feed
        return ReleaseOutcome("erased")
    items = _read_record(entry, fixed)
    rejected = [item for item in items if isinstance(item, Rejected)]
    if not items:
        return ReleaseOutcome("still_rejected", [{"field": "_record", "reason": "no record"}])
    if rejected:
        return ReleaseOutcome("still_rejected", [r for item in rejected for r in item.reasons])
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
    reader = READERS[entry.kind][0]
    if fixed is not None:
        return list(reader(fixed, None))
    suffix = ".csv" if entry.source == "csv" else ".jsonl"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"quarantine-{entry.id}{suffix}"
        path.write_text(entry.payload.rstrip("\n") + "\n", encoding="utf-8")
        return list(reader(path, None))


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


__all__ = ["IntakeError", "QuarantineNotFound", "ReleaseOutcome", "get_entry", "release"]
