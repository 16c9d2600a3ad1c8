"""The transactional outbox: rows are written with the state change, sent here afterwards.

Transactional mail is at-least-once: a temporary failure or an unknown outcome leaves the row
pending, and a resend carries the same Message-ID. Marketing mail is at-most-once: an unknown
outcome is recorded as such and never resent. Before anything is rendered, the governor
(tasks/messaging/governor.py) decides what of the claimed batch may go now; marketing mail
carries a signed unsubscribe link and RFC 8058 one-click headers.

A dispatch is three steps: claim (govern, build, mark the rows `sending` with a lease), send,
record. `dispatch_committed` commits the claim before the transport is called, so a process
that dies between sending and recording leaves its rows `sending`: when the lease runs out,
transactional rows are sent again (same Message-ID) and marketing rows become `unknown`,
never sent twice. (`dispatch` does all three in the caller's one transaction.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from email.errors import MessageError
from email.utils import format_datetime
from typing import Any

from jinja2 import TemplateError
from sqlalchemy import Engine, Row, bindparam, or_, select, update
from sqlalchemy.orm import Session

from tasks.config import Config
from tasks.faults import fault_point
from tasks.messaging.governor import govern, record_decision
from tasks.messaging.mime import address_header, alternative, checked_address, text_header
from tasks.messaging.render import Rendered, one_line, renderer_for
from tasks.messaging.transports import OutgoingMail, SendOutcome
from tasks.messaging.unsubscribe import list_unsubscribe, marketing_links
from tasks.runtime import Runtime
from tasks.states import MessageStatus
from tasks.store.db import is_postgres, session_scope
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Message

PENDING, SENDING, SENT = MessageStatus.PENDING, MessageStatus.SENDING, MessageStatus.SENT
FAILED, UNKNOWN, SKIPPED = MessageStatus.FAILED, MessageStatus.UNKNOWN, MessageStatus.SKIPPED
NO_ADDRESS = "no_address: the order has no e-mail address"
MARKETING = "marketing"
MAX_ATTEMPTS = 10
FIRST_RETRY = timedelta(minutes=5)
MAX_RETRY = timedelta(hours=6)
# How long a claim keeps other dispatchers off its rows: longer than any batch takes to send.
SEND_LEASE = timedelta(minutes=15)
LEASE_LOST = ("the dispatcher that claimed it stopped before recording the outcome; "
              "marketing is sent at most once, so it is not sent again")


@dataclass
class DispatchResult:
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    unknown: int = 0
    skipped: int = 0  # by the governor: suppressed or no consent
    expired: int = 0  # by the governor: held past the message's expiry

    def add(self, counts: Mapping[str, int]) -> None:
        for name, count in counts.items():
            setattr(self, name, getattr(self, name) + count)

    def as_dict(self) -> dict[str, int]:
        """The four send outcomes always; the governor's skipped/expired when there were any."""
        counts = asdict(self)
        return {k: v for k, v in counts.items() if v or k not in ("skipped", "expired")}


# --- enqueue ------------------------------------------------------------------------------


def effect_key_for(order_id: int, step: str, template: str, version: int) -> str:
    """An order's mail's identity; rows are built by tasks/messaging/compose.py."""
    return f"order:{order_id}:{step}:{template}:v{version}"


def message_id_for(effect_key: str, domain: str) -> str:
    """A Message-ID derived from the effect key, so every resend carries the same one."""
    return f"<{hashlib.sha256(effect_key.encode()).hexdigest()[:32]}@{domain}>"


def enqueue(session: Session, rows: Sequence[Mapping[str, Any]], now: datetime) -> None:
    """Bulk insert in the caller's transaction; a row whose effect key exists is left alone.

    A row without an address (an order or customer the source gave none) is stored `skipped`
    with its reason: it is accounted for, shown with the order, and never claimed for sending.
    """
    full = [_outbox_row(row, now) for row in rows]
    insert_ignoring_duplicates(session, Message, full, ["effect_key"])


def _outbox_row(row: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    pending = {"reason": None, **row, "status": PENDING, "attempts": 0, "created_at": now}
    if str(row.get("to_addr") or "").strip():
        return pending
    return pending | {"to_addr": "", "status": SKIPPED, "reason": NO_ADDRESS}


def store_skipped(
    session: Session, skipped: Sequence[tuple[Mapping[str, Any], str]], now: datetime
) -> None:
    """Rows a rule decided not to send (row, why), stored `skipped` with their reason: they
    stay visible and count for the rule next time, and are never claimed for sending."""
    full = [{**row, "status": SKIPPED, "reason": why[:500], "attempts": 0, "created_at": now}
            for row, why in skipped]
    insert_ignoring_duplicates(session, Message, full, ["effect_key"])


# --- dispatch -----------------------------------------------------------------------------


@dataclass
class Claim:
    """A claimed batch: the rows admitted to go now, their mails, and what is settled already."""

    admitted: list[Row[Any]] = field(default_factory=list)
    outgoing: list[OutgoingMail] = field(default_factory=list)
    outcomes: dict[int, SendOutcome] = field(default_factory=dict)
    result: DispatchResult = field(default_factory=DispatchResult)


def dispatch(
    session: Session,
    now: datetime,
    rt: Runtime,
    limit: int = 1000,
    order_ids: Sequence[int] | None = None,
) -> DispatchResult:
    """Send due pending mail (optionally only `order_ids`'), all in the caller's transaction."""
    claim = claim_batch(session, now, rt, limit, order_ids)
    return record_claim(session, claim, send_claim(claim, rt), now)


def dispatch_committed(
    engine: Engine,
    now: datetime,
    rt: Runtime,
    limit: int = 1000,
    order_ids: Sequence[int] | None = None,
) -> DispatchResult:
    """Like `dispatch`, with the claim committed before sending and the outcomes after: no
    database lock is held while the transport talks, and a crash cannot send marketing twice."""
    with session_scope(engine) as session:
        claim = claim_batch(session, now, rt, limit, order_ids)
        fault_point("dispatch:claimed")
    in_flight = "marketing" if any(r.msg_class == MARKETING for r in claim.admitted) else ""
    fault_point("dispatch:before_send", in_flight)
    outcomes = send_claim(claim, rt)
    fault_point("dispatch:after_send", in_flight)
    with session_scope(engine) as session:
        result = record_claim(session, claim, outcomes, now)
    fault_point("dispatch:after_commit")
    return result


def claim_batch(
    session: Session, now: datetime, rt: Runtime, limit: int, order_ids: Sequence[int] | None
) -> Claim:
    """Claim due rows, let the governor decide, build the mails, mark the admitted `sending`."""
    claim = Claim()
    rows = claim_due_messages(session, now, limit, order_ids)
    rows = settle_lost_marketing(session, rows, claim.result)
    if not rows:
        return claim
    decision = govern(session, rows, now, rt)
    record_decision(session, decision)
    claim.result.add(decision.counts())
    claim.admitted = decision.admitted
    links = marketing_links(claim.admitted, rt)
    claim.outgoing, claim.outcomes = prepare_mails(claim.admitted, now, rt.config, links)
    mark_sending(session, claim.admitted, now)
    return claim


def send_claim(claim: Claim, rt: Runtime) -> dict[int, SendOutcome]:
    """The transport's outcome for every admitted row (build failures included)."""
    sent = rt.transport.send_batch(claim.outgoing) if claim.outgoing else []
    pairs = zip(claim.outgoing, sent, strict=True)
    return claim.outcomes | {mail.row_id: outcome for mail, outcome in pairs}


def record_claim(
    session: Session, claim: Claim, outcomes: Mapping[int, SendOutcome], now: datetime
) -> DispatchResult:
    result = record_outcomes(session, claim.admitted, outcomes, now)
    result.add(asdict(claim.result))
    return result


def mark_sending(session: Session, rows: Sequence[Row[Any]], now: datetime) -> None:
    """Keep other dispatchers off these rows until the lease ends (or the outcome is in)."""
    if not rows:
        return
    table = Message.__table__
    session.execute(update(table).where(table.c.id.in_([r.id for r in rows]))
                    .values(status=SENDING, not_before=now + SEND_LEASE))


def settle_lost_marketing(
    session: Session, rows: Sequence[Row[Any]], result: DispatchResult
) -> list[Row[Any]]:
    """Marketing rows whose claim's lease ran out are `unknown` (the mail may have gone);
    transactional ones go again, with the same Message-ID."""
    lost = {r.id for r in rows if r.status == SENDING and r.msg_class == MARKETING}
    if lost:
        table = Message.__table__
        session.execute(update(table).where(table.c.id.in_(sorted(lost)))
                        .values(status=UNKNOWN, reason=LEASE_LOST))
        result.unknown += len(lost)
    return [r for r in rows if r.id not in lost]


def claim_due_messages(
    session: Session, now: datetime, limit: int, order_ids: Sequence[int] | None = None
) -> list[Row[Any]]:
    """Pending rows due by `now` and rows whose send lease ran out, most urgent first;
    locked with SKIP LOCKED on PostgreSQL."""
    table = Message.__table__
    query = (
        select(table)
        .where(or_(table.c.status == PENDING, table.c.status == SENDING),
               table.c.not_before <= now)
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
        mailto = store.unsubscribe_email and clean_header(store.unsubscribe_email)
        headers += [("List-Unsubscribe", list_unsubscribe(clean_header(unsubscribe), mailto)),
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
        .where(table.c.id == bindparam("b_id"), table.c.status == SENDING)
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
