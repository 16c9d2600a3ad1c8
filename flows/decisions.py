"""Operator decisions in the Prefect UI: held orders and service cases, through typed forms.

One run shows one form for many items (a select per order or case), so a queue of holds costs
one paused process, not one per order. Every item defaults to "leave it as it is": if nobody
answers before the timeout, nothing changes and the timeline says the review expired. Who
decided, when, and why go into each order's timeline. A form submitted without a name changes
nothing: it is asked again, saying so, with the choices already made kept.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from tasks.intake.masking import mask_text
from tasks.store.db import session_scope
from tasks.store.journal import record_events
from tasks.store.models import Order
from tasks.store.queries import case_order_ids, held_orders_to_review, open_case_rows

SECONDS_PER_MINUTE = 60  # the unit of the timeout knob (tests shorten it)
GRACE_SECONDS = 300  # the server's pause deadline comes this much after ours
KEEP = "keep"


HoldDecision = Literal["keep", "release", "cancel"]  # one select per order: the form stays short
MISSING_NAME = ("**Nothing was changed: the form needs your name.** Enter it in \"Your name\" "
                "and submit again; the choices below are kept.\n\n")


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


def decision_form(name: str, items: list[Item], choice: Any, intro: str,
                  shared: dict[str, Any] | None = None,
                  per_item: dict[str, dict[str, Any]] | None = None) -> type[RunInput]:
    """A RunInput with the operator's name, `shared` fields, and one choice per item: a nested
    model (several fields per item), or a plain type such as a Literal (one select per item,
    the item's context in its title and description: the form stays short). `per_item`: more
    fields after an item's choice, by the item's field name."""
    fields: dict[str, Any] = {"operator": (str, Field(
        "", max_length=100, title="Your name",
        description="Required: kept with each decision (an order's timeline, an entry's "
                    "reasons)."))}
    fields |= shared or {}
    nested = isinstance(choice, type) and issubclass(choice, BaseModel)
    for item in items:
        default = {"default_factory": choice} if nested else {"default": KEEP}
        fields[item.field] = (choice, Field(title=item.label, description=item.detail,
                                            **default))
        fields |= (per_item or {}).get(item.field, {})
    form = create_model(name, __base__=RunInput, **fields)
    return form.with_initial_data(description=intro)


def operator_name(answer: RunInput) -> str:
    """The UI's text boxes accept newlines; a name in the timeline is one line."""
    return " ".join(answer.operator.split())[:100]


def wait_for_decisions(form: type[RunInput], minutes: int) -> RunInput | None:
    """Pause with the form until an operator submits it with their name; None once the
    deadline (`minutes` from now) passes.

    A form submitted without a name is asked again at once, its description saying why and
    the choices made kept, until the same deadline: no decision is ever recorded without a
    name, and the operator never sees a raw schema error.
    """
    deadline = time.monotonic() + minutes * SECONDS_PER_MINUTE
    intro = form._description if isinstance(form._description, str) else ""
    for attempt in itertools.count(1):
        answer = ask(form, deadline, f"decisions-{attempt}")
        if answer is None or operator_name(answer):
            return answer
        get_run_logger().warning("the form was submitted without a name: asking again")
        form = with_answers(form, answer, MISSING_NAME + intro)


def ask(form: type[RunInput], deadline: float, pause_key: str) -> RunInput | None:
    """One pause with the form until it is submitted or the deadline passes (then None).

    As `pause_flow_run(wait_for_input=...)` does, with one change: the server's own pause
    deadline is GRACE_SECONDS later than ours. Otherwise the server fails the paused run at the
    same moment (an alert, a Failed run in the UI) and refuses an answer given in that window.
    """
    run_id, form = flow_run.get_id(), run_input_subclass_from_type(form)
    seconds = max(deadline - time.monotonic(), 1)
    paused = Paused(timeout_seconds=int(seconds) + GRACE_SECONDS, reschedule=False,
                    pause_key=pause_key)
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    with get_client(sync_client=True) as client:
        if not propose_state_sync(client, paused, flow_run_id=run_id).is_paused():
            raise RuntimeError("the server refused to pause this run for the form")
        form.save(keyset)
        get_run_logger().info("waiting up to %.0f minutes for the form", seconds / 60)
        if answered_before(client, run_id, seconds):
            return form.load(keyset)
        client.set_flow_run_state(run_id, Running(message="review expired"), force=True)
    # An answer that arrived just before we took the run back still counts.
    return form.load(keyset) if read_flow_run_input(keyset["response"], run_id) else None


def with_answers(form: type[RunInput], answer: RunInput, description: str) -> type[RunInput]:
    """The same form, its fields defaulting to what was answered (the name stays empty)."""
    fields = {}
    for name, info in form.model_fields.items():
        if name != "operator":
            field = copy.copy(info)
            field.default, field.default_factory = getattr(answer, name), None
            fields[name] = (info.annotation, field)
    again = create_model(form.__name__, __base__=form, **fields)
    again._description = description
    return again


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


SHOWN_LINES = 3  # order lines named in an item; the rest are counted


def held_order_items(request: HoldReviewRequest, now: datetime) -> list[Item]:
    """The requested held orders, or the oldest ones, each with what a decision needs."""
    with session_scope(app_engine()) as session:
        orders = held_orders_to_review(session, request.order_ids, request.limit)
        return [hold_item(order, n, now) for n, order in enumerate(orders, start=1)]


def hold_item(order: Order, number: int, now: datetime) -> Item:
    """Title: number, total and age; description: the customer (masked), the items, why held.

    Prefect keeps a form's text beyond erasure's reach: names and the address are masked.
    """
    customer = order.customer
    who = " ".join(mask_text(n) for n in (customer.first_name, customer.last_name) if n)
    address = mask_text(order.email) if order.email else "no e-mail"
    orders_count = f", {customer.orders_count} orders" if customer.orders_count > 1 else ""
    label = (f"Order {order.name or order.external_id} · {order.total:,.2f} {order.currency} · "
             f"{age_text(now - order.placed_at)}")
    detail = (f"Customer {who or 'unnamed'} ({address}{orders_count}) · {lines_text(order)} · "
              f"held: {mask_emails(order.hold_reason or 'no reason recorded')}")
    return Item(order.id, label, detail, f"order_{number}")


def lines_text(order: Order) -> str:
    shown = [f"{line.quantity} × {line.title}" + (f" ({line.variant_title})"
                                                  if line.variant_title else "")
             for line in order.lines[:SHOWN_LINES]]
    more = len(order.lines) - SHOWN_LINES
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "no items"


def age_text(age: timedelta) -> str:
    """How long ago, in the largest whole unit: "3 days", "1 hour", "5 minutes"."""
    seconds = max(int(age.total_seconds()), 0)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return "just now"


def apply_hold_decisions(items: list[Item], answer: RunInput, now: datetime) -> dict[str, int]:
    """Release or cancel as decided; each order's own transaction-safe compare-and-set."""
    counts, changes = {"release": 0, "cancel": 0, KEEP: 0}, []
    with session_scope(app_engine()) as session:
        for item in items:
            decision: str = getattr(answer, item.field)
            if decision == KEEP:
                counts[KEEP] += 1
                continue
            applied = operations.decide_holds(session, [item.id], decision, now,
                                              operator_name(answer), answer.note, rt=runtime())
            counts[decision] += len(applied.outcome["orders"])
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
    items = held_order_items(request, datetime.now(UTC))
    minutes = timeout_minutes(request.timeout_minutes)
    if not items:
        return {"orders": 0}
    create_markdown_artifact(items_markdown("Held orders to decide", items, minutes),
                             key="review-holds", description="What the form below asks")
    intro = ("Decide each held order, oldest first: **release** continues it to packing, "
             "**cancel** stops it (the customer is told), **keep** leaves it on hold.")
    note = {"note": (str, Field("", max_length=500, title="Note", description=(
        "Why: kept in the timeline of each order you release or cancel.")))}
    form = decision_form("HeldOrdersReview", items, HoldDecision, intro, note)
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
