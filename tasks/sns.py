"""Amazon SNS message signatures, checked as AWS documents them, and SES deliveries for the inbox.

SNS signs fields of its JSON body, not the raw bytes: the string to sign is ``Name\\nvalue\\n``
for each signed field, in the order below (Subject only when present), verified with RSA
PKCS#1 v1.5 and SHA1 (SignatureVersion 1) or SHA256 (SignatureVersion 2) against the certificate
at SigningCertURL. That URL must be https on ``sns.<region>.amazonaws.com``; anything else is
refused before it is fetched. Certificates are fetched once per process and kept.

JOURNEYS_SNS_CERTIFICATES names a folder of trusted certificates to read instead of fetching:
``<folder>/<host>/<file>`` for ``https://<host>/<file>``. The URL rules, the string to sign and
the signature check are the same either way; only where the certificate's bytes come from
differs (tests put their own self-signed certificate there; an edge without internet access
can pin AWS's).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tasks.deliveries import Delivery

PROVIDER = "ses"
NOTIFICATION = "Notification"
SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
HASH_OF_VERSION: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1, "2": hashes.SHA256}
CERT_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com")
CERT_PATH = re.compile(r"/[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_CERTIFICATE = 64 * 1024
CACHE_SIZE = 64


class Refused(Exception):
    """The message is not provably from SNS (the text never quotes the body)."""


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The bytes SNS signed for this message's Type."""
    names = SIGNED_FIELDS.get(message.get("Type"))  # type: ignore[arg-type]
    if names is None:
        raise Refused("unknown message Type")
    parts = []
    for name in names:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise Refused(f"signed field {name} missing or not a string")
        parts.append(f"{name}\n{value}\n")
    return "".join(parts).encode("utf-8")


def certificate_url_problem(url: Any) -> str | None:
    """Why SNS could not have named this certificate URL, or None if it could."""
    if not isinstance(url, str):
        return "SigningCertURL missing"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "SigningCertURL malformed"
    if parts.scheme != "https":
        return "SigningCertURL is not https"
    if parts.username or parts.password or port not in (None, 443) \
            or not CERT_HOST.fullmatch(parts.hostname or ""):
        return "SigningCertURL is not on an sns.<region>.amazonaws.com host"
    if parts.query or parts.fragment or not CERT_PATH.fullmatch(parts.path):
        return "SigningCertURL path is not a certificate file"
    return None


def fetch_certificate(url: str) -> bytes:
    """The certificate's PEM bytes from AWS over verified HTTPS, no redirects."""
    import httpx

    try:
        answer = httpx.get(url, timeout=5.0, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise Refused(f"signing certificate not fetched ({type(exc).__name__})") from None
    if answer.status_code != 200 or len(answer.content) > MAX_CERTIFICATE:
        raise Refused(f"signing certificate not fetched (HTTP {answer.status_code})")
    return answer.content


def folder_reader(folder: Path) -> Callable[[str], bytes]:
    """Read `https://<host>/<file>` from `<folder>/<host>/<file>`; never the network."""

    def read(url: str) -> bytes:
        parts = urlsplit(url)
        path = folder / (parts.hostname or "") / parts.path.lstrip("/")
        try:
            return path.read_bytes()[:MAX_CERTIFICATE + 1]
        except OSError:
            raise Refused("signing certificate is not among the trusted ones") from None

    return read


@dataclass
class Certificates:
    """Signing keys by certificate URL: read once (AWS or the trusted folder), then kept."""

    read: Callable[[str], bytes] = fetch_certificate
    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_setting(cls, folder: str | None) -> Certificates:
        return cls(folder_reader(Path(folder))) if folder else cls()

    def public_key(self, url: str, now: datetime) -> rsa.RSAPublicKey:
        with self.lock:
            key = self.keys.get(url)
        if key is None:
            key = rsa_key(self.read(url), now)
            with self.lock:
                if len(self.keys) >= CACHE_SIZE:
                    self.keys.pop(next(iter(self.keys)))
                self.keys[url] = key
        return key


def rsa_key(pem: bytes, now: datetime) -> rsa.RSAPublicKey:
    """The RSA key of a PEM certificate that is valid at `now`."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Refused("signing certificate unreadable") from None
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise Refused("signing certificate not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refused("signing certificate has no RSA key")
    return key


def parse(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError:
        raise Refused("body is not an SNS JSON message") from None
    if not isinstance(message, dict):
        raise Refused("body is not an SNS JSON message")
    return message


def verified(body: bytes, certificates: Certificates, topics: Iterable[str], now: datetime
             ) -> dict[str, Any]:
    """The SNS message in `body` if SNS signed it (and its topic is allowed), else Refused."""
    message = parse(body)
    allowed = set(topics)
    if allowed and message.get("TopicArn") not in allowed:
        raise Refused("TopicArn is not in JOURNEYS_SNS_TOPIC_ARNS")
    algorithm = HASH_OF_VERSION.get(str(message.get("SignatureVersion")))
    if algorithm is None:
        raise Refused("SignatureVersion is not 1 or 2")
    signed = string_to_sign(message)
    problem = certificate_url_problem(message.get("SigningCertURL"))
    if problem:
        raise Refused(problem)
    try:
        signature = base64.b64decode(str(message.get("Signature") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("Signature is not base64") from None
    key = certificates.public_key(message["SigningCertURL"], now)
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise Refused("signature does not match") from None
    return message


def topic_arns(setting: str | None) -> tuple[str, ...]:
    """JOURNEYS_SNS_TOPIC_ARNS: comma- or space-separated ARNs; empty allows every topic."""
    return tuple(arn for arn in re.split(r"[,\s]+", setting or "") if arn)


def ses_type(message: str | None) -> str | None:
    """SES's notificationType (or, for configuration-set events, eventType) in an SNS Message."""
    try:
        data = json.loads(message or "")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("notificationType") or data.get("eventType")
    return kind if isinstance(kind, str) and kind else None


def ses_delivery(body: bytes, message: dict[str, Any]) -> Delivery:
    """A verified SNS message as an inbox delivery: topic = the SES notification type (a
    confirmation keeps its SNS Type), id = the SNS MessageId (the same on SNS's retries)."""
    kind = message["Type"]
    topic = (ses_type(message.get("Message")) or NOTIFICATION) if kind == NOTIFICATION else kind
    return Delivery(provider=PROVIDER, topic=topic, delivery_id=str(message["MessageId"]),
                    body=body, event_id=None, triggered_at=_instant(message.get("Timestamp")))


def _instant(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment
