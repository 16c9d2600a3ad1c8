"""Gapless document number series (invoices, credit notes) in `document_counters`.

A series is a formatted prefix, e.g. "INV-2026-": its row counts the numbers given out. The
issuer locks the row (PostgreSQL `FOR UPDATE`; SQLite's single writer already serialises),
numbers its documents and raises the count in its own transaction, so a rollback gives every
number back and two issuers never share one. The row stays locked until the caller commits:
issue numbers late in a transaction and keep what follows short.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tasks.store.db import is_postgres
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.models import DocumentCounter

DIGITS = 6  # INV-2026-000123


def series_prefix(template: str, timezone: str, now: datetime) -> str:
    """The template with "{year}" as the year it is in the store's time zone (INV-2026-)."""
    year = now.astimezone(ZoneInfo(timezone)).year
    return template.replace("{year}", str(year))


def lock_series(session: Session, series: str) -> int:
    """The numbers the series has issued so far, its row locked until the caller commits."""
    insert_ignoring_duplicates(session, DocumentCounter, [{"series": series, "issued": 0}],
                               ["series"])
    query = select(DocumentCounter.issued).where(DocumentCounter.series == series)
    if is_postgres(session):
        query = query.with_for_update()
    return int(session.scalar(query) or 0)


def take_numbers(session: Session, series: str, issued: int, count: int) -> list[str]:
    """The next `count` numbers after `issued` (from `lock_series`), recorded as given out."""
    if count <= 0:
        return []
    session.execute(update(DocumentCounter).where(DocumentCounter.series == series)
                    .values(issued=issued + count))
    return [f"{series}{n:0{DIGITS}d}" for n in range(issued + 1, issued + count + 1)]
