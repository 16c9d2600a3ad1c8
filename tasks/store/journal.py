"""State changes, steps and the timeline: set-based, compare-and-set, one statement per kind.

Every stage uses these helpers so that running a stage twice changes nothing the second time:
an order only moves if it is still in the state the stage expected, and steps, events and
outbox rows are inserted with their natural keys (duplicates ignored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from tasks import journey
from tasks.states import OrderState, StepStatus
from tasks.store.db import is_postgres
from tasks.store.models import Base, Order, OrderEvent, Step

# Short names many stages import from here (tasks/states.py is where they are defined).
RECEIVED, VERIFIED, PACKED = OrderState.RECEIVED, OrderState.VERIFIED, OrderState.PACKED
CONFIRMED, ON_HOLD, CANCELLED = OrderState.CONFIRMED, OrderState.ON_HOLD, OrderState.CANCELLED
PENDING, DONE = StepStatus.PENDING, StepStatus.DONE
HELD, CLOSED = StepStatus.HELD, StepStatus.CLOSED

# From the registry (tasks/journey.py): the first half's step → the state it claims, and the
# step an order takes next when a stage moves it into a state.
STAGE_STATES = journey.first_half()
NEXT_STEP = journey.next_steps()


@dataclass(frozen=True)
class Transition:
    """One order's outcome in a stage: its new state, why, and what the timeline should say."""

    order_id: int
    to_state: str
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def insert_ignoring_duplicates(
    session: Session, model: type[Base], rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> None:
    """Bulk INSERT ... ON CONFLICT (keys) DO NOTHING, on PostgreSQL and SQLite alike."""
    if rows:
        session.execute(_insert_ignoring(session, model, keys), list(rows))


def insert_new(
    session: Session, model: type[Base], rows: Sequence[dict[str, Any]], key: str
) -> set[Any]:
    """Like insert_ignoring_duplicates; returns the `key` of each row really inserted (a
    concurrent transaction may have inserted the same key after the caller looked)."""
    if not rows:
        return set()
    statement = _insert_ignoring(session, model, [key]).returning(model.__table__.c[key])
    return set(session.execute(statement, list(rows)).scalars())


def _insert_ignoring(session: Session, model: type[Base], keys: Sequence[str]) -> Any:
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    return dialect_insert(model).on_conflict_do_nothing(index_elements=list(keys))


def due_order_ids(
    session: Session, step: str, now: datetime, limit: int, after_id: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> list[int]:
    """Orders whose `step` is pending and due, by order id after `after_id` (keyset paging).

    Paging by id (not by due time) guarantees a sweep terminates even when some due orders
    cannot be claimed right now (locked by another worker, or no longer in the stage's state).
    `shard` = (k, n) keeps the orders whose id modulo n is k, for runs that split the work.
    """
    query = (
        select(Step.order_id)
        .where(
            Step.name == step,
            Step.status == PENDING,
            Step.due_at <= now,
            Step.order_id > after_id,
        )
        .order_by(Step.order_id)
        .limit(limit)
    )
    index, count = shard
    if count > 1:
        query = query.where(Step.order_id % count == index)
    return list(session.scalars(query))


def claim_orders(session: Session, order_ids: Sequence[int], state: str) -> list[Order]:
    """Load the batch's orders that are still in `state`, with lines and customer.

    On PostgreSQL the rows are locked with SKIP LOCKED, so a concurrent worker cannot take
    the same orders; on SQLite the batch transaction already holds the write lock (BEGIN
    IMMEDIATE). Either way the caller's later compare-and-set sees exactly these orders.
    """
    if not order_ids:
        return []
    query = (
        select(Order)
        .where(Order.id.in_(order_ids), Order.state == state)
        .order_by(Order.id)
        .options(selectinload(Order.lines), selectinload(Order.customer))
    )
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Order)
    return list(session.scalars(query))


def claim_order_ids(session: Session, order_ids: Sequence[int], state: str) -> list[int]:
    """Like claim_orders, for a stage that needs only the ids (nothing loaded, same locks)."""
    if not order_ids:
        return []
    query = select(Order.id).where(Order.id.in_(order_ids), Order.state == state)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True, of=Order)
    return list(session.scalars(query.order_by(Order.id)))


def _step_status(to_state: str) -> str:
    return {ON_HOLD: HELD, CANCELLED: CLOSED}.get(to_state, DONE)


def apply_transitions(
    session: Session,
    step: str,
    from_state: str,
    transitions: Sequence[Transition],
    now: datetime,
    actor: str = "journeys",
) -> list[int]:
    """Move orders (compare-and-set), close their step, log events and schedule what is next."""
    if not transitions:
        return []
    _update_orders(session, from_state, transitions, now)
    _close_steps(session, step, transitions, now)
    record_events(session, [_event_row(t, from_state, now, actor) for t in transitions])
    next_steps = sorted({NEXT_STEP[t.to_state] for t in transitions if t.to_state in NEXT_STEP})
    for next_step in next_steps:
        ids = [t.order_id for t in transitions if NEXT_STEP.get(t.to_state) == next_step]
        reopen_step(session, ids, next_step, now)
    return [t.order_id for t in transitions]


def _update_orders(
    session: Session, from_state: str, transitions: Sequence[Transition], now: datetime
) -> None:
    table = Order.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.state == from_state)
        .values(state=bindparam("b_state"), hold_reason=bindparam("b_reason"), updated_at=now)
    )
    rows = [
        {"b_id": t.order_id, "b_state": t.to_state, "b_reason": _hold_reason(t)}
        for t in transitions
    ]
    session.connection().execute(statement, rows)


def _hold_reason(transition: Transition) -> str | None:
    return transition.reason if transition.to_state == ON_HOLD else None


def _close_steps(
    session: Session, step: str, transitions: Sequence[Transition], now: datetime
) -> None:
    outcomes = {t.order_id: (_step_status(t.to_state), t.reason) for t in transitions}
    set_steps(session, step, outcomes, now)


def set_steps(
    session: Session, step: str, outcomes: Mapping[int, tuple[str, str | None]], now: datetime
) -> None:
    """Set each order's `step` to (status, reason), counting an attempt: one executemany."""
    if not outcomes:
        return
    table = Step.__table__
    statement = (
        update(table)
        .where(table.c.order_id == bindparam("b_id"), table.c.name == step)
        .values(status=bindparam("b_status"), reason=bindparam("b_reason"),
                attempts=table.c.attempts + 1, updated_at=now)
    )
    rows = [{"b_id": oid, "b_status": status, "b_reason": reason}
            for oid, (status, reason) in outcomes.items()]
    session.connection().execute(statement, rows)


def _event_row(t: Transition, from_state: str, now: datetime, actor: str) -> dict[str, Any]:
    detail = dict(t.detail)
    if t.reason:
        detail.setdefault("reason", t.reason)
    return {
        "order_id": t.order_id,
        "at": now,
        "kind": "state",
        "from_state": from_state,
        "to_state": t.to_state,
        "actor": actor,
        "detail": detail,
    }


STATE_CHANGES = "journeys.state_changes"  # session.info key: this transaction's state rows


def record_events(session: Session, rows: Iterable[dict[str, Any]]) -> None:
    """Append to the timeline; state changes are also noted on the session for notifiers."""
    rows = list(rows)
    if rows:
        session.execute(OrderEvent.__table__.insert(), rows)
        session.info.setdefault(STATE_CHANGES, []).extend(r for r in rows if r["kind"] == "state")


def take_state_changes(session: Session) -> list[dict[str, Any]]:
    """The state changes this session recorded so far (and forget them)."""
    return session.info.pop(STATE_CHANGES, [])


def schedule_steps(
    session: Session, steps: Iterable[tuple[int, str, datetime]], now: datetime
) -> None:
    """Record (order_id, step, due_at) as pending; an existing step row is left alone."""
    rows = [
        {"order_id": oid, "name": name, "due_at": due, "status": PENDING, "attempts": 0,
         "updated_at": now}
        for oid, name, due in steps
    ]
    insert_ignoring_duplicates(session, Step, rows, ["order_id", "name"])


def schedule_step(
    session: Session, name: str, due: Iterable[tuple[int, datetime]], now: datetime
) -> None:
    """Schedule the registered step `name` for (order_id, due_at) pairs; existing rows are kept.

    For schedulers outside the journey's own stages (loyalty.earn schedules loyalty_approve):
    the name is checked against tasks/journey.py, so no step is scheduled that no sweep runs.
    """
    spec = journey.step(name)
    schedule_steps(session, [(order_id, spec.name, at) for order_id, at in due], now)


def reopen_step(session: Session, order_ids: Sequence[int], step: str, now: datetime) -> None:
    """Make `step` pending and due now, whether or not it ran before (an order came back)."""
    if not order_ids:
        return
    schedule_steps(session, [(oid, step, now) for oid in order_ids], now)
    session.execute(
        update(Step)
        .where(Step.order_id.in_(order_ids), Step.name == step)
        .values(status=PENDING, due_at=now, reason=None, updated_at=now)
    )


# --- updating a stage's own step: mark it done (or closed), or defer it -----------------------


def finish_steps(
    session: Session, step: str, outcomes: Mapping[int, str | None], now: datetime,
    status: str = DONE,
) -> None:
    """Mark `step` of each order `status` (done unless told) with its reason (order id →
    reason, None when there is nothing to say), counting an attempt: one executemany."""
    set_steps(session, step, {oid: (status, reason) for oid, reason in outcomes.items()}, now)


def reschedule_steps(
    session: Session, step: str, due: Mapping[int, datetime], reason: str | None, now: datetime
) -> None:
    """Keep `step` pending but due again later (order id → due time), counting an attempt:
    a stage never waits, it asks to be woken up."""
    if not due:
        return
    table = Step.__table__
    statement = (
        update(table)
        .where(table.c.order_id == bindparam("b_id"), table.c.name == step)
        .values(status=PENDING, due_at=bindparam("b_due"), reason=reason,
                attempts=table.c.attempts + 1, updated_at=now)
    )
    rows = [{"b_id": oid, "b_due": when} for oid, when in due.items()]
    session.connection().execute(statement, rows)
