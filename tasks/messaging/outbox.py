"""The transactional outbox: rows are written with the state change, sent here afterwards.

Transactional mail is at-least-once: a temporary failure or an unknown outcome leaves the row
pending, and a resend carries the same Message-ID. Marketing mail is at-most-once: an unknown
outcome is recorded as such and never resent. Before anything is rendered, the governor
(tasks/messaging/governor.py) decides what of the claimed batch may go now; marketing mail
carries a signed unsubscribe link and RFC 8058 one-click headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from email.errors import MessageError
from email.utils import format_datetime
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from tasks.config import Config, TemplateSpec
from tasks.messaging.governor import govern, record_decision
from tasks.messaging.mime import address_header, alternative, checked_address, text_header
from tasks.messaging.render import Rendered, one_line, renderer_for
from tasks.messaging.transports import OutgoingMail, SendOutcome
from tasks.messaging.unsubscribe import unsubscribe_url
from tasks.runtime import Runtime
from tasks.store.db import is_postgres
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Message

PENDING, SENT, FAILED, UNKNOWN = "pending", "sent", "failed", "unknown"
MARKETING = "marketing"
MAX_ATTEMPTS = 10
FIRST_RETRY = timedelta(minutes=5)
MAX_RETRY = timedelta(hours=6)


@dataclass
class DispatchResult:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    unknown: int = 0
    skipped: int = 0  # by the governor: suppressed or no consent
    expired: int = 0  # by the governor: held past the message's expiry

    def as_dict(self) -> dict[str, int]:
        """The four send outcomes always; the governor's skipped/expired when there were any."""
        counts = asdict(self)
        return {k: v for k, v in counts.items() if v or k not in ("skipped", "expired")}


# --- enqueue ------------------------------------------------------------------------------


def effect_key_for(order_id: int, step: str, template: str, version: int) -> str:
    return f"order:{order_id}:{step}:{template}:v{version}"


def message_id_for(effect_key: str, domain: str) -> str:
    """A Message-ID derived from the effect key, so every resend carries the same one."""
    return f"<{hashlib.sha256(effect_key.encode()).hexdigest()[:32]}@{domain}>"


def order_message(
    *,
    order_id: int,
    customer_id: int | None,
    step: str,
    template: str,
    spec: TemplateSpec,
    to_addr: str,
    context: Mapping[str, Any],
    not_before: datetime,
    domain: str,
) -> dict[str, Any]:
    """An outbox row for `enqueue`, keyed `order:{id}:{step}:{template}:v{version}`."""
    key = effect_key_for(order_id, step, template, spec.version)
    return {
        "effect_key": key, "order_id": order_id, "customer_id": customer_id,
        "template": template, "version": spec.version, "msg_class": spec.msg_class,
        "priority": spec.priority, "to_addr": to_addr, "message_id": message_id_for(key, domain),
        "context": dict(context), "not_before": not_before,
    }


def enqueue(session: Session, rows: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Bulk insert in the caller's transaction; a row whose effect key exists is left alone."""
    full = [{**row, "status": PENDING, "attempts": 0, "created_at": now} for row in rows]
    insert_ignoring_duplicates(session, Message, full, ["effect_key"])


# --- dispatch -----------------------------------------------------------------------------


def dispatch(
    session: Session,
    now: datetime,
    rt: Runtime,
    limit: int = 1000,
    order_ids: Sequence[int] | None = None,
) -> DispatchResult:
    """Send due pending mail (optionally only `order_ids`'): one select, one send, one update."""
    rows = claim_due_messages(session, now, limit, order_ids)
    if not rows:
        return DispatchResult()
    decision = govern(session, rows, now, rt)
    record_decision(session, decision)
    admitted = decision.admitted
    links = {r.id: unsubscribe_url(r.to_addr, rt) for r in admitted if r.msg_class == MARKETING}
    outgoing, outcomes = prepare_mails(admitted, now, rt.config, links)
    sent = rt.transport.send_batch(outgoing) if outgoing else []
    outcomes.update({mail.row_id: outcome for mail, outcome in zip(outgoing, sent, strict=True)})
    result = record_outcomes(session, admitted, outcomes, now)
    for name, count in decision.counts().items():
        setattr(result, name, getattr(result, name) + count)
    return result


def claim_due_messages(
    session: Session, now: datetime, limit: int, order_ids: Sequence[int] | None = None
) -> list[Row[Any]]:
    """Pending rows due by `now`, most urgent first; locked with SKIP LOCKED on PostgreSQL."""
    table = Message.__table__
    query = (
        select(table)
        .where(table.c.status == PENDING, table.c.not_before <= now)
        .order_by(table.c.priority, table.c.id)
        .limit(limit)
    )
    if order_ids is not None:
        query = query.where(table.c.order_id.in_(order_ids))
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    return list(session.execute(query))


def prepare_mails(
    rows: Sequence[Row[Any]],
    now: datetime,
    cfg: Config,
    unsubscribe_links: Mapping[int, str] | None = None,
) -> tuple[list[OutgoingMail], dict[int, SendOutcome]]:
    """Render and build each mail; a message that cannot be built fails alone, with why.

    A row with an unsubscribe link (marketing) gets it as `unsubscribe_url` in its render
    context and in its List-Unsubscribe header.
    """
    renderer = renderer_for(cfg)
    links = unsubscribe_links or {}
    outgoing: list[OutgoingMail] = []
    failures: dict[int, SendOutcome] = {}
    for row in rows:
        try:
            link = links.get(row.id)
            context = {**row.context, "unsubscribe_url": link} if link else row.context
            rendered = renderer.render(row.template, context)
            outgoing.append(build_mail(row, rendered, now, cfg, link))
        except (TemplateError, LookupError, ValueError, MessageError, AttributeError) as exc:
            reason = f"cannot build: {type(exc).__name__}: {exc}"
            failures[row.id] = SendOutcome("failed", reason[:500])
    return outgoing, failures


def clean_header(value: str) -> str:
    """One line, and no RFC 2047 encoded-word the email package would decode into a newline."""
    return one_line(value).replace("=?", "= ?")


def build_mail(
    row: Row[Any], rendered: Rendered, now: datetime, cfg: Config, unsubscribe: str | None = None
) -> OutgoingMail:
    """multipart/alternative (text, html) with sanitised headers and the stored Message-ID.

    With an `unsubscribe` URL (marketing mail): List-Unsubscribe and RFC 8058 one-click headers.
    """
    messaging, store = cfg.messaging, cfg.store
    customer_name = (row.context.get("customer") or {}).get("name") or ""
    recipient = checked_address(clean_header(row.to_addr))
    headers = [("From", address_header("From", clean_header(messaging.from_name),
                                       messaging.from_address)),
               ("To", address_header("To", clean_header(customer_name), recipient))]
    if store.reply_to:
        headers.append(("Reply-To", address_header("Reply-To", clean_header(store.name),
                                                   store.reply_to)))
    headers += [("Subject", text_header("Subject", clean_header(rendered.subject))),
                ("Date", format_datetime(now)), ("Message-ID", clean_header(row.message_id))]
    if unsubscribe:
        headers += [("List-Unsubscribe", f"<{clean_header(unsubscribe)}>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    data = alternative(headers, rendered.text, rendered.html, row.message_id)
    return OutgoingMail(row.id, row.effect_key, messaging.from_address, recipient, data, now)


def retry_delay(attempts: int) -> timedelta:
    """5 min, 10, 20, ... capped at 6 h; `attempts` counts tries made before this one."""
    return min(FIRST_RETRY * 2**attempts, MAX_RETRY)


def final_status(row: Row[Any], outcome: SendOutcome) -> str:
    """What the row becomes: at-least-once for transactional, at-most-once for marketing."""
    if outcome.status in (SENT, FAILED):
        return outcome.status
    if outcome.status == UNKNOWN and row.msg_class == MARKETING:
        return UNKNOWN
    return FAILED if row.attempts + 1 >= MAX_ATTEMPTS else PENDING


def _update_values(row: Row[Any], outcome: SendOutcome, now: datetime) -> dict[str, Any]:
    status = final_status(row, outcome)
    reason = outcome.reason
    if status == FAILED and outcome.status != FAILED:
        reason = f"gave up after {row.attempts + 1} attempts: {reason}"
    if outcome.status == UNKNOWN and status == PENDING:
        reason = f"outcome unknown, will resend with the same Message-ID: {reason}"
    return {
        "b_id": row.id, "b_status": status, "b_reason": reason and reason[:500],
        "b_sent_at": now if status == SENT else row.sent_at,
        "b_ref": outcome.artifact_ref or row.artifact_ref,
        "b_not_before": now + retry_delay(row.attempts) if status == PENDING else row.not_before,
    }


def record_outcomes(
    session: Session, rows: Sequence[Row[Any]], outcomes: Mapping[int, SendOutcome], now: datetime
) -> DispatchResult:
    """One executemany UPDATE for the whole batch; counts by the status each row ended in."""
    values = [_update_values(row, outcomes[row.id], now) for row in rows]
    if not values:
        return DispatchResult()
    table = Message.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"), reason=bindparam("b_reason"),
            attempts=table.c.attempts + 1, sent_at=bindparam("b_sent_at"),
            artifact_ref=bindparam("b_ref"), not_before=bindparam("b_not_before"),
        )
    )
    session.connection().execute(statement, values)
    result = DispatchResult()
    for value in values:
        name = "deferred" if value["b_status"] == PENDING else value["b_status"]
        setattr(result, name, getattr(result, name) + 1)
    return result
