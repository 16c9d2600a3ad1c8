"""Unsubscribe links and the suppression list.

A token is ``<urlsafe base64 of the address>.<urlsafe base64 of HMAC-SHA256(secret, address)>``
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
from datetime import datetime
from urllib.parse import quote

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from tasks.messaging.governor import SUPPRESSION_REASONS, email_hash
from tasks.runtime import Runtime
from tasks.settings import get_settings
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Suppression

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


def unsubscribe(
    session: Session,
    token: str,
    now: datetime,
    source: str = "link",
    *,
    secret_key: str | None = None,
) -> str:
    """Verify the token and suppress its address for marketing; returns the address."""
    address = verify_token(token, secret_key or get_settings().secret_key)
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
