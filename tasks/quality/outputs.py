"""Output checks: what a run produced must make sense before anyone relies on it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from tasks.quality.frames import outbox_frame
from tasks.quality.gate import GateResult, validate_frame
from tasks.store.models import Message, Step


class OutputCheckFailed(RuntimeError):
    """A run's output broke an invariant (e.g. a confirmed order without exactly one mail)."""


def confirmed_in_run(now: datetime):
    """Orders whose confirm step this run (clock instant `now`) completed."""
    return select(Step.order_id).where(
        Step.name == "confirm", Step.status == "done", Step.updated_at == now
    )


def check_outbox(session: Session, now: datetime, suppressed: Iterable[str] = ()) -> GateResult:
    """The outbox suite over this run's confirmed orders: one confirmation each, none suppressed."""
    confirmed = list(session.scalars(confirmed_in_run(now)))
    rows = session.execute(
        select(Message.id, Message.order_id, Message.template, Message.to_addr)
        .join(Step, Step.order_id == Message.order_id)
        .where(Step.name == "confirm", Step.status == "done", Step.updated_at == now)
    ).mappings()
    frame = outbox_frame([dict(row) for row in rows], confirmed)
    addresses = sorted({address.strip().lower() for address in suppressed})  # as the frame has them
    return validate_frame("outbox", frame, {"suppressed": addresses})
