"""What marketing an address gets: all of it, none (an unsubscribe), or only some topics.

The preferences page (/u/{token}) and the RFC 8058 one-click POST call these. Everything is
keyed by the address's hash, like the suppression list: an unsubscribe is a `Suppression`
(reason "unsubscribe", kept forever), topics are `MailPreference` rows that the governor reads
at send time. A resubscribe lifts only an "unsubscribe" suppression — a bounce, a complaint or
an erasure stays. Each change to "all marketing" is also kept as a `MailPreference` row of
topic "all" (when and from where), which the governor ignores. Every call is idempotent: a
second identical request writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from tasks.messaging.governor import email_hash, email_hmac, load_topics_off, stronger
from tasks.messaging.unsubscribe import suppress
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import MailPreference, Suppression

ALL = "all"  # the MailPreference topic recording unsubscribe / resubscribe from everything
UNSUBSCRIBE = "unsubscribe"


@dataclass(frozen=True)
class MailState:
    """What the page shows: the strongest suppression (None: marketing flows) and topics."""

    suppression: str | None
    topics: dict[str, bool]  # topic → subscribed

    @property
    def subscribed(self) -> bool:
        return self.suppression is None

    @property
    def can_resubscribe(self) -> bool:
        """Only the customer's own unsubscribe can be undone by the customer."""
        return self.suppression == UNSUBSCRIBE


def suppression_of(session: Session, address: str, secret_key: str) -> str | None:
    """The strongest suppression reason of an address (by plain or keyed hash), or None."""
    table = Suppression.__table__
    query = select(table.c.reason).where(or_(
        table.c.email_hash == email_hash(address),
        table.c.email_hmac == email_hmac(address, secret_key)))
    reason = None
    for found in session.scalars(query):
        reason = stronger(reason, found)
    return reason


def mail_state(session: Session, address: str, topics: Iterable[str],
               secret_key: str) -> MailState:
    off = load_topics_off(session, [address]).get(email_hash(address), set())
    return MailState(suppression_of(session, address, secret_key),
                     {topic: topic not in off for topic in topics})


def unsubscribe_all(session: Session, address: str, now: datetime, source: str) -> None:
    """Stop all marketing to the address at once (RFC 8058 one-click and the page's button)."""
    suppress(session, address, UNSUBSCRIBE, now, source)
    record_choices(session, address, {ALL: False}, now, source)


def resubscribe(session: Session, address: str, now: datetime, source: str) -> bool:
    """Lift the address's own unsubscribe (never a bounce, complaint or erasure); True if one
    was lifted."""
    table = Suppression.__table__
    lifted = session.execute(delete(table).where(
        table.c.email_hash == email_hash(address), table.c.reason == UNSUBSCRIBE)).rowcount
    if lifted:
        record_choices(session, address, {ALL: True}, now, source)
    return bool(lifted)


def record_choices(session: Session, address: str, choices: Mapping[str, bool], now: datetime,
                   source: str) -> int:
    """Store topic → subscribed for the address; only rows that change are written. Returns
    how many changed."""
    hashed = email_hash(address)
    table = MailPreference.__table__
    stored = dict(session.execute(select(table.c.topic, table.c.subscribed).where(
        table.c.email_hash == hashed, table.c.topic.in_(sorted(choices)))).all())
    fresh = [{"email_hash": hashed, "topic": topic, "subscribed": on, "source": source[:100],
              "updated_at": now} for topic, on in choices.items() if topic not in stored]
    insert_ignoring_duplicates(session, MailPreference, fresh, ["email_hash", "topic"])
    changed = [topic for topic, on in choices.items() if topic in stored and stored[topic] != on]
    for topic in changed:
        session.execute(update(table).where(table.c.email_hash == hashed, table.c.topic == topic)
                        .values(subscribed=choices[topic], source=source[:100], updated_at=now))
    return len(fresh) + len(changed)
