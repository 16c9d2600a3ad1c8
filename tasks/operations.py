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
from tasks.intake.release import release
from tasks.messaging.unsubscribe import unsubscribe as suppress_link
from tasks.privacy import erase_customer as erase
from tasks.runtime import Runtime
from tasks.store.journal import ON_HOLD, take_state_changes
from tasks.store.queries import find_order
from tasks.verify import cancel_holds, release_holds

HOLD_DECISIONS = {"release": release_holds, "cancel": cancel_holds}


class OperationRefused(ValueError):
    """A decision that does not apply (e.g. the order is no longer on hold); one line."""


@dataclass(frozen=True)
class Applied:
    """What an operation did: its outcome, and the order state changes to notify."""

    outcome: dict[str, Any]
    changes: list[dict[str, Any]] = field(default_factory=list)


def decide_holds(
    session: Session, order_ids: list[int], decision: str, now: datetime, actor: str,
    note: str = "",
) -> Applied:
    """Release or cancel held orders; an order no longer on hold is left alone."""
    if decision not in HOLD_DECISIONS:
        raise OperationRefused(f"decision {decision!r}: expected release or cancel")
    done = HOLD_DECISIONS[decision](session, order_ids, now, actor=actor, note=note)
    return Applied({"decision": decision, "orders": done}, take_state_changes(session))


def decide_hold(
    session: Session, external_id: str, decision: str, now: datetime, actor: str,
    note: str = "",
) -> Applied:
    """One held order by its id or display name; refused unless it is on hold."""
    order = find_order(session, external_id)
    if order.state != ON_HOLD:
        raise OperationRefused(f"order {external_id} is {order.state}, not on hold")
    return decide_holds(session, [order.id], decision, now, actor, note)


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


def unsubscribe(
    session: Session, token: str, now: datetime, secret_key: str, source: str = "cli"
) -> Applied:
    """Suppress the address an unsubscribe link or token stands for (UnsubscribeError)."""
    address = suppress_link(session, token, now, source=source, secret_key=secret_key)
    return Applied({"address": address}, take_state_changes(session))
