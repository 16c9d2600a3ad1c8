"""Operator decisions: one API for the `journeys` CLI and the Prefect review/operation flows.

Each operation works in the caller's session (erasure commits itself: the archive may only
change after the database has) and returns what it did: a small JSON-ready outcome and the
order state changes it recorded (timeline rows of kind `state`). The caller notifies those
after its transaction committed, so a hold cancelled from the CLI and one cancelled in the
review form announce the same `journeys.order.cancelled`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from tasks.aftercare.service import settle_case
from tasks.cancellation import cancel_by_operator, cancel_holds
from tasks.intake.release import release
from tasks.messaging.unsubscribe import unsubscribe as suppress_link
from tasks.privacy import erase_customer as erase
from tasks.runtime import Runtime
from tasks.store.journal import CANCELLED, ON_HOLD, take_state_changes
from tasks.store.queries import find_order
from tasks.verify import release_holds

HOLD_DECISIONS = ("release", "cancel")


class OperationRefused(ValueError):
    """A decision that does not apply (e.g. the order is no longer on hold); one line."""


@dataclass(frozen=True)
class Applied:
    """What an operation did: its outcome, and the order state changes to notify."""

    outcome: dict[str, Any]
    changes: list[dict[str, Any]] = field(default_factory=list)


def decide_holds(
    session: Session, order_ids: list[int], decision: str, now: datetime, actor: str,
    note: str = "", *, rt: Runtime,
) -> Applied:
    """Release or cancel held orders; an order no longer on hold is left alone. A cancel is
    a cancellation like any other (tasks/cancellation.py: the customer is told)."""
    if decision not in HOLD_DECISIONS:
        raise OperationRefused(f"decision {decision!r}: expected release or cancel")
    if decision == "cancel":
        done = cancel_holds(session, order_ids, now, rt, actor=actor, note=note)
    else:
        done = release_holds(session, order_ids, now, actor=actor, note=note)
    return Applied({"decision": decision, "orders": done}, take_state_changes(session))


def decide_hold(
    session: Session, external_id: str, decision: str, now: datetime, actor: str,
    note: str = "", *, rt: Runtime,
) -> Applied:
    """One held order by its id or display name; refused unless it is on hold."""
    order = find_order(session, external_id)
    if order.state != ON_HOLD:
        raise OperationRefused(f"order {external_id} is {order.state}, not on hold")
    return decide_holds(session, [order.id], decision, now, actor, note, rt=rt)


def decide_case(
    session: Session, case_id: int, decision: str, now: datetime, rt: Runtime, actor: str,
    note: str = "", refund: Decimal | None = None,
) -> Applied:
    """Settle a service case (a refund reverses the order's points); ServiceError if refused."""
    outcome = settle_case(session, case_id, decision, actor, note, now, rt,
                          refund_amount=refund)
    return Applied(asdict(outcome), take_state_changes(session))


def erase_customer(
    session: Session, email: str, now: datetime, rt: Runtime, actor: str
) -> Applied:
    """Anonymise a customer everywhere; commits itself (ErasureError if it cannot)."""
    outcome = erase(session, email, now, rt, actor=actor)
    return Applied(outcome.as_dict(), take_state_changes(session))


def release_quarantine(
    session: Session, entry_id: int, now: datetime, rt: Runtime, fixed: Path | None = None
) -> Applied:
    """Re-validate a quarantined record (or its corrected file) and feed it back in."""
    outcome = release(session, entry_id, now, fixed, rt=rt)
    return Applied({"entry": entry_id, **asdict(outcome)}, take_state_changes(session))


def fix_quarantine(
    session: Session, entry_id: int, record: str, now: datetime, rt: Runtime, actor: str,
    masked: bool = False,
) -> Applied:
    """Feed in an operator's corrected record (its text, as a file holds it); refused again, it
    stays quarantined as a new entry with the new reasons (`replaced_by`). `masked`: the text is
    an edit of the record as forms show it (tasks/intake/masking.py), and every value left as
    shown keeps its real value."""
    from tasks.intake.masking import EditRefused, unmask
    from tasks.intake.release import fix, get_entry

    entry = get_entry(session, entry_id)
    if masked and entry.status == "open":  # a settled entry is reported as such by `fix`
        try:
            record = unmask(record, entry.payload, entry.source)
        except EditRefused as refused:
            raise OperationRefused(f"quarantine entry {entry_id}: {refused}") from None
    outcome = fix(session, entry_id, record, now, actor, rt=rt)
    return Applied({"entry": entry_id, **asdict(outcome)}, take_state_changes(session))


def dismiss_quarantine(
    session: Session, entry_id: int, reason: str, now: datetime, actor: str
) -> Applied:
    """Drop a quarantine entry for good, saying why (kept with the entry's reasons)."""
    from tasks.intake.release import dismiss

    if not reason.strip():
        raise OperationRefused(f"say why quarantine entry {entry_id} is dismissed")
    outcome = dismiss(session, entry_id, " ".join(reason.split())[:300], now, actor)
    return Applied({"entry": entry_id, **asdict(outcome)})


def unsubscribe(
    session: Session, token: str, now: datetime, secret_key: str, source: str = "cli"
) -> Applied:
    """Suppress the address an unsubscribe link or token stands for (UnsubscribeError)."""
    address = suppress_link(session, token, now, source=source, secret_key=secret_key)
    return Applied({"address": address}, take_state_changes(session))


def cancel_order(
    session: Session, external_id: str, now: datetime, rt: Runtime, actor: str, reason: str,
) -> Applied:
    """Cancel any order not shipped yet (by its id or display name): stock, steps, unsent
    mail, points, the customer's mail; a shipped one becomes a return to sender. The outcome
    says that the payment must be voided or refunded in Shopify (journeys moves no money)."""
    if not reason.strip():
        raise OperationRefused("say why the order is cancelled (--reason)")
    order = find_order(session, external_id)
    if order.state == CANCELLED:
        raise OperationRefused(f"order {external_id} is already cancelled")
    outcome = cancel_by_operator(session, order, now, rt, actor, reason.strip()[:300])
    return Applied(outcome, take_state_changes(session))


# --- returns (tasks/returns/decisions.py) ------------------------------------------------------

RETURN_DECISIONS = ("approve", "reject", "credit")


def decide_returns(
    session: Session, return_ids: list[int], decision: str, now: datetime, rt: Runtime,
    actor: str, note: str = "", message: str = "",
) -> Applied:
    """Approve, reject (`message`: the reason the customer reads) or keep-with-credit requested
    returns; a return no longer requested is left alone (outcome: the ids decided now)."""
    from tasks.returns import decisions

    if decision not in RETURN_DECISIONS:
        raise OperationRefused(f"decision {decision!r}: expected approve, reject or credit")
    try:
        if decision == "approve":
            done = decisions.approve_returns(session, return_ids, actor, note, now, rt)
        elif decision == "reject":
            done = decisions.reject_returns(session, return_ids, actor, message, now, rt)
        else:
            done = decisions.keep_with_credit(session, return_ids, actor, note, now, rt)
    except decisions.DecisionRefused as refused:
        raise OperationRefused(str(refused)) from None
    return Applied({"decision": decision, "returns": done}, take_state_changes(session))


def attach_return_label(
    session: Session, return_id: int, now: datetime, rt: Runtime, actor: str,
    url: str | None = None, pdf: bytes | None = None,
) -> Applied:
    """Store an approved return's label (an https URL or a PDF, archived); the customer is
    told once per label."""
    from tasks.returns import decisions

    try:
        new = decisions.attach_label(session, return_id, now, rt, actor, url=url, pdf=pdf)
    except decisions.DecisionRefused as refused:
        raise OperationRefused(str(refused)) from None
    return Applied({"return": return_id, "label": "stored" if new else "unchanged"},
                   take_state_changes(session))


def receive_returns(
    session: Session, return_ids: list[int], now: datetime, rt: Runtime, actor: str
) -> Applied:
    """The parcels arrived: approved returns are received, then refunded or exchanged."""
    from tasks.returns import decisions

    counts = decisions.receive_returns(session, return_ids, now, rt, actor)
    return Applied(counts, take_state_changes(session))
