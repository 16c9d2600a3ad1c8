"""The tokens in every link we mail: opaque, authenticated, scoped to one purpose, expiring.

A token is the AES-SIV encryption (RFC 5297; deterministic authenticated encryption) of
`version | purpose | subject id | extra id | issued day`, base64url without padding: 48
characters that name no address, no name and no sequential id, cannot be forged or pointed at
another order, and come out the same for the same link (a re-rendered mail carries the same
link). Nothing is stored per link: the page reads the subject's rows, so an erased customer's
links find nothing and get the friendly page. `purpose` keeps an order page's token from
opening the survey or the preferences page.

The key is derived from JOURNEYS_SECRET_KEY; a new key makes earlier links show the friendly
page (key rotation with a grace period is issue 19's).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from datetime import date, datetime
from enum import IntEnum
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

VERSION = 1
_LAYOUT = struct.Struct(">BBQQH")  # version, purpose, subject, extra, issued day
_EPOCH = date(2020, 1, 1)
_CONTEXT = [b"journeys-link"]
TOKEN_LENGTH = 48


class Purpose(IntEnum):
    """What a link opens; its subject is an order id or a customer id (never shown)."""

    ORDER = 1  # /o/{token}: the order page (subject: order id)
    FEEDBACK = 2  # /f/{token}: the delivery survey (order id)
    REVIEW = 3  # /r/{token}: a review of one line (order id, extra: order line id)
    PREFERENCES = 4  # /u/{token}: unsubscribe and topics (customer id)
    LOYALTY = 5  # /l/{token}: points and tier (customer id)
    RETURNS = 6  # /returns/{token}: start or follow a return (order id)


PATHS = {Purpose.ORDER: "o", Purpose.FEEDBACK: "f", Purpose.REVIEW: "r",
         Purpose.PREFERENCES: "u", Purpose.LOYALTY: "l",
         Purpose.RETURNS: "returns"}


class LinkError(ValueError):
    """A token that is malformed, not ours, for another page, or expired. Pages answer all of
    these alike (the friendly page), so a guesser learns nothing about what exists."""


@dataclass(frozen=True)
class Link:
    purpose: Purpose
    subject: int
    extra: int
    issued: date


@lru_cache(maxsize=4)
def _cipher(secret_key: str) -> AESSIV:
    return AESSIV(hashlib.sha512(b"journeys-links-v1:" + secret_key.encode()).digest())


def make_token(secret_key: str, purpose: Purpose, subject: int, issued: date | datetime,
               extra: int = 0) -> str:
    day = issued.date() if isinstance(issued, datetime) else issued
    payload = _LAYOUT.pack(VERSION, purpose, subject, extra, (day - _EPOCH).days)
    sealed = _cipher(secret_key).encrypt(payload, _CONTEXT)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def read_token(secret_key: str, token: str, purpose: Purpose, today: date,
               lifetime_days: int = 0) -> Link:
    """The link a token names, or LinkError; `lifetime_days` 0 means it never expires."""
    link = _open(secret_key, token)
    if link.purpose != purpose:
        raise LinkError("token is for another page")
    if lifetime_days and (today - link.issued).days > lifetime_days:
        raise LinkError("token expired")
    return link


def _open(secret_key: str, token: str) -> Link:
    if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not token.isascii():
        raise LinkError("token is malformed")
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = _cipher(secret_key).decrypt(sealed, _CONTEXT)
        version, purpose, subject, extra, day = _LAYOUT.unpack(payload)
        kind = Purpose(purpose)
    except (binascii.Error, InvalidTag, struct.error, ValueError) as exc:
        raise LinkError("token is not ours") from exc
    if version != VERSION:
        raise LinkError("token version unknown")
    return Link(kind, subject, extra, date.fromordinal(_EPOCH.toordinal() + day))


def link_url(base_url: str, secret_key: str, purpose: Purpose, subject: int,
             issued: date | datetime, extra: int = 0) -> str:
    """`{links_base_url}/{o|f|r|u|l}/{token}`."""
    token = make_token(secret_key, purpose, subject, issued, extra)
    return f"{base_url.rstrip('/')}/{PATHS[purpose]}/{token}"


def mask(path: str) -> str:
    """A request path with any token cut to its first 6 characters (for logs)."""
    path, mark, query = path.partition("?")
    parts = path.split("/")
    return "/".join(p[:6] + "…" if len(p) == TOKEN_LENGTH else p for p in parts) + mark + query
