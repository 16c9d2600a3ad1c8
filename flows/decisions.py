"""Operator decisions in the Prefect UI: held orders and service cases, through typed forms.

One run shows one form for many items (a select per order or case), so a queue of holds costs
one paused process, not one per order. Every item defaults to "leave it as it is": if nobody
answers before the timeout, nothing changes and the timeline says the review expired. Who
decided, when, and why go into each order's timeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput, keyset_from_paused_state
from prefect.input.actions import read_flow_run_input
from prefect.input.run_input import run_input_subclass_from_type
from prefect.runtime import flow_run
from prefect.states import Paused, Running
from prefect.utilities.engine import propose_state_sync
from pydantic import BaseModel, Field, create_model

from flows.common import app_engine, knob, runtime
from flows.order_events import emit_state_changes
from flows.parameters import CaseReviewRequest, HoldReviewRequest, ReturnReviewRequest
from flows.reporting import mask_emails, md_cell
from tasks import operations
from tasks.aftercare.service import ServiceError
from tasks.store.db import session_scope
from tasks.store.journal import ON_HOLD, record_events
from tasks.store.queries import case_order_ids, find_order, held_orders, open_case_rows

SECONDS_PER_MINUTE = 60  # the unit of the timeout knob (tests shorten it)
GRACE_SECONDS = 300  # the server's pause deadline comes this much after ours
KEEP = "keep"


class HoldDecision(BaseModel):
    decision: Literal["keep", "release", "cancel"] = Field(KEEP, title="Decision", description=(
        "release: approve and continue to packing; cancel: stop the order; keep: decide later."))
    note: str = Field("", max_length=500, title="Note", description="Why (kept in the timeline).")


class CaseDecision(BaseModel):
    decision: Literal["keep", "replacement", "refund", "keep_with_credit"] = Field(
        KEEP, title="Decision", description="keep: leave the case open for now.")
    refund: Decimal | None = Field(None, ge=0, title="Refund amount", description=(
        "Refund only; empty refunds the order total."))
    note: str = Field("", max_length=500, title="Note", description="Why (kept in the timeline).")


@dataclass(frozen=True)
class Item:
    """One order or case in a form: its database id, what the operator sees, its field."""

    id: int
    label: str
    detail: str
    field: str


def decision_form(name: str, items: list[Item], choice: type[BaseModel], intro: str
                  ) -> type[RunInput]:
    """A RunInput with a required operator name and one nested choice per item."""
    fields: dict[str, Any] = {"operator": (str, Field(
        min_length=1, max_length=100, title="Your name",
        description="Recorded with each decision in the order's timeline."))}
    for item in items:
        fields[item.field] = (choice, Field(default_factory=choice, title=item.label,
                                            description=item.detail))
    form = create_model(name, __base__=RunInput, **fields)
    return form.with_initial_data(description=intro)


def operator_name(answer: RunInput) -> str:
    """The UI's text boxes accept newlines; a name in the timeline is one line."""
    return " ".join(answer.operator.split())[:100]


def wait_for_decisions(form: type[RunInput], minutes: int) -> RunInput | None:
    """Pause with the form until an operator submits it; None once our deadline passes.

    As `pause_flow_run(wait_for_input=...)` does, with one change: the server's own pause
    deadline is GRACE_SECONDS later than ours. Otherwise the server fails the paused run at the
    same moment (an alert, a Failed run in the UI) and refuses an answer given in that window.
    """
    run_id, form = flow_run.get_id(), run_input_subclass_from_type(form)
    paused = Paused(timeout_seconds=minutes * SECONDS_PER_MINUTE + GRACE_SECONDS,
                    reschedule=False, pause_key="decisions")
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    with get_client(sync_client=True) as client:
        if not propose_state_sync(client, paused, flow_run_id=run_id).is_paused():
            raise RuntimeError("the server refused to pause this run for the form")
        form.save(keyset)
        get_run_logger().info("waiting up to %s minutes for the form", minutes)
        if answered_before(client, run_id, minutes * SECONDS_PER_MINUTE):
            return form.load(keyset)
        client.set_flow_run_state(run_id, Running(message="review expired"), force=True)
    # An answer that arrived just before we took the run back still counts.
    return form.load(keyset) if read_flow_run_input(keyset["response"], run_id) else None


def answered_before(client, run_id, seconds: float, poll_seconds: float = 2.0) -> bool:
    """Whether the run was resumed (the form submitted) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0)))
        if client.read_flow_run(run_id).state.is_running():
            return True
    return False


def items_markdown(title: str, items: list[Item], minutes: int) -> str:
    lines = [f"# {title}", "", f"Waiting up to {minutes} minutes; anything left on *keep* "
             "stays as it is.", "", "| field | item | why |", "|---|---|---|"]
    lines += [f"| {i.field} | {md_cell(i.label)} | {md_cell(i.detail)} |" for i in items]
    return "\n".join(lines)


def timeout_minutes(requested: int | None) -> int:
    return requested or knob("journeys_decision_timeout_minutes", 240)


# --- held orders -------------------------------------------------------------------------------


def held_order_items(request: HoldReviewRequest) -> list[Item]:
    """The requested held orders, or the oldest ones; each with its hold reasons."""
    with session_scope(app_engine()) as session:
        if request.order_ids:
            orders = [find_order(session, oid) for oid in request.order_ids]
            orders = [o for o in orders if o.state == ON_HOLD]
        else:
            orders = held_orders(session, request.limit)
        return [Item(o.id, f"Order {o.name or o.external_id} ({o.total} {o.currency})",
                     mask_emails(o.hold_reason or ""), f"order_{n}")
                for n, o in enumerate(orders[:request.limit], start=1)]


def apply_hold_decisions(items: list[Item], answer: RunInput, now: datetime) -> dict[str, int]:
    """Release or cancel as decided; each order's own transaction-safe compare-and-set."""
    counts, changes = {"release": 0, "cancel": 0, KEEP: 0}, []
    with session_scope(app_engine()) as session:
        for item in items:
            choice: HoldDecision = getattr(answer, item.field)
            if choice.decision == KEEP:
                counts[KEEP] += 1
                continue
            applied = operations.decide_holds(session, [item.id], choice.decision, now,
                                              operator_name(answer), choice.note, rt=runtime())
            counts[choice.decision] += len(applied.outcome["orders"])
            changes += applied.changes
    emit_state_changes(changes)
    return counts


def record_expired(order_ids: list[int], what: str, minutes: int, now: datetime) -> None:
    """A review nobody answered is still a fact worth keeping in the timeline."""
    rows = [{"order_id": oid, "at": now, "kind": "review_expired", "from_state": None,
             "to_state": None, "actor": "journeys",
             "detail": {"note": f"no decision within {minutes} minutes; {what}"}}
            for oid in order_ids]
    with session_scope(app_engine()) as session:
        record_events(session, rows)


@flow(name="review-holds", log_prints=True)
def review_holds(request: HoldReviewRequest = HoldReviewRequest()) -> dict[str, Any]:  # noqa: B008
    """Show held orders in one form; release or cancel what the operator decides."""
    items, minutes = held_order_items(request), timeout_minutes(request.timeout_minutes)
    if not items:
        return {"orders": 0}
    create_markdown_artifact(items_markdown("Held orders to decide", items, minutes),
                             key="review-holds", description="What the form below asks")
    intro = ("Decide each held order: **release** continues it to packing, **cancel** stops it, "
             "**keep** leaves it on hold.")
    form = decision_form("HeldOrdersReview", items, HoldDecision, intro)
    answer = wait_for_decisions(form, minutes)
    now = datetime.now(UTC)  # a human decision happens on the real clock
    if answer is None:
        record_expired([i.id for i in items], "the order stays on hold", minutes, now)
        get_run_logger().warning("hold review expired after %s minutes", minutes)
        return {"orders": len(items), "expired": True}
    return {"orders": len(items), **apply_hold_decisions(items, answer, now)}


# --- service cases -----------------------------------------------------------------------------


def open_case_items(request: CaseReviewRequest) -> list[Item]:
    with session_scope(app_engine()) as session:
        rows = open_case_rows(session, request.case_ids, request.limit)
        return [Item(case.id, f"Case {case.id}, order {name or external_id}",
                     mask_emails(f"{case.reason}; proposed: {case.proposed}"), f"case_{case.id}")
                for case, name, external_id, _email in rows]


def apply_case_decisions(items: list[Item], answer: RunInput, now: datetime) -> dict[str, Any]:
    """Settle each decided case (refunds reverse points); a refused decision is reported."""
    counts: dict[str, Any] = {KEEP: 0, "decided": 0, "refused": []}
    for item in items:
        choice: CaseDecision = getattr(answer, item.field)
        if choice.decision == KEEP:
            counts[KEEP] += 1
            continue
        try:
            with session_scope(app_engine()) as session:
                applied = operations.decide_case(session, item.id, choice.decision, now,
                                                 runtime(), operator_name(answer), choice.note,
                                                 choice.refund)
            emit_state_changes(applied.changes)
            counts["decided"] += 1
        except ServiceError as refused:  # e.g. a refund above the order total
            counts["refused"].append(f"case {item.id}: {refused}")
    return counts


def items_order_ids(items: list[Item]) -> list[int]:
    with session_scope(app_engine()) as session:
        return case_order_ids(session, [i.id for i in items])


@flow(name="review-cases", log_prints=True)
def review_cases(request: CaseReviewRequest = CaseReviewRequest()) -> dict[str, Any]:  # noqa: B008
    """Show open service cases in one form; settle what the operator decides."""
    items, minutes = open_case_items(request), timeout_minutes(request.timeout_minutes)
    if not items:
        return {"cases": 0}
    create_markdown_artifact(items_markdown("Service cases to decide", items, minutes),
                             key="review-cases", description="What the form below asks")
    intro = ("Decide each case: **replacement**, **refund** (points are reversed exactly) or "
             "**keep_with_credit**; **keep** leaves it open.")
    answer = wait_for_decisions(decision_form("ServiceCasesReview", items, CaseDecision, intro),
                                minutes)
    now = datetime.now(UTC)
    if answer is None:
        record_expired(items_order_ids(items), "the case stays open", minutes, now)
        return {"cases": len(items), "expired": True}
    outcome = apply_case_decisions(items, answer, now)
    if outcome["refused"]:
        get_run_logger().warning("decisions refused: %s", outcome["refused"])
    return {"cases": len(items), **outcome}


# --- returns -----------------------------------------------------------------------------------


class ReturnDecision(BaseModel):
    decision: Literal["keep", "approve", "reject", "credit"] = Field(
        KEEP, title="Decision", description=(
            "approve: the customer gets the instructions; reject: refused, with the reason below; "
            "credit: the customer keeps the goods with store credit; keep: decide later."))
    message: str = Field("", max_length=500, title="Reason for the customer", description=(
        "Reject only (required then): what the customer reads."))
    note: str = Field("", max_length=500, title="Note", description="Internal: the timeline.")


def return_items(request: ReturnReviewRequest) -> list[Item]:
    """The requested returns asked for, or the oldest: order, customer (masked), items, value,
    reason and why the policy left each to an operator."""
    from tasks.store.queries import return_review_reasons, return_rows, returns_by_rma

    with session_scope(app_engine()) as session:
        rows = return_rows(session, "requested")
        if request.rmas:
            wanted = {r.id for r in returns_by_rma(session, request.rmas)}
            rows = [(ret, order) for ret, order in rows if ret.id in wanted]
        rows = rows[:request.limit]
        why = return_review_reasons(session, [order.id for _, order in rows])
        return [Item(ret.id, f"Return {ret.rma}, order {order.name or order.external_id} "
                     f"({ret.goods_value} {order.currency})",
                     mask_emails(return_detail(ret, order, why.get(ret.id))), f"return_{n}")
                for n, (ret, order) in enumerate(rows, start=1)]


def return_detail(ret, order, why: str | None) -> str:
    titles = {line.id: line.title for line in order.lines}
    items = ", ".join(f"{rl.quantity} × {titles.get(rl.order_line_id, 'item')}"
                      + (f" for {rl.exchange_sku}" if rl.exchange_sku else "")
                      for rl in ret.lines)
    return (f"customer {order.email or 'unknown'}; {items}; {ret.resolution}, reason "
            f"{ret.reason}; operator needed: {why or 'policy'}")


def apply_return_decisions(items: list[Item], answer: RunInput, now: datetime
                           ) -> dict[str, Any]:
    """Each decided return in its own transaction; a refused one (no reason) is reported."""
    counts: dict[str, Any] = {KEEP: 0, "decided": 0, "refused": []}
    for item in items:
        choice: ReturnDecision = getattr(answer, item.field)
        if choice.decision == KEEP:
            counts[KEEP] += 1
            continue
        try:
            with session_scope(app_engine()) as session:
                applied = operations.decide_returns(
                    session, [item.id], choice.decision, now, runtime(), operator_name(answer),
                    choice.note, choice.message)
            emit_state_changes(applied.changes)
            counts["decided"] += len(applied.outcome["returns"])
        except operations.OperationRefused as refused:
            counts["refused"].append(f"{item.label}: {refused}")
    return counts


def return_order_ids(items: list[Item]) -> list[int]:
    from sqlalchemy import select

    from tasks.store.models import Return

    with session_scope(app_engine()) as session:
        return sorted(set(session.scalars(select(Return.order_id).where(
            Return.id.in_([item.id for item in items])))))


@flow(name="returns-review", log_prints=True)
def review_returns(request: ReturnReviewRequest = ReturnReviewRequest()) -> dict[str, Any]:  # noqa: B008
    """Show requested returns in one form; approve, reject or credit what the operator decides."""
    items, minutes = return_items(request), timeout_minutes(request.timeout_minutes)
    if not items:
        return {"returns": 0}
    create_markdown_artifact(items_markdown("Returns to decide", items, minutes),
                             key="returns-review", description="What the form below asks")
    intro = ("Decide each return: **approve** (the customer gets the instructions), **reject** "
             "(give the reason the customer reads) or **credit** (they keep the goods with "
             "store credit); **keep** leaves it requested.")
    answer = wait_for_decisions(decision_form("ReturnsReview", items, ReturnDecision, intro),
                                minutes)
    now = datetime.now(UTC)
    if answer is None:
        record_expired(return_order_ids(items), "the return stays requested", minutes, now)
        return {"returns": len(items), "expired": True}
    outcome = apply_return_decisions(items, answer, now)
    if outcome["refused"]:
        get_run_logger().warning("decisions refused: %s", outcome["refused"])
    return {"returns": len(items), **outcome}
