"""Shopify's returns/* webhook topics, through the edge's inbox (tasks/inbox.py ACTION_OF_TOPIC).

- returns/request: open the return (source "shopify", key `shopify-return:{id}`, external id
  Shopify's return id) for the order's line items it names; our policy decides whether it is
  approved at once or waits for an operator, as for any return.
- returns/approve: approve it (a return a merchant created in Shopify's admin arrives approved:
  opened approved).
- returns/decline: reject it; Shopify's decline note (else its reason) is what the customer reads.
- returns/close: Shopify closes a return once its items are processed: received, then refunded
  or exchanged here (a still-requested one is approved first).

Bodies are read defensively (tasks/lifecycle.py `Fields`): a body journeys cannot act on is
"ignored" with the field named, never an exception. A return or order not here yet waits
(inbox WAIT_LIMIT), as refunds do. Every action can run twice: opening is keyed, decisions are
compare-and-set. Shopify exchanges (`exchange_line_items`) are Shopify's to fulfil: ignored,
so no second replacement order is made here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.deliveries import Body, Outcome
from tasks.lifecycle import (
    ACTOR,
    IGNORED,
    PROCESSED,
    BadBody,
    Fields,
    in_order,
    is_count,
    load_orders,
    unknown_order,
)
from tasks.returns.decisions import (
    APPROVED,
    approve_returns,
    decide,
    receive_returns,
    reject_returns,
)
from tasks.returns.requests import ReturnRefused, ReturnRequest, open_returns, shopify_reason
from tasks.runtime import Runtime
from tasks.store.models import Order, Return

SOURCE = "shopify"
RETURN_GID = "gid://shopify/Return/"
LINE_NEEDS = "return_line_items: each needs fulfillment_line_item.line_item.id and a quantity > 0"


@dataclass(frozen=True)
class ReturnIn:
    """What a returns/* body says, as far as journeys uses it."""

    return_id: str
    order_id: str | None  # Shopify's order id (absent from some topics' bodies)
    lines: dict[str, int]  # Shopify line item id → units
    reason: str | None  # Shopify's return reason code of the first line that gives one
    comment: str | None  # the customer's note
    decline: str | None  # decline note, else reason (returns/decline)
    exchange: bool  # Shopify exchange line items present


def return_from_body(data: Mapping[str, Any]) -> ReturnIn:
    """A returns/* body; BadBody says what is off."""
    body = Fields(data)
    return_id = body.id("id") or gid_id(body.text("admin_graphql_api_id"))
    if return_id is None:
        raise BadBody("return without id")
    order = body.object("order")
    lines, reason, comment = read_lines(body)
    decline = body.object("decline")
    said = (decline.text("note") or decline.text("reason")) if decline else None
    return ReturnIn(return_id, (order.id("id") if order else None) or body.id("order_id"), lines,
                    reason, clean(comment, 2000), clean(said, 500),
                    bool(body.objects("exchange_line_items")))


def clean(text: str | None, limit: int) -> str | None:
    """Customer or merchant text as the store can hold it: one line, no NUL, no lone
    surrogate (PostgreSQL refuses both), at most `limit` characters."""
    if not text:
        return None
    text = " ".join(text.replace("\x00", " ").encode("utf-8", "replace").decode().split())
    return text[:limit] or None


def gid_id(gid: str | None) -> str | None:
    """gid://shopify/Return/123 → "123" (None for anything else)."""
    if gid and gid.startswith(RETURN_GID) and gid[len(RETURN_GID):].isdigit():
        return Fields({"id": gid[len(RETURN_GID):]}).id("id")
    return None


def read_lines(body: Fields) -> tuple[dict[str, int], str | None, str | None]:
    lines: dict[str, int] = {}
    reason = comment = None
    for item in body.objects("return_line_items"):
        fulfilled = item.object("fulfillment_line_item")
        line = fulfilled.object("line_item") if fulfilled else None
        line_id, quantity = (line.id("id") if line else None), item.data.get("quantity")
        if line_id is None or not is_count(quantity) or quantity == 0:
            raise BadBody(LINE_NEEDS)
        lines[line_id] = lines.get(line_id, 0) + quantity
        reason = reason or item.text("return_reason")
        comment = comment or item.text("customer_note") or item.text("return_reason_note")
    return lines, reason, comment


def parsed(bodies: Sequence[Body]) -> tuple[dict[int, Outcome], dict[int, ReturnIn]]:
    outcomes, found = {}, {}
    for body in bodies:
        try:
            found[body.row_id] = return_from_body(body.data)
        except BadBody as exc:
            outcomes[body.row_id] = (IGNORED, str(exc))
    return outcomes, found


def known_returns(session: Session, ids: Sequence[str]) -> dict[str, Return]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = select(Return).where(Return.source == SOURCE, Return.external_id.in_(wanted))
    return {ret.external_id: ret for ret in session.scalars(query)}


def waiting(body: Body, ret: ReturnIn, now: datetime) -> Outcome:
    """A return not here yet: its request may still be on its way (or its order)."""
    outcome, reason = unknown_order(body, ret.order_id or "?", now, wait=True)
    return outcome, (f"waiting for return {ret.return_id}" if outcome != IGNORED
                     else f"no such return: shopify {ret.return_id}")


# ---------------------------------------------------------------- returns/request


def on_return_requests(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                       ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "returns/request")."""
    return in_order(bodies, open_from_bodies(session, bodies, now, rt, approve=False))


def open_from_bodies(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime,
                     approve: bool) -> dict[int, Outcome]:
    outcomes, found = parsed(bodies)
    known = known_returns(session, [r.return_id for r in found.values()])
    orders = load_orders(session, [r.order_id for r in found.values()])
    requests: dict[int, ReturnRequest] = {}
    for body in bodies:
        ret = found.get(body.row_id)
        if ret is None:
            continue
        if ret.return_id in known:
            outcomes[body.row_id] = (PROCESSED, f"return {known[ret.return_id].rma} already open")
            continue
        order = orders.get(ret.order_id or "")
        outcome = request_outcome(body, ret, order, now)
        if outcome is not None:
            outcomes[body.row_id] = outcome
        else:
            requests[body.row_id] = request_of(ret, order, rt, approve)
    outcomes.update(opened(session, requests, now, rt))
    return outcomes


def request_outcome(body: Body, ret: ReturnIn, order: Order | None, now: datetime
                    ) -> Outcome | None:
    """Why a body opens no return (None: it does)."""
    if order is None:
        return unknown_order(body, ret.order_id or "?", now, wait=ret.order_id is not None)
    if ret.exchange:
        return IGNORED, "a Shopify exchange: Shopify makes and ships the new items"
    if not ret.lines:
        return IGNORED, "return without return_line_items"
    ours = {line.external_id for line in order.lines}
    if missing := sorted(set(ret.lines) - ours):
        return IGNORED, f"line items not on order {order.name}: {', '.join(missing)}"
    return None


def request_of(ret: ReturnIn, order: Order, rt: Runtime, approve: bool) -> ReturnRequest:
    by_external = {line.external_id: line.id for line in order.lines}
    return ReturnRequest(
        order_id=order.id, lines={by_external[ext]: qty for ext, qty in ret.lines.items()},
        reason=shopify_reason(ret.reason, rt.config.returns.reasons), comment=ret.comment,
        source=SOURCE, key=f"shopify-return:{ret.return_id}", external_id=ret.return_id,
        approve=approve)


def opened(session: Session, requests: Mapping[int, ReturnRequest], now: datetime,
           rt: Runtime) -> dict[int, Outcome]:
    """Open the batch at once; when the policy refuses one, each alone (a refusal writes
    nothing), so one odd return does not hold back the others."""
    try:
        return {row: opened_outcome(o) for row, o in zip(
            requests, open_returns(session, list(requests.values()), now, rt, actor=ACTOR),
            strict=True)}
    except ReturnRefused:
        pass
    outcomes = {}
    for row, request in requests.items():
        try:
            [done] = open_returns(session, [request], now, rt, actor=ACTOR)
            outcomes[row] = opened_outcome(done)
        except ReturnRefused as refused:
            outcomes[row] = (IGNORED, f"return refused: {refused}")
    return outcomes


def opened_outcome(done: Any) -> Outcome:
    verb = "opened" if done.created else "already open"
    return PROCESSED, f"return {done.ret.rma} {verb} ({done.ret.status})"


# ---------------------------------------------------------------- approve / decline / close


def on_return_approvals(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                        ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "returns/approve"); an unknown return with its lines is
    opened approved (a merchant created it in Shopify's admin)."""
    outcomes, found = parsed(bodies)
    known = known_returns(session, [r.return_id for r in found.values()])
    fresh = [b for b in bodies if b.row_id in found and found[b.row_id].return_id not in known]
    outcomes.update(open_from_bodies(session, fresh, now, rt, approve=True))
    ids = {known[r.return_id].id for r in found.values() if r.return_id in known}
    approved = set(approve_returns(session, sorted(ids), ACTOR, "approved at Shopify", now, rt))
    for row_id, ret in found.items():
        if ret.return_id in known:
            outcomes[row_id] = decided(known[ret.return_id], approved, "approved")
    return in_order(bodies, outcomes)


def on_return_declines(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                       ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "returns/decline")."""
    outcomes, found = parsed(bodies)
    known = known_returns(session, [r.return_id for r in found.values()])
    rejected: set[int] = set()
    for body in bodies:
        ret = found.get(body.row_id)
        if ret is None:
            continue
        if ret.return_id not in known:
            outcomes[body.row_id] = waiting(body, ret, now)
            continue
        ours = known[ret.return_id]
        message = ret.decline or "Your return request was declined."
        rejected |= set(reject_returns(session, [ours.id], ACTOR, message, now, rt))
        outcomes[body.row_id] = decided(ours, rejected, "rejected")
    return in_order(bodies, outcomes)


def on_return_closes(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                     ) -> dict[int, Outcome]:
    """Inbox action for ("shopify", "returns/close"): received, then refunded or exchanged."""
    outcomes, found = parsed(bodies)
    known = known_returns(session, [r.return_id for r in found.values()])
    for body in bodies:
        if body.row_id in found and found[body.row_id].return_id not in known:
            outcomes[body.row_id] = waiting(body, found[body.row_id], now)
    ours = sorted({known[r.return_id].id for r in found.values() if r.return_id in known})
    # Closed at Shopify is approved there: no "approved" mail just before the refund's.
    decide(session, ours, APPROVED, "approved", ACTOR, "closed at Shopify", now)
    receive_returns(session, ours, now, rt, ACTOR)
    after = {r.id: r for r in session.scalars(select(Return).where(Return.id.in_(ours))
                                              .execution_options(populate_existing=True))}
    for row_id, ret in found.items():
        if ret.return_id in known:
            mine = after[known[ret.return_id].id]
            outcomes[row_id] = (PROCESSED, f"return {mine.rma} {mine.status}")
    return in_order(bodies, outcomes)


def decided(ret: Return, moved: set[int], what: str) -> Outcome:
    if ret.id in moved:
        return PROCESSED, f"return {ret.rma} {what}"
    return PROCESSED, f"return {ret.rma} is {ret.status}: nothing to do"
