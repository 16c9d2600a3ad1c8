"""Bounces and complaints → the suppression list that the governor reads at send time.

Two ways in, one writer: SES notifications (through SNS, the edge and the inbox drain: the
topic actions below) and a provider's bounce/complaint list (`journeys ingest bounces`).
A permanent bounce suppresses "bounce" (no mail at all, governor ``block_transactional``); a
complaint suppresses "complaint" (no marketing). Transient and undetermined bounces suppress
nothing: the address may work tomorrow. Suppressions are keyed by the governor's
``email_hash``, one row per address, kept forever; a stronger reason replaces a weaker one, and
an address already suppressed as strongly (or erased: keyed hash only) is left alone.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from tasks.deliveries import Body, Outcome
from tasks.inbox import IGNORED, PROCESSED
from tasks.messaging.governor import (
    SUPPRESSION_REASONS,
    email_hash,
    load_suppressions,
    stronger,
)
from tasks.runtime import Runtime
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import Suppression

SUPPRESSED, ALREADY = "suppressed", "already suppressed"
LIST_TYPES = ("bounce", "complaint")
BATCH = 1000


@dataclass(frozen=True)
class Entry:
    """One address to suppress, why, and where that came from (kept on the row)."""

    email: str  # normalised: trimmed, lower-cased
    reason: str  # bounce | complaint
    source: str


class _Addressed(NamedTuple):
    to_addr: str  # what governor.load_suppressions reads from an outbox row


def address(raw: Any) -> str | None:
    """A plausible mailbox address, trimmed and lower-cased ("Name <a@b>" allowed), or None."""
    if not isinstance(raw, str):
        return None
    found = parseaddr(raw.strip())[1].strip().lower()
    local, at, domain = found.rpartition("@")
    if not at or not local or "." not in domain or len(found) > 254 \
            or any(c.isspace() for c in found):
        return None
    return found


def suppress_entries(session: Session, entries: Sequence[Entry], now: datetime,
                     secret_key: str) -> dict[str, str]:
    """Write the entries' suppressions (three statements at most); address → SUPPRESSED (new,
    or stronger than before) or ALREADY (as strong a reason or stronger is on file)."""
    wanted: dict[str, Entry] = {}
    for entry in entries:
        held = wanted.get(entry.email)
        if held is None or stronger(held.reason, entry.reason) != held.reason:
            wanted[entry.email] = entry
    on_file = load_suppressions(session, [_Addressed(a) for a in wanted], secret_key)
    outcome, changes = {}, []
    for email, entry in wanted.items():
        had = on_file.get(email_hash(email))
        if had is not None and stronger(had, entry.reason) == had:
            outcome[email] = ALREADY
            continue
        outcome[email] = SUPPRESSED
        changes.append({"email_hash": email_hash(email), "reason": entry.reason,
                        "source": entry.source[:100], "created_at": now})
    insert_ignoring_duplicates(session, Suppression, changes, ["email_hash"])
    strengthen(session, changes)
    return outcome


def strengthen(session: Session, rows: list[dict[str, Any]]) -> None:
    """Rows that already held a weaker reason take the new one (one UPDATE per reason)."""
    table = Suppression.__table__
    for reason in {row["reason"] for row in rows}:
        weaker = SUPPRESSION_REASONS[: SUPPRESSION_REASONS.index(reason)]
        params = [{"b_hash": r["email_hash"], "b_source": r["source"]}
                  for r in rows if r["reason"] == reason]
        if weaker:
            session.execute(update(table).where(table.c.email_hash == bindparam("b_hash"),
                                                table.c.reason.in_(weaker))
                            .values(reason=reason, source=bindparam("b_source")), params)


# --- SES notifications (inbox topic actions) ---------------------------------------------


def ses_message(body: Body) -> dict[str, Any] | None:
    """The SES notification inside a stored SNS envelope (its `Message`, JSON again)."""
    try:
        message = json.loads(body.data.get("Message") or "")
    except (ValueError, TypeError):
        return None
    return message if isinstance(message, dict) else None


def bounce_entries(message: dict[str, Any]) -> tuple[list[Entry], str | None]:
    """A permanent bounce's recipients, or why the notification suppresses nobody."""
    bounce = message.get("bounce") if isinstance(message.get("bounce"), dict) else {}
    kind, sub = bounce.get("bounceType"), bounce.get("bounceSubType")
    if kind != "Permanent":
        return [], f"{str(kind or 'unknown').lower()} bounce: not suppressed"
    recipients = bounce.get("bouncedRecipients")
    return _entries(recipients, "emailAddress", "bounce", f"ses bounce {kind}/{sub}")


def complaint_entries(message: dict[str, Any]) -> tuple[list[Entry], str | None]:
    """A complaint's recipients, or why it suppresses nobody (a "not-spam" report)."""
    complaint = message.get("complaint") if isinstance(message.get("complaint"), dict) else {}
    feedback = complaint.get("complaintFeedbackType")
    if feedback == "not-spam":
        return [], "complaint feedback type not-spam: not suppressed"
    recipients = complaint.get("complainedRecipients")
    return _entries(recipients, "emailAddress", "complaint",
                    f"ses complaint {feedback or 'no feedback report'}")


def _entries(recipients: Any, key: str, reason: str, source: str
             ) -> tuple[list[Entry], str | None]:
    found = [address(r.get(key)) for r in recipients or [] if isinstance(r, dict)] \
        if isinstance(recipients, list) else []
    entries = [Entry(email, reason, source) for email in found if email]
    return entries, None if entries else f"{reason}: no recipient address in the notification"


def act(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime,
        read: Callable[[dict[str, Any]], tuple[list[Entry], str | None]]) -> dict[int, Outcome]:
    """Suppress what each notification names; one write for the whole batch."""
    outcomes: dict[int, Outcome] = {}
    named: dict[int, list[Entry]] = {}
    for body in bodies:
        message = ses_message(body)
        entries, why = read(message) if message is not None else ([], "SES Message unreadable")
        if why:
            outcomes[body.row_id] = (IGNORED, why)
        else:
            named[body.row_id] = entries
    written = suppress_entries(session, [e for es in named.values() for e in es], now,
                               rt.settings.secret_key)
    for row_id, entries in named.items():
        fresh = sum(written[e.email] == SUPPRESSED for e in entries)
        outcomes[row_id] = (PROCESSED, f"{entries[0].reason}: {fresh} suppressed, "
                                       f"{len(entries) - fresh} already suppressed")
    return outcomes


def on_bounces(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
               ) -> dict[int, Outcome]:
    """Inbox action for ("ses", "Bounce")."""
    return act(session, bodies, now, rt, bounce_entries)


def on_complaints(session: Session, bodies: Sequence[Body], now: datetime, rt: Runtime
                  ) -> dict[int, Outcome]:
    """Inbox action for ("ses", "Complaint")."""
    return act(session, bodies, now, rt, complaint_entries)


# --- a provider's list (journeys ingest bounces) ------------------------------------------


@dataclass
class ListResult:
    """What an ingested list did: every row is counted once; rejected rows keep their line."""

    received: int = 0
    suppressed: int = 0
    already: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"received": self.received, "suppressed": self.suppressed,
                "already suppressed": self.already, "rejected": len(self.rejected)}


class ListError(ValueError):
    """The file as a whole cannot be read as a bounce list (one line, for the CLI)."""


def read_list(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, {email, type, reason} or why the line is unreadable) for each record:
    JSON Lines when the file starts with "{", else CSV with a header (email, type[, reason])."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ListError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if text.lstrip().startswith("{"):
        yield from _json_lines(text)
    else:
        yield from _csv_rows(text, path)


def _json_lines(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield number, f"not valid JSON: {exc.msg}"
            continue
        yield number, record if isinstance(record, dict) else "expected a JSON object"


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    names = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if not {"email", "type"} <= set(names):
        raise ListError(f"{path}: expected a CSV header with columns email, type[, reason] "
                        "(or JSON Lines)")
    for row in reader:
        record = {key: row.get(names[key]) for key in ("email", "type", "reason") if key in names}
        yield reader.line_num, record


def list_entry(record: dict[str, Any], origin: str) -> Entry | str:
    """One list record as an entry, or why it is rejected."""
    kind = str(record.get("type") or "").strip().lower()
    if kind not in LIST_TYPES:
        return f"type {record.get('type')!r} is not bounce or complaint"
    email = address(record.get("email"))
    if email is None:
        return "email missing or not an address"
    note = str(record.get("reason") or "").strip()
    return Entry(email, kind, f"{origin}: {note}" if note else origin)


def ingest_list(session_for: Callable[[], Any], path: Path, now: datetime, secret_key: str
                ) -> ListResult:
    """Suppress a provider's list in batches (one transaction each); bad rows are reported."""
    result, batch = ListResult(), []
    seen: dict[str, str] = {}
    for number, record in read_list(path):
        result.received += 1
        entry = list_entry(record, f"list {path.name}") if isinstance(record, dict) else record
        if isinstance(entry, str):
            result.rejected.append((number, entry))
        elif stronger(seen.get(entry.email), entry.reason) == seen.get(entry.email):
            result.already += 1  # this file named it before, as strongly
        else:
            seen[entry.email] = entry.reason
            batch.append(entry)
        if len(batch) >= BATCH:
            _write_batch(session_for, batch, now, secret_key, result)
    _write_batch(session_for, batch, now, secret_key, result)
    return result


def _write_batch(session_for: Callable[[], Any], batch: list[Entry], now: datetime,
                 secret_key: str, result: ListResult) -> None:
    if not batch:
        return
    with session_for() as session:
        written = suppress_entries(session, batch, now, secret_key)
    fresh = sum(status == SUPPRESSED for status in written.values())
    result.suppressed += fresh
    result.already += len(batch) - fresh
    batch.clear()
