"""One entry per kind of input: read a file of it, or store a batch of its records.

Files and webhooks share these: a line of an ingest file and a webhook body become the same
records, gated and quarantined with the same reasons (README: Webhooks in).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from tasks import intake
from tasks.runtime import Runtime

KINDS = ("orders", "products", "shipments", "events", "feedback")


def read(kind: str, path: Path, fmt: str | None) -> Iterator[Any]:
    """The reader for a kind of input; each detects its format unless `fmt` is given."""
    from tasks.aftercare.feedback import read_feedback
    from tasks.tracking.formats import read_events, read_shipments

    readers = {"orders": intake.read_orders, "products": intake.read_products,
               "shipments": read_shipments, "events": read_events,
               "feedback": lambda p, _fmt: read_feedback(p)}
    return readers[kind](path, fmt)


def gate_events(records: list[Any], now: datetime) -> list[Any]:
    """The tracking-events suite over the batch; failing events become quarantine records.

    A repeated event id is not a failure here: intake counts it as a duplicate.
    """
    from tasks.quality.frames import tracking_frame
    from tasks.quality.gate import quarantine_reasons, validate_frame
    from tasks.tracking.formats import EVENT

    events = [r for r in records if not isinstance(r, intake.Rejected)]
    if not events:
        return records
    rows = [{"event_id": e.event_id, "tracking_number": e.tracking_number, "tag": e.tag,
             "checkpoint_time": e.occurred_at.isoformat()} for e in events]
    failures = validate_frame("tracking_events", tracking_frame(rows, now)).failures
    refused = {id(events[pos]): quarantine_reasons(found) for pos, found in failures.items()}
    return [r.rejected(EVENT, refused[id(r)], r.event_id) if id(r) in refused else r
            for r in records]


def write(
    kind: str, session: Session, records: list[Any], now: datetime, rt: Runtime,
    max_failure_rate: float | None = None,
) -> intake.IntakeResult:
    """Store one batch of a kind (orders pass the quality gate first).

    `max_failure_rate` overrides the configured limit above which a batch of orders is refused
    whole (a broken feed); the inbox passes 1.0: webhooks are separate records, not a feed.
    """
    from tasks.aftercare.feedback import ingest_feedback
    from tasks.tracking.ingest import ingest_events, ingest_shipments

    if kind == "orders":
        limit = (rt.config.quality.failure_limit(len(records))
                 if max_failure_rate is None else max_failure_rate)
        return intake.ingest_orders(session, records, now, max_failure_rate=limit)
    if kind == "events":
        records = gate_events(records, now)
    writers = {"products": lambda: intake.ingest_products(session, records, now),
               "shipments": lambda: ingest_shipments(session, records, now, rt.config,
                                                     rt.settings.secret_key),
               "events": lambda: ingest_events(session, records, now),
               "feedback": lambda: ingest_feedback(session, records, now, rt)}
    return writers[kind]()
