"""Unsubscribe links and the suppression list.

Marketing mail links to the preferences page, `{links_base_url}/u/{token}` (tasks/links.py,
Purpose.PREFERENCES, subject = the customer id), in its footer and in List-Unsubscribe, where an
RFC 8058 one-click POST unsubscribes at once (flows/pages/preferences.py). Mail to an address
with no customer id, and every mail sent before, carries the older link
`{links_base_url}/unsubscribe?token=...`, which keeps working.

An old token is ``<urlsafe base64 of the address>.<urlsafe base64 of HMAC-SHA256(secret, address)>``
(padding stripped), so a link names its address and cannot be forged or pointed at another one.
Suppressions are stored as sha256(lower(address)) and kept forever (GDPR Art. 21(3)); a stronger
reason (bounce, erasure) replaces a weaker one (unsubscribe) because it also stops transactional
mail.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.orm import Session

from tasks.links import TOKEN_LENGTH, LinkError, Purpose, link_url, read_token
from tasks.messaging.governor import MARKETING, SUPPRESSION_REASONS, email_hash
from tasks.runtime import Runtime
from tasks.settings import get_settings
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Customer, Erasure, Suppression

REASONS = SUPPRESSION_REASONS  # weakest first
_CONTEXT = b"journeys-unsubscribe:"


class UnsubscribeError(ValueError):
    """An unsubscribe token that is malformed or not signed by us; the message is one line."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(address: str, secret_key: str) -> bytes:
    return hmac.new(secret_key.encode(), _CONTEXT + address.encode(), hashlib.sha256).digest()


def normalise(address: str) -> str:
    return address.strip().lower()


def make_token(address: str, secret_key: str) -> str:
    """A signed token naming the (normalised) address."""
    address = normalise(address)
    return f"{_b64(address.encode())}.{_b64(_signature(address, secret_key))}"


def verify_token(token: str, secret_key: str) -> str:
    """The address a token names, or UnsubscribeError if it is malformed or tampered with."""
    payload, dot, signature = (token or "").strip().partition(".")
    if not dot or not payload or not signature:
        raise UnsubscribeError("unsubscribe token is malformed")
    try:
        address = _unb64(payload).decode("utf-8")
        given = _unb64(signature)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise UnsubscribeError("unsubscribe token is malformed") from exc
    if "@" not in address or not hmac.compare_digest(given, _signature(address, secret_key)):
        raise UnsubscribeError("unsubscribe token is not valid (bad signature)")
    return address


def unsubscribe_url(email: str, rt: Runtime) -> str:
    """The link marketing mail carries: {links_base_url}/unsubscribe?token=..."""
    base = rt.config.store.links_base_url.rstrip("/")
    token = make_token(email, rt.settings.secret_key)
    return f"{base}/unsubscribe?token={quote(token, safe='.-_')}"


def preferences_url(customer_id: int, issued: datetime, rt: Runtime) -> str:
    """The preferences page of a customer: {links_base_url}/u/{token}."""
    return link_url(rt.config.store.links_base_url, rt.settings.secret_key,
                    Purpose.PREFERENCES, customer_id, issued)


def marketing_links(rows: Sequence[Row[Any]], rt: Runtime) -> dict[int, str]:
    """row id → the unsubscribe link of each marketing row: the customer's /u/ page, or the
    address token for a row without a customer id. Issued on the row's creation day, so a
    re-rendered mail carries the same link."""
    return {row.id: preferences_url(row.customer_id, row.created_at, rt)
            if row.customer_id is not None else unsubscribe_url(row.to_addr, rt)
            for row in rows if row.msg_class == MARKETING}


def list_unsubscribe(url: str, mailto: str | None = None) -> str:
    """The List-Unsubscribe value: the one-click URL first (RFC 2369 clients use the left-most
    method they support, and RFC 8058 needs this one), then the mailto: if the store has one."""
    links = [f"<{url}>"]
    if mailto:
        links.append(f"<mailto:{mailto}?subject=unsubscribe>")
    return ", ".join(links)


def split_link(text: str) -> tuple[str, bool]:
    """(token, is a /u/ token) from a token or a whole link, old (?token=) or new (/u/...)."""
    text = (text or "").strip()
    parts = urlsplit(text)
    old = parse_qs(parts.query).get("token")
    if old:
        return old[0], False
    if "/" in parts.path:
        head, _, last = parts.path.rstrip("/").rpartition("/")
        return last, head.endswith("/u") or head == "u"
    return text, len(text) == TOKEN_LENGTH and "." not in text


def address_of_customer(session: Session, customer_id: int) -> str | None:
    """The address of a customer who is still here (not erased), or None."""
    if session.scalar(select(Erasure.id).where(Erasure.customer_id == customer_id)) is not None:
        return None
    customer = session.get(Customer, customer_id)
    return normalise(customer.email) if customer is not None and customer.email else None


def address_of_link(session: Session, text: str, secret_key: str, today: date) -> str:
    """The address an unsubscribe link (or its token) stands for, or UnsubscribeError."""
    token, preferences = split_link(text)
    if not preferences:
        return verify_token(token, secret_key)
    try:
        link = read_token(secret_key, token, Purpose.PREFERENCES, today)  # never expires
    except LinkError as exc:
        raise UnsubscribeError(f"unsubscribe link is not valid ({exc})") from None
    address = address_of_customer(session, link.subject)
    if address is None:
        raise UnsubscribeError("the link's customer is not known here (or was erased)")
    return address


def unsubscribe(
    session: Session,
    token: str,
    now: datetime,
    source: str = "link",
    *,
    secret_key: str | None = None,
) -> str:
    """Suppress the address a link or token stands for (old or /u/); returns the address."""
    address = address_of_link(session, token, secret_key or get_settings().secret_key,
                              now.date())
    suppress(session, address, "unsubscribe", now, source)
    return address


def suppress(session: Session, email: str, reason: str, now: datetime, source: str | None) -> None:
    """Suppress one address (bounce, complaint, unsubscribe, erasure); idempotent."""
    suppress_many(session, [email], reason, now, source)


def suppress_many(
    session: Session, emails: Sequence[str], reason: str, now: datetime, source: str | None
) -> None:
    """Suppress addresses in two statements; a stronger reason replaces a weaker one."""
    if reason not in REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}; expected one of {REASONS}")
    hashes = sorted({email_hash(email) for email in emails if email and email.strip()})
    if not hashes:
        return
    rows = [{"email_hash": h, "reason": reason, "source": source and source[:100],
             "created_at": now} for h in hashes]
    insert_ignoring_duplicates(session, Suppression, rows, ["email_hash"])
    weaker = REASONS[: REASONS.index(reason)]
    if weaker:
        table = Suppression.__table__
        statement = (
            update(table)
            .where(table.c.email_hash.in_(bindparam("b_hashes", expanding=True)),
                   table.c.reason.in_(weaker))
            .values(reason=reason, source=source and source[:100])
        )
        session.execute(statement, {"b_hashes": hashes})
