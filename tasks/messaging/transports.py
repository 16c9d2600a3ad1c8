"""How a batch of e-mails leaves: archived as .eml (file), over SMTP, or through Amazon SES.

Every transport answers one outcome per message, in order. The dispatcher decides what an
outcome means for the outbox row (retry, give up, never resend); a transport only reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tasks.settings import Settings

SMTP_TIMEOUT_SECONDS = 30.0
Status = Literal["sent", "failed", "deferred", "unknown"]


@dataclass(frozen=True)
class OutgoingMail:
    row_id: int  # messages.id
    effect_key: str
    sender: str  # envelope MAIL FROM
    recipient: str  # envelope RCPT TO
    data: bytes  # the whole mail as it goes on the wire (CRLF, 7-bit)
    sent_at: datetime  # its Date header

    def wire_bytes(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class SendOutcome:
    status: Status
    reason: str | None = None
    artifact_ref: str | None = None


class Transport(Protocol):
    def send_batch(self, messages: list[OutgoingMail]) -> list[SendOutcome]: ...


# --- file: one zip bundle of .eml files per batch in the artifact store -------------------


def bundle_key(messages: list[OutgoingMail], members: dict[str, bytes]) -> str:
    """`mail/yyyy/mm/dd/<hash>.zip`: the batch's day and a hash of its content.

    Content-addressed, so a retry after a crash (same mail, new Date header) writes a new
    bundle instead of colliding with the one the crashed attempt left behind.
    """
    day = messages[0].sent_at
    digest = hashlib.sha256()
    for name, data in sorted(members.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"mail/{day:%Y/%m/%d}/{digest.hexdigest()[:16]}.zip"


SAFE_MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,149}")
UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")


def member_name(effect_key: str) -> str:
    """The .eml name of a mail in its bundle: always a valid archive key, stable and unique.

    A plain key keeps its readable form ('order:7:confirm:confirmation:v2' →
    'order_7_confirm_confirmation_v2.eml', as every bundle written so far names it). Any other
    key (a '#', a newline, '/', non-ASCII, a very long key) gets a sanitised prefix and a
    short SHA-256 of the whole key, so two keys never share a name.
    """
    readable = effect_key.replace(":", "_")
    if SAFE_MEMBER.fullmatch(readable):
        return f"{readable}.eml"
    prefix = UNSAFE_RUN.sub("_", readable)[:80].strip("._-") or "mail"
    digest = hashlib.sha256(effect_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{prefix}-{digest}.eml"


class FileTransport:
    """"Sends" by archiving: the .eml files are the record of what would have gone out."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive

    def send_batch(self, messages: list[OutgoingMail]) -> list[SendOutcome]:
        if not messages:
            return []
        members = {member_name(m.effect_key): m.wire_bytes() for m in messages}
        refs = self.archive.put_bundle(bundle_key(messages, members), members)
        return [SendOutcome("sent", artifact_ref=refs[name]) for name in members]


# --- smtp: one connection per batch --------------------------------------------------------


class ConnectionLost(Exception):
    """The SMTP connection died; `outcome` says what that means for the message in flight."""

    def __init__(self, outcome: SendOutcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def reply_outcome(code: int, reply: bytes | str) -> SendOutcome:
    """4xx is temporary (defer), 5xx is permanent (fail); the server's words are the reason."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    status: Status = "failed" if 500 <= code < 600 else "deferred"
    return SendOutcome(status, f"{code} {text}"[:500])


class SmtpTransport:
    def __init__(self, host: str, port: int, settings: Settings) -> None:
        self.host, self.port, self.settings = host, port, settings

    def send_batch(self, messages: list[OutgoingMail]) -> list[SendOutcome]:
        if not messages:
            return []
        try:
            smtp = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            return [SendOutcome("deferred", f"smtp connect: {exc}")] * len(messages)
        try:
            return self._send_all(smtp, messages)
        finally:
            _quietly(smtp.quit)

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS)
        smtp.ehlo()
        if self.settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        if self.settings.smtp_user:
            smtp.login(self.settings.smtp_user, self.settings.smtp_password or "")
        return smtp

    def _send_all(self, smtp: smtplib.SMTP, messages: list[OutgoingMail]) -> list[SendOutcome]:
        outcomes: list[SendOutcome] = []
        for mail in messages:
            try:
                outcomes.append(_send_one(smtp, mail))
            except ConnectionLost as lost:
                outcomes.append(lost.outcome)
                break
        not_tried = SendOutcome("deferred", "smtp connection lost earlier in the batch")
        return outcomes + [not_tried] * (len(messages) - len(outcomes))


def _send_one(smtp: smtplib.SMTP, mail: OutgoingMail) -> SendOutcome:
    """MAIL, RCPT, DATA by hand: a lost connection before DATA is a retry, after it unknown."""
    try:
        for code, reply in (smtp.mail(mail.sender), smtp.rcpt(mail.recipient)):
            if code not in (250, 251):
                _quietly(smtp.rset)
                return reply_outcome(code, reply)
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise ConnectionLost(SendOutcome("deferred", f"smtp disconnected: {exc}")) from exc
    try:
        code, reply = smtp.data(mail.wire_bytes())
    except smtplib.SMTPDataError as exc:
        _quietly(smtp.rset)
        return reply_outcome(exc.smtp_code, exc.smtp_error)
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        lost = SendOutcome("unknown", f"smtp disconnected during DATA: {exc}")
        raise ConnectionLost(lost) from exc
    return SendOutcome("sent") if code == 250 else reply_outcome(code, reply)


def _quietly(action: Callable[[], object]) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):
        action()


# --- ses: Amazon SES v2 raw send -----------------------------------------------------------

SES_TEMPORARY_ERRORS = frozenset(
    {"TooManyRequestsException", "LimitExceededException", "SendingPausedException",
     "Throttling", "ThrottlingException", "ServiceUnavailable", "InternalFailure"}
)


class SesTransport:
    def __init__(self, client: Any) -> None:
        self.client = client

    def send_batch(self, messages: list[OutgoingMail]) -> list[SendOutcome]:
        return [self._send_one(m) for m in messages]

    def _send_one(self, mail: OutgoingMail) -> SendOutcome:
        from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            response = self.client.send_email(
                FromEmailAddress=mail.sender,
                Destination={"ToAddresses": [mail.recipient]},
                Content={"Raw": {"Data": mail.wire_bytes()}},
            )
        except ClientError as exc:
            return _ses_error_outcome(exc.response)
        except (ReadTimeoutError, ConnectionClosedError) as exc:
            return SendOutcome("unknown", f"ses: {exc}")
        except BotoConnectionError as exc:  # could not connect: nothing was sent
            return SendOutcome("deferred", f"ses: {exc}")
        return SendOutcome("sent", artifact_ref=f"ses:{response['MessageId']}")


def _ses_error_outcome(response: dict[str, Any]) -> SendOutcome:
    error = response.get("Error", {})
    code = error.get("Code", "Unknown")
    http_status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
    temporary = code in SES_TEMPORARY_ERRORS or http_status >= 500
    reason = f"ses {code}: {error.get('Message', '')}"
    return SendOutcome("deferred" if temporary else "failed", reason)


def open_transport(spec: str, settings: Settings, archive: Callable[[], Any]) -> Transport:
    """`file`, `smtp://host:port` or `ses` (JOURNEYS_MAIL_TRANSPORT).

    Takes what it needs, not the Runtime (which opens transports: no import circle), and the
    archive as a callable because only the file transport uses it and opening it may reach S3.
    """
    if spec == "file":
        return FileTransport(archive())
    if spec.startswith("smtp://"):
        url = urlsplit(spec)
        return SmtpTransport(url.hostname or "localhost", url.port or 25, settings)
    if spec == "ses":
        import boto3

        return SesTransport(boto3.client("sesv2"))
    raise ValueError(f"unknown mail transport {spec!r}: use file, smtp://host:port or ses")
