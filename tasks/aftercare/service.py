"""Service recovery: an operator decides a case (replacement, refund, keep with credit).

The decision resolves the case (compare-and-set), goes into the order's timeline with who
decided and why, queues the "service_outcome" e-mail (one per case) and releases a review
request that was held while the case was open. A `replacement` creates the replacement order
(tasks/replacements.py, key `case:{id}:replacement`: the lines the customer should have
received) and the e-mail links its order page. A refund is returned as `RefundInfo`;
`settle_case` passes it to the loyalty ledger's reversal and issues its credit note.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from tasks.aftercare import DECISIONS
from tasks.credit_notes import CreditIn, issue_credit_notes
from tasks.links import Purpose, link_url
from tasks.messaging.compose import base_context, order_mail, template_version
from tasks.messaging.outbox import enqueue
from tasks.replacements import (
    ReplacementRequest,
    create_replacements,
    replacement_ids,
    shipped_lines,
)
from tasks.runtime import Runtime
from tasks.states import CaseStatus
from tasks.store.journal import PENDING, record_events
from tasks.store.models import Order, ServiceCase, Step

TEMPLATE = "service_outcome"
OPEN, RESOLVED = CaseStatus.OPEN, CaseStatus.RESOLVED
REVIEW_STEP = "review_request"


class ServiceError(ValueError):
    """A decision that cannot be recorded; the message is one line for the operator."""


@dataclass(frozen=True)
class RefundInfo:
    """What the loyalty ledger needs to reverse the points an order earned."""

    order_id: int
    customer_id: int
    case_id: int
    amount: Decimal
    currency: str
    source_key: str  # a stable key for the reversal entry: case:{id}:refund


@dataclass(frozen=True)
class CaseOutcome:
    case_id: int
    order_id: int
    decision: str
    changed: bool  # False: the case had been decided already, nothing was done again
    refund: RefundInfo | None = None
    replacement_order_id: int | None = None  # the order a `replacement` decision created


def decide_case(
    session: Session, case_id: int, decision: str, actor: str, note: str | None,
    now: datetime, rt: Runtime, refund_amount: Decimal | None = None,
) -> CaseOutcome:
    """Resolve an open case with `decision`; deciding a resolved case again changes nothing."""
    if decision not in DECISIONS:
        raise ServiceError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
    case, order = _load_case(session, case_id)
    if case.status != OPEN:
        return _outcome(case, order, changed=False)
    amount = _refund_amount(order, decision, refund_amount)
    replacement = _replacement_request(case, order) if decision == "replacement" else None
    if not _resolve(session, case_id, decision, actor, note, amount, now):
        session.refresh(case)
        return _outcome(case, order, changed=False)
    session.refresh(case)
    record_events(session, [_decision_event(case, actor, note, now)])
    replacement_id = None
    if replacement is not None:
        replacement_id = create_replacements(session, [replacement], now, rt, actor)[
            replacement.key]
    enqueue(session, [outcome_message(case, order, rt, now, replacement_id)], now)
    release_held_reviews(session, order.id, now)
    return _outcome(case, order, changed=True, replacement_id=replacement_id)


def replacement_key(case_id: int) -> str:
    return f"case:{case_id}:replacement"


def _replacement_request(case: ServiceCase, order: Order) -> ReplacementRequest:
    """What the customer should have received: the kept units of the lines that ship."""
    lines = shipped_lines(order)
    if not lines:
        raise ServiceError(f"order {order.name or order.id} has nothing to ship again; "
                           "decide refund or keep_with_credit")
    return ReplacementRequest(order.id, replacement_key(case.id), lines,
                              f"service case {case.id}: {case.reason}"[:200])


def _load_case(session: Session, case_id: int) -> tuple[ServiceCase, Order]:
    row = session.execute(
        select(ServiceCase, Order)
        .join(Order, Order.id == ServiceCase.order_id)
        .where(ServiceCase.id == case_id)
        .options(selectinload(Order.customer), selectinload(Order.lines))
    ).first()
    if row is None:
        raise ServiceError(f"no service case {case_id}")
    return row[0], row[1]


def _refund_amount(order: Order, decision: str, amount: Decimal | None) -> Decimal | None:
    """The refund (default: the order total), checked against what the order cost."""
    if decision != "refund":
        if amount is not None:
            raise ServiceError("a refund amount is only allowed with the refund decision")
        return None
    amount = order.total if amount is None else Decimal(str(amount))
    if amount <= 0 or amount > order.total:
        raise ServiceError(f"refund amount must be > 0 and at most the order total {order.total}")
    return amount


def _resolve(
    session: Session, case_id: int, decision: str, actor: str, note: str | None,
    amount: Decimal | None, now: datetime,
) -> bool:
    """Compare-and-set: only an open case is resolved; False if someone else was first."""
    result = session.execute(
        update(ServiceCase)
        .where(ServiceCase.id == case_id, ServiceCase.status == OPEN)
        .values(status=RESOLVED, decision=decision, refund_amount=amount, decided_by=actor,
                note=note, decided_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _decision_event(
    case: ServiceCase, actor: str, note: str | None, now: datetime
) -> dict[str, Any]:
    detail = {"case_id": case.id, "decision": case.decision, "proposed": case.proposed,
              "note": note}
    if case.refund_amount is not None:
        detail["refund_amount"] = str(case.refund_amount)
    return {"order_id": case.order_id, "at": now, "kind": "decision", "from_state": None,
            "to_state": None, "actor": actor, "detail": detail}


def outcome_key(case: ServiceCase) -> str:
    return f"order:{case.order_id}:case:{case.id}:{TEMPLATE}"


def outcome_message(
    case: ServiceCase, order: Order, rt: Runtime, now: datetime,
    replacement_id: int | None = None,
) -> dict[str, Any]:
    """The customer's e-mail: what we decided (the operator's note stays internal) and, for a
    replacement, the link to the replacement's order page."""
    cfg = rt.config
    context = base_context(order, cfg)
    context["case"] = {
        "decision": case.decision, "reason": case.reason,
        "refund_amount": str(case.refund_amount) if case.refund_amount is not None else None,
    }
    context["replacement"] = None if replacement_id is None else {
        "order_id": replacement_id,
        "url": link_url(cfg.store.links_base_url, rt.settings.secret_key, Purpose.ORDER,
                        replacement_id, now)}
    key = f"{outcome_key(case)}:v{template_version(cfg, TEMPLATE)}"  # one per case
    return order_mail(cfg, order, "service", TEMPLATE, context, now, key=key, topic=None)


def release_held_reviews(session: Session, order_id: int, now: datetime) -> None:
    """Once no case is open on the order, a held review request is due right away."""
    still_open = session.scalar(
        select(func.count()).select_from(ServiceCase)
        .where(ServiceCase.order_id == order_id, ServiceCase.status == OPEN)
    )
    if still_open:
        return
    session.execute(
        update(Step)
        .where(Step.order_id == order_id, Step.name == REVIEW_STEP, Step.status == PENDING,
               Step.due_at > now)
        .values(due_at=now, reason=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def settle_case(
    session: Session, case_id: int, decision: str, actor: str, note: str | None,
    now: datetime, rt: Runtime, refund_amount: Decimal | None = None,
) -> CaseOutcome:
    """Decide a case and, for a refund, reverse the order's points exactly and issue its
    credit note (one transaction; both keyed by the case, so deciding again is a no-op)."""
    from tasks import loyalty

    outcome = decide_case(session, case_id, decision, actor, note, now, rt, refund_amount)
    if outcome.refund:
        refund = outcome.refund
        loyalty.reverse_refunds(
            session, [loyalty.Refund(refund.order_id, refund.amount, refund.source_key)], now, rt)
        issue_credit_notes(session, [CreditIn(
            refund.source_key, refund.order_id, refund.amount, Decimal(0), Decimal(0),
            f"service case {refund.case_id}", [])], now, rt)
    if outcome.decision == "replacement" and outcome.replacement_order_id is None:
        found = replacement_ids(session, [replacement_key(case_id)])
        outcome = replace(outcome, replacement_order_id=found.get(replacement_key(case_id)))
    return outcome


def _outcome(case: ServiceCase, order: Order, changed: bool,
             replacement_id: int | None = None) -> CaseOutcome:
    refund = None
    if case.decision == "refund" and case.refund_amount is not None:
        refund = RefundInfo(order.id, order.customer_id, case.id, case.refund_amount,
                            order.currency, f"case:{case.id}:refund")
    return CaseOutcome(case.id, case.order_id, case.decision, changed, refund, replacement_id)


def open_cases(session: Session) -> list[dict[str, Any]]:
    """Open cases, oldest first, with the order's display number and e-mail (for the CLI)."""
    rows = session.execute(
        select(ServiceCase, Order.name, Order.external_id, Order.email)
        .join(Order, Order.id == ServiceCase.order_id)
        .where(ServiceCase.status == OPEN)
        .order_by(ServiceCase.opened_at, ServiceCase.id)
    )
    return [
        {"id": case.id, "order_id": case.order_id, "order": name or f"#{external_id}",
         "email": email, "reason": case.reason, "proposed": case.proposed,
         "opened_at": case.opened_at}
        for case, name, external_id, email in rows
    ]
