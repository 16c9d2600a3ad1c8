"""The messaging governor: at send time, decide which claimed outbox rows may go out now.

Rules, in order, for each row of the claimed batch (a constant four reads per batch):

1. expiry: a row whose `expires_at` has passed is given up (status ``expired``);
2. suppression (``Suppression.email_hash`` = sha256 of the lower-cased address, or
   ``email_hmac`` = its HMAC under the secret key, which erasure uses): marketing to any
   suppressed address is ``skipped`` ("suppressed: unsubscribe"); transactional mail is skipped
   only for the reasons in ``block_transactional`` (a hard bounce, an erasure) — an unsubscribe
   is about marketing, so an order's confirmation still goes;
3. consent: marketing needs ``Customer.accepts_marketing`` (customer by id, else by address),
   otherwise ``skipped`` ("no marketing consent");
   then topics: marketing whose template is in a topic (configs/pages.yaml ``topics``) the
   address turned off on its preferences page (``MailPreference``) is ``skipped``
   ("preference: offers off");
4. quiet hours in the recipient's time zone (``Customer.timezone``, else the store's): marketing
   is deferred to the end of the quiet hours; transactional mail is never held;
5. frequency caps (configs/governor.yaml): marketing already sent (status sent or unknown) to the
   customer plus marketing admitted earlier in this batch; competing marketing of one customer
   in the batch is admitted lowest ``priority`` number first, the rest are capped.

A deferred row keeps status ``pending``: its ``not_before`` moves to when it may go, its
``reason`` says why ("deferred: frequency cap: 1 per 16h"), and ``expires_at`` is set the first
time it is held (``created_at`` + ``defer_expiry_hours`` for its template or class). So
`claim_due_messages` picks it up again unchanged once it is due, and `journeys order` shows the
reason next to the status. A hold that would end after the expiry expires the row at once.
Skipped and expired rows are final. Holding a row never counts as a send attempt.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Row, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from tasks.config.governor import Cap, GovernorConfig, QuietHours
from tasks.runtime import Runtime
from tasks.states import MessageStatus
from tasks.store.models import Customer, MailPreference, Message, Suppression

MARKETING = "marketing"
# A verdict is the message status it leads to (tasks/states.py).
PENDING, SKIPPED, EXPIRED = MessageStatus.PENDING, MessageStatus.SKIPPED, MessageStatus.EXPIRED
# Statuses that count against a cap: the mail may have arrived.
COUNTED = (MessageStatus.SENT, MessageStatus.UNKNOWN, MessageStatus.SENDING)
SUPPRESSION_REASONS = ("unsubscribe", "complaint", "bounce", "erasure")  # weakest first
_HMAC_CONTEXT = b"journeys-suppression:"  # keeps these apart from unsubscribe-link signatures


# --- config -------------------------------------------------------------------------------


def governor_config(rt: Runtime) -> GovernorConfig:
    return rt.config.governor


# --- decision -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What becomes of a row that does not go out now."""

    row_id: int
    status: str  # pending (deferred) | skipped | expired
    reason: str
    not_before: datetime
    expires_at: datetime | None


@dataclass
class Decision:
    admitted: list[Row[Any]] = field(default_factory=list)
    held: list[Verdict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Held rows by outcome: deferred, skipped, expired."""
        names = {PENDING: "deferred", SKIPPED: "skipped", EXPIRED: "expired"}
        totals = {"deferred": 0, "skipped": 0, "expired": 0}
        for verdict in self.held:
            totals[names[verdict.status]] += 1
        return totals


@dataclass(frozen=True)
class Recipient:
    """What the governor knows of a row's customer."""

    key: int | None  # customer id, None when no customer is known
    consent: bool
    zone: ZoneInfo


def email_hash(address: str) -> str:
    """sha256 of the trimmed, lower-cased address: how suppressions are stored."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def email_hmac(address: str, secret_key: str) -> str:
    """HMAC-SHA256 of the trimmed, lower-cased address: an erased address's suppression key."""
    message = _HMAC_CONTEXT + address.strip().lower().encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def stronger(reason: str | None, other: str) -> str:
    """The stronger of two suppression reasons (an unknown one counts as the weakest)."""
    if reason is None:
        return other
    rank = {name: i for i, name in enumerate(SUPPRESSION_REASONS)}
    return other if rank.get(other, -1) > rank.get(reason, -1) else reason


def govern(session: Session, rows: Sequence[Row[Any]], now: datetime, rt: Runtime) -> Decision:
    """Split a claimed batch into rows to send now and held rows with their reasons."""
    gov = governor_config(rt)
    suppressed = load_suppressions(session, rows, rt.settings.secret_key)
    recipients = load_recipients(session, rows, rt.config.store.timezone)
    history = load_history(session, rows, recipients, now, max_window(gov))
    topic_of = topics_by_template(rt.config.pages.topics)
    off = load_topics_off(session, [r.to_addr for r in rows
                                    if r.msg_class == MARKETING and r.template in topic_of])
    decision = Decision()
    for row in sorted(rows, key=lambda r: (r.priority, r.not_before, r.id)):
        topic = topic_of.get(row.template)
        turned_off = topic if topic in off.get(email_hash(row.to_addr), ()) else None
        verdict = judge(row, suppressed, recipients[row.id], history, now, gov, turned_off)
        if verdict is not None:
            decision.held.append(verdict)
            continue
        decision.admitted.append(row)
        if row.msg_class == MARKETING and recipients[row.id].key is not None:
            history[recipients[row.id].key].append(now)
    decision.admitted.sort(key=lambda r: (r.priority, r.id))
    return decision


def judge(
    row: Row[Any],
    suppressed: dict[str, str],
    recipient: Recipient,
    history: dict[int, list[datetime]],
    now: datetime,
    gov: GovernorConfig,
    topic_off: str | None = None,
) -> Verdict | None:
    """The first rule that holds `row` back, or None if it may go now; `topic_off` is the
    topic of the row's template if its address turned that topic off."""
    if row.expires_at is not None and row.expires_at <= now:
        why = f" ({row.reason})" if row.reason else ""
        reason = f"expired: not sent by {row.expires_at:%Y-%m-%d %H:%M} UTC{why}"
        return Verdict(row.id, EXPIRED, reason, row.not_before, row.expires_at)
    reason = suppression_reason(row, suppressed.get(email_hash(row.to_addr)), gov)
    if reason is None and row.msg_class == MARKETING and not recipient.consent:
        reason = "no marketing consent"
    if reason is None and row.msg_class == MARKETING and topic_off:
        reason = f"preference: {topic_off} off"
    if reason is not None:
        return Verdict(row.id, SKIPPED, reason, row.not_before, row.expires_at)
    if row.msg_class != MARKETING:
        return None
    hold = quiet_hold(now, recipient.zone, gov.quiet_hours) or cap_hold(
        history.get(recipient.key, []) if recipient.key is not None else [], now, gov.caps
    )
    return None if hold is None else defer(row, hold[0], hold[1], now, gov)


def suppression_reason(row: Row[Any], reason: str | None, gov: GovernorConfig) -> str | None:
    """Marketing stops for any suppression; transactional only for the blocking reasons."""
    if reason is None:
        return None
    if row.msg_class == MARKETING or reason in gov.block_transactional:
        return f"suppressed: {reason}"
    return None


def defer(row: Row[Any], until: datetime, why: str, now: datetime, gov: GovernorConfig) -> Verdict:
    """Hold until `until`, or expire now if that is past the row's expiry."""
    expires_at = row.expires_at or row.created_at + timedelta(
        hours=gov.defer_expiry_hours.hours_for(row.template, row.msg_class)
    )
    if until >= expires_at:
        reason = f"expired: {why}, held past {expires_at:%Y-%m-%d %H:%M} UTC"
        return Verdict(row.id, EXPIRED, reason, row.not_before, expires_at)
    return Verdict(row.id, PENDING, f"deferred: {why}", until, expires_at)


# --- rules --------------------------------------------------------------------------------


def in_quiet_hours(local: time, quiet: QuietHours) -> bool:
    """Whether a local wall-clock time falls in [start, end), which may wrap past midnight."""
    if quiet.start == quiet.end:
        return False
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end


def quiet_hold(now: datetime, zone: ZoneInfo, quiet: QuietHours) -> tuple[datetime, str] | None:
    """(end of the quiet hours in UTC, why) if `now` is quiet for the recipient, else None."""
    local = now.astimezone(zone)
    if not in_quiet_hours(local.time().replace(tzinfo=None), quiet):
        return None
    end = datetime.combine(local.date(), quiet.end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), quiet.end, tzinfo=zone)
    end_utc = end.astimezone(now.tzinfo)
    window = f"{quiet.start:%H:%M}-{quiet.end:%H:%M}"
    return max(end_utc, now + timedelta(minutes=1)), f"quiet hours {window} {zone.key}"


def cap_hold(
    sends: Iterable[datetime], now: datetime, caps: Sequence[Cap]
) -> tuple[datetime, str] | None:
    """(when every full cap has room again, why) if a cap is full now, else None."""
    ordered = sorted(sends)
    frees, labels = now, []
    for cap in caps:
        recent = [at for at in ordered if at > now - cap.window]
        if len(recent) >= cap.count:
            frees = max(frees, recent[len(recent) - cap.count] + cap.window)
            labels.append(cap.label)
    if not labels:
        return None
    return max(frees, now + timedelta(seconds=1)), "frequency cap: " + ", ".join(labels)


def max_window(gov: GovernorConfig) -> timedelta:
    return max((cap.window for cap in gov.caps), default=timedelta(0))


# --- reads (four per batch) ----------------------------------------------------------------


def topics_by_template(topics: dict[str, list[str]]) -> dict[str, str]:
    """template → the topic it belongs to (configs/pages.yaml `topics`)."""
    return {template: topic for topic, templates in topics.items() for template in templates}


def load_topics_off(session: Session, addresses: Iterable[str]) -> dict[str, set[str]]:
    """email hash → the topics that address turned off, in one query for the whole batch."""
    hashes = sorted({email_hash(a) for a in addresses if a and a.strip()})
    if not hashes:
        return {}
    table = MailPreference.__table__
    query = select(table.c.email_hash, table.c.topic).where(
        table.c.email_hash.in_(hashes), table.c.subscribed.is_(False))
    off: dict[str, set[str]] = defaultdict(set)
    for hashed, topic in session.execute(query):
        off[hashed].add(topic)
    return off


def load_suppressions(
    session: Session, rows: Sequence[Row[Any]], secret_key: str
) -> dict[str, str]:
    """email hash → the strongest suppression reason, matched by plain or keyed hash."""
    addresses = {row.to_addr.strip().lower() for row in rows}
    plain = {email_hash(a): email_hash(a) for a in addresses}
    keyed = {email_hmac(a, secret_key): email_hash(a) for a in addresses}
    table = Suppression.__table__
    query = select(table.c.email_hash, table.c.email_hmac, table.c.reason).where(
        or_(table.c.email_hash.in_(sorted(plain)), table.c.email_hmac.in_(sorted(keyed)))
    )
    suppressed: dict[str, str] = {}
    for plain_hash, keyed_hash, reason in session.execute(query):
        key = plain.get(plain_hash) or keyed[keyed_hash]
        suppressed[key] = stronger(suppressed.get(key), reason)
    return suppressed


def zone_of(name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    """A customer's time zone, or the store's if it is missing or unknown."""
    if not name:
        return fallback
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, e.g. 'America'
        return fallback


def load_recipients(
    session: Session, rows: Sequence[Row[Any]], store_timezone: str
) -> dict[int, Recipient]:
    """row id → Recipient, finding each customer by id, else by address."""
    ids = {row.customer_id for row in rows if row.customer_id is not None}
    addresses = {row.to_addr.strip().lower() for row in rows if row.customer_id is None}
    query = select(Customer.id, Customer.email, Customer.accepts_marketing, Customer.timezone)
    query = query.where(or_(Customer.id.in_(sorted(ids)), Customer.email.in_(sorted(addresses))))
    found = list(session.execute(query)) if ids or addresses else []
    by_id = {c.id: c for c in found}
    by_email = {c.email.lower(): c for c in found if c.email}
    store_zone = zone_of(store_timezone, ZoneInfo("UTC"))
    recipients = {}
    for row in rows:
        customer = by_id.get(row.customer_id) or by_email.get(row.to_addr.strip().lower())
        if customer is None:
            recipients[row.id] = Recipient(None, False, store_zone)
        else:
            zone = zone_of(customer.timezone, store_zone)
            recipients[row.id] = Recipient(customer.id, bool(customer.accepts_marketing), zone)
    return recipients


def load_history(
    session: Session,
    rows: Sequence[Row[Any]],
    recipients: dict[int, Recipient],
    now: datetime,
    window: timedelta,
) -> dict[int, list[datetime]]:
    """customer id → when marketing went to them within the longest cap window.

    An unknown outcome has no `sent_at`; its `not_before` (when it became due) stands in.
    """
    history: dict[int, list[datetime]] = defaultdict(list)
    keys = {recipients[row.id].key for row in rows if row.msg_class == MARKETING}
    keys.discard(None)
    if not keys or window <= timedelta(0):
        return history
    table = Message.__table__
    at = func.coalesce(table.c.sent_at, table.c.not_before)
    query = select(table.c.customer_id, table.c.sent_at, table.c.not_before).where(
        table.c.msg_class == MARKETING,
        table.c.status.in_(COUNTED),
        table.c.customer_id.in_(sorted(keys)),
        at > now - window,
    )
    for customer_id, sent_at, not_before in session.execute(query):
        history[customer_id].append(sent_at or not_before)
    return history


# --- write (one per batch) -----------------------------------------------------------------


def record_decision(session: Session, decision: Decision) -> None:
    """One executemany UPDATE storing each held row's status, reason, due time and expiry."""
    if not decision.held:
        return
    table = Message.__table__
    statement = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .values(
            status=bindparam("b_status"), reason=bindparam("b_reason"),
            not_before=bindparam("b_not_before"), expires_at=bindparam("b_expires_at"),
        )
    )
    values = [
        {"b_id": v.row_id, "b_status": v.status, "b_reason": v.reason[:500],
         "b_not_before": v.not_before, "b_expires_at": v.expires_at}
        for v in decision.held
    ]
    session.connection().execute(statement, values)
