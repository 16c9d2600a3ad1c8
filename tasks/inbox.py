"""The webhook inbox: every delivery is stored before it is acknowledged, and drained by sweeps.

The edge writes one row per delivery (UNIQUE provider + delivery id, so a retried delivery is
stored once). A drain turns pending rows into the same records a file would give and hands them
to the same writers (tasks/intake/writers.py), in two transactions: the records into the app
database, then each row's outcome into the inbox. A crash between the two processes the rows
again, which intake absorbs (a known version is a duplicate): at least once, effects once.

Row statuses: pending (not drained yet, or waiting for what it refers to), processed (handed to
intake; what intake made of it is in the run's counts), quarantined (intake refused it; the
quarantine entry has the reasons), ignored (a topic journeys does not act on; kept, with why),
failed (processing raised; the row keeps the error, the log the traceback; rerun with
`journeys inbox retry` once fixed).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.engine import Row, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from tasks.deliveries import WAIT_LIMIT, Body, Delivery
from tasks.faults import fault_point
from tasks.intake.ingest import IntakeResult, chunks, quarantine_records
from tasks.intake.schema import OrderIn, Rejected, sha256_text
from tasks.intake.writers import write
from tasks.runtime import Runtime
from tasks.settings import Settings
from tasks.states import InboxStatus
from tasks.store.db import engine_for, normalise_url, session_scope
from tasks.store.journal import insert_ignoring_duplicates
from tasks.store.migrate import ensure_schema
from tasks.store.models import InboxDelivery, Order, Quarantine, Shipment

log = logging.getLogger("journeys.inbox")
# A delivery's status (tasks/states.py): processing FAILED keeps the error for an engineer.
PENDING, PROCESSED = InboxStatus.PENDING, InboxStatus.PROCESSED
QUARANTINED, IGNORED, FAILED = InboxStatus.QUARANTINED, InboxStatus.IGNORED, InboxStatus.FAILED

# (provider, topic) → the kind of input it is; the body is that kind's record as files hold it.
KIND_OF_TOPIC = {
    ("shopify", "orders/create"): "orders",
    ("shopify", "orders/updated"): "orders",
    ("shopify", "orders/paid"): "orders",
    ("shopify", "orders/cancelled"): "orders",
    ("shopify", "fulfillments/create"): "shipments",
    ("shopify", "fulfillments/update"): "shipments",
    ("shopify", "products/create"): "products",
    ("shopify", "products/update"): "products",
    ("aftership", "tracking_update"): "events",
    ("aftership", "edd_revise"): "events",
    ("aftership", "tracking_pending_time"): "events",
}
# (provider, topic) → "module:function" acting on such deliveries that are not intake records
# (privacy requests, refunds, consent ...). An action takes (session, bodies, now, rt) and
# returns {inbox row id: (outcome, reason)} for each body; it runs in the drain's transaction.
ACTION_OF_TOPIC: dict[tuple[str, str], str] = {
    ("ses", "Bounce"): "tasks.messaging.bounces:on_bounces",
    ("ses", "Complaint"): "tasks.messaging.bounces:on_complaints",
    ("shopify", "customers/data_request"): "tasks.privacy_requests:export_customer_data",
    ("shopify", "customers/redact"): "tasks.privacy_requests:redact_customers",
    ("shopify", "shop/redact"): "tasks.privacy_requests:redact_shop",
    ("shopify", "refunds/create"): "tasks.lifecycle:on_refunds",
    ("shopify", "orders/cancelled"): "tasks.lifecycle:on_orders_cancelled",
    ("shopify", "order_transactions/create"): "tasks.lifecycle:on_transactions",
    ("shopify", "customers/create"): "tasks.lifecycle:on_customers",
    ("shopify", "customers/update"): "tasks.lifecycle:on_customers",
    ("shopify", "products/delete"): "tasks.lifecycle:on_products_deleted",
    ("shopify", "returns/request"): "tasks.returns.shopify:on_return_requests",
    ("shopify", "returns/approve"): "tasks.returns.shopify:on_return_approvals",
    ("shopify", "returns/decline"): "tasks.returns.shopify:on_return_declines",
    ("shopify", "returns/close"): "tasks.returns.shopify:on_return_closes",
}
FORMAT_OF_PROVIDER = {"shopify": "shopify", "aftership": "aftership"}
QUARANTINE_KIND = {"orders": "order", "products": "product", "shipments": "shipment",
                   "events": "tracking_event"}


def inbox_url(settings: Settings) -> str:
    """The inbox's database: its own setting; else the app database, except beside SQLite.

    A SQLite sweep holds the write lock for a whole batch; the edge must answer within a second,
    so with SQLite the inbox is a file of its own next to the app database.
    """
    if settings.inbox_url:
        return settings.inbox_url
    url = make_url(normalise_url(settings.database_url))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return settings.database_url
    return url.set(database=str(Path(url.database).with_name("inbox.db"))).render_as_string(
        hide_password=False)


@lru_cache(maxsize=8)
def inbox_engine(url: str, app_url: str) -> Engine:
    """The inbox engine, its table created: by the migrations when it is the app database."""
    engine = engine_for(url)
    if normalise_url(url) == normalise_url(app_url):
        ensure_schema(engine)
    else:
        InboxDelivery.__table__.create(engine, checkfirst=True)
    return engine


def store(session: Session, deliveries: Sequence[Delivery], now: datetime) -> None:
    """Insert deliveries; one already stored (a retry) is left as it is."""
    rows = [{"provider": d.provider, "topic": d.topic[:60], "delivery_id": d.delivery_id[:200],
             "event_id": d.event_id and d.event_id[:200], "triggered_at": d.triggered_at,
             "shop": d.shop and d.shop[:255], "body": d.body, "received_at": now,
             "status": PENDING, "reason": None, "attempts": 0, "processed_at": None}
            for d in deliveries]
    insert_ignoring_duplicates(session, InboxDelivery, rows, ["provider", "delivery_id"])


# ---------------------------------------------------------------- draining


@dataclass
class DrainResult:
    """What a drain did with the rows it took: by outcome, and intake's counts by kind."""

    taken: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    intake: dict[str, IntakeResult] = field(default_factory=dict)
    # (provider, outcome) → rows: what the alerts watch (a provider gone quiet, or refused)
    by_provider: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, other: DrainResult) -> None:
        self.taken += other.taken
        self.outcomes.update(other.outcomes)
        self.by_provider.update(other.by_provider)
        for kind, result in other.intake.items():
            self.intake.setdefault(kind, IntakeResult()).add(result)

    def as_dict(self) -> dict[str, Any]:
        return {"taken": self.taken, **{s: self.outcomes[s] for s in
                                        (PROCESSED, QUARANTINED, IGNORED, FAILED, "waiting")},
                "intake": {kind: r.as_dict() for kind, r in self.intake.items()}}


@dataclass
class _Routed:
    """One inbox row's records (or why it has none) on the way to intake."""

    row: Row[Any]
    kind: str | None
    records: list[Any]
    outcome: str | None = None  # set when decided before intake (ignored, quarantined, waiting)
    reason: str | None = None


def drain(inbox: Engine, app: Engine, now: datetime, rt: Runtime, limit: int = 1000
          ) -> DrainResult:
    """Drain pending deliveries in batches of `limit`, oldest first, until none is left to take.

    Rows still waiting for their order or parcel stay pending; one pass takes each row once.
    """
    total, after_id = DrainResult(), 0
    while True:
        with session_scope(inbox) as session:
            rows = pending_rows(session, limit, after_id)
        if not rows:
            return total
        total.add(drain_rows(inbox, app, rows, now, rt))
        after_id = rows[-1].id


def pending_rows(session: Session, limit: int, after_id: int = 0) -> list[Row[Any]]:
    table = InboxDelivery.__table__
    query = (select(table).where(table.c.status == PENDING, table.c.id > after_id)
             .order_by(table.c.id).limit(limit))
    return list(session.execute(query))


def drain_rows(inbox: Engine, app: Engine, rows: list[Row[Any]], now: datetime, rt: Runtime
               ) -> DrainResult:
    """One batch; if it fails for a reason of its own (not a database that is away), each row
    again alone, so one delivery that breaks intake never holds back the others (or the sweep
    and its mail behind them). A row that fails alone is marked failed, with the reason."""
    try:
        return drain_batch(inbox, app, rows, now, rt)
    except (OperationalError, InterfaceError):
        raise  # the database: every row would fail alike; the run fails and is retried
    except Exception as exc:  # noqa: BLE001 - a bug or a body no code foresaw
        if len(rows) > 1:
            result = DrainResult()
            for row in rows:
                result.add(drain_rows(inbox, app, [row], now, rt))
            return result
        log.exception("inbox delivery %s (%s %s) failed", rows[0].id, rows[0].provider,
                      rows[0].topic)
        return mark_failed(inbox, rows[0], exc, now)


def mark_failed(inbox: Engine, row: Row[Any], exc: Exception, now: datetime) -> DrainResult:
    item = _Routed(row, None, [], FAILED, f"failed: {type(exc).__name__}: {exc}"[:500])
    with session_scope(inbox) as session:
        record_outcomes(session, [item], now)
    result = DrainResult(taken=1)
    result.outcomes[FAILED] += 1
    result.by_provider[(row.provider, FAILED)] += 1
    return result


def drain_batch(inbox: Engine, app: Engine, rows: list[Row[Any]], now: datetime, rt: Runtime
                ) -> DrainResult:
    """Records into the app database (one transaction), then outcomes into the inbox."""
    routed = [route(row) for row in rows]
    result = DrainResult(taken=len(rows))
    with session_scope(app) as session:
        mark_waiting(session, routed, now)
        mark_stale_orders(session, routed)
        unreadable = [r.records[0] for r in routed if r.outcome == QUARANTINED]
        quarantine_records(session, unreadable, now)
        for kind, records in records_by_kind(routed).items():
            result.intake[kind] = write(kind, session, records, now, rt, max_failure_rate=1.0)
        remember_versions(session, routed)
        apply_embedded_refunds(session, routed, now, rt)
        run_actions(session, routed, now, rt)
        refused = quarantined_fingerprints(session, routed)
        fault_point("inbox:drain:before_commit")
    # A crash here leaves the rows pending with their records written: the next drain takes
    # them again, and every writer and action is keyed, so the second pass changes nothing.
    fault_point("inbox:drain:after_commit")
    for item in routed:
        if item.outcome is None:
            item.outcome = QUARANTINED if fingerprint(item.row) in refused else PROCESSED
        result.outcomes[item.outcome] += 1
        result.by_provider[(item.row.provider, item.outcome)] += 1
    with session_scope(inbox) as session:
        record_outcomes(session, routed, now)
    return result


def route(row: Row[Any]) -> _Routed:
    """The records a delivery's body maps to, or the reason it maps to none."""
    kind = KIND_OF_TOPIC.get((row.provider, row.topic))
    if (row.provider, row.topic) in ACTION_OF_TOPIC:
        kind = "action"
    if kind is None:
        return _Routed(row, None, [], IGNORED, f"topic {row.topic} is not acted on")
    text, origin = body_text(row), f"inbox {row.provider} {row.topic} #{row.id}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        data = f"not valid JSON: {exc}"
    if not isinstance(data, dict):
        reason = data if isinstance(data, str) else "expected a JSON object"
        if kind == "action":  # no intake record to quarantine: the row keeps body and reason
            return _Routed(row, kind, [], IGNORED, reason)
        rejected = Rejected(QUARANTINE_KIND[kind], row.provider, text,
                            [{"field": "_record", "reason": reason}], origin)
        return _Routed(row, kind, [rejected], QUARANTINED, reason)
    if unstorable := unstorable_text(data):  # no database can hold it: refused whole
        reason = f"{unstorable}: the body cannot be stored"
        if kind == "action":
            return _Routed(row, kind, [], IGNORED, reason)
        rejected = Rejected(QUARANTINE_KIND[kind], row.provider, text,
                            [{"field": "_record", "reason": reason}], origin)
        return _Routed(row, kind, [rejected], QUARANTINED, reason)
    if kind == "action":
        return _Routed(row, kind, [Body(row.id, row.topic, data, row.received_at, row.shop)])
    return _Routed(row, kind, records_of(kind, FORMAT_OF_PROVIDER[row.provider], data, text,
                                         origin))


def unstorable_text(value: Any) -> str | None:
    """Why a parsed body holds text no database can store (NUL, an unpaired surrogate)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character"
        return "contains an unpaired surrogate" if UNPAIRED.search(value) else None
    items = value.items() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        for part in item if isinstance(value, dict) else (item,):
            if found := unstorable_text(part):
                return found
    return None


UNPAIRED = re.compile("[\ud800-\udfff]")


def body_text(row: Row[Any]) -> str:
    """The body as text; bytes that are not UTF-8 become U+FFFD (the JSON parse then says why)."""
    return bytes(row.body).decode("utf-8", errors="replace")


def fingerprint(row: Row[Any]) -> str:
    """The quarantine fingerprint of a record whose raw text is this body."""
    return sha256_text(body_text(row))


def records_of(kind: str, fmt: str, data: dict[str, Any], raw: str, origin: str) -> list[Any]:
    """A JSON body → the records a file line with the same body would give."""
    from tasks.intake.formats import order_from_json, products_from_shopify
    from tasks.tracking.formats import event_from_json, shipments_from_json

    if kind == "orders":
        return [order_from_json(data, fmt, raw, origin)]
    if kind == "products":
        return list(products_from_shopify(data, raw, origin))
    if kind == "shipments":
        return list(shipments_from_json(data, fmt, raw, origin))
    return [event_from_json(data, fmt, raw, origin)]


def apply_embedded_refunds(session: Session, routed: list[_Routed], now: datetime, rt: Runtime
                           ) -> None:
    """Refunds ride inside Shopify's order bodies (orders/updated ...): each is applied like a
    refunds/create delivery (once per refund id), whatever intake made of the order version."""
    from tasks.lifecycle import apply_embedded_refunds as apply_refunds

    bodies = []
    for item in routed:
        if item.kind == "orders" and item.row.provider == "shopify" and item.outcome in (
                None, PROCESSED):
            data = json.loads(body_text(item.row))
            if isinstance(data.get("refunds"), list) and data["refunds"]:
                bodies.append(data)
    if bodies:
        apply_refunds(session, bodies, now, rt)


def run_actions(session: Session, routed: list[_Routed], now: datetime, rt: Runtime) -> None:
    """Each topic's action over its bodies (in arrival order); their outcomes onto the rows."""
    by_action: dict[str, list[_Routed]] = {}
    for item in routed:
        if item.kind == "action" and item.outcome is None:
            by_action.setdefault(ACTION_OF_TOPIC[(item.row.provider, item.row.topic)],
                                 []).append(item)
    for target, items in by_action.items():
        outcomes = resolve(target)(session, [item.records[0] for item in items], now, rt)
        for item in items:
            item.outcome, item.reason = outcomes.get(item.row.id, (PROCESSED, None))


def resolve(target: str) -> Any:
    """`package.module:function` → the function (imported only when its topic arrives)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def records_by_kind(routed: list[_Routed]) -> dict[str, list[Any]]:
    """Records still to store, by kind; orders newest-last so the newest version of each wins."""
    by_kind: dict[str, list[Any]] = {}
    for item in routed:
        if item.outcome is None and item.kind and item.kind != "action":
            by_kind.setdefault(item.kind, []).extend(item.records)
    if "orders" in by_kind:
        by_kind["orders"].sort(key=_source_updated_at)
    return by_kind


def _source_updated_at(record: Any) -> datetime:
    """Shopify's `updated_at` of an order record; unknown sorts first (arrival order kept)."""
    return source_updated_at(record) or EARLIEST


EARLIEST = datetime.min.replace(tzinfo=UTC)


def source_updated_at(record: Any) -> datetime | None:
    """The `updated_at` the source stamped on this version of the record, if it did."""
    raw = record.raw_text() if isinstance(record, OrderIn) else record.raw
    try:
        stamp = datetime.fromisoformat(str(json.loads(raw)["updated_at"]))
    except (ValueError, KeyError, TypeError):
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _order_items(routed: list[_Routed]) -> list[tuple[_Routed, OrderIn, datetime]]:
    """Orders still to store that carry the source's `updated_at`."""
    found = []
    for item in routed:
        if item.kind == "orders" and item.outcome is None and isinstance(item.records[0], OrderIn):
            stamp = source_updated_at(item.records[0])
            if stamp is not None:
                found.append((item, item.records[0], stamp))
    return found


def _stored_versions(session: Session, orders: list[OrderIn]) -> dict[tuple[str, str], Any]:
    if not orders:
        return {}
    query = select(Order.source, Order.external_id, Order.source_updated_at).where(
        Order.external_id.in_({o.external_id for o in orders}))
    return {(source, ext): stamp for source, ext, stamp in session.execute(query)}


def mark_stale_orders(session: Session, routed: list[_Routed]) -> None:
    """A version older than the one stored (a late or reordered delivery) changes nothing."""
    items = _order_items(routed)
    stored = _stored_versions(session, [order for _, order, _ in items])
    for item, order, stamp in items:
        newest = stored.get((order.source, order.external_id))
        if newest is not None and stamp < newest:
            item.outcome = PROCESSED
            item.reason = f"stale: updated_at {stamp.isoformat()} is older than the stored version"


def remember_versions(session: Session, routed: list[_Routed]) -> None:
    """Stamp each stored order with the source's `updated_at` of the version it now holds."""
    table = Order.__table__
    rows = [{"b_source": o.source, "b_ext": o.external_id, "b_hash": o.payload_hash(),
             "b_stamp": stamp} for _, o, stamp in _order_items(routed)]
    if not rows:
        return
    statement = (update(table).where(table.c.source == bindparam("b_source"),
                                     table.c.external_id == bindparam("b_ext"),
                                     table.c.payload_hash == bindparam("b_hash"))
                 .values(source_updated_at=bindparam("b_stamp")))
    session.connection().execute(statement, rows)


def quarantined_fingerprints(session: Session, routed: list[_Routed]) -> set[str]:
    """Which of these bodies intake put into quarantine (now or at an earlier delivery)."""
    prints = {fingerprint(item.row) for item in routed if item.outcome is None}
    if not prints:
        return set()
    query = select(Quarantine.fingerprint).where(Quarantine.fingerprint.in_(prints),
                                                 Quarantine.status == "open")
    return set(session.scalars(query))


def mark_waiting(session: Session, routed: list[_Routed], now: datetime) -> None:
    """Fulfillments of orders not confirmed yet and events of parcels not known yet wait."""
    ready = _shippable_orders(session, routed)
    parcels = _known_parcels(session, routed)
    for item in routed:
        if item.outcome is not None or now - item.row.received_at > WAIT_LIMIT:
            continue
        if item.kind == "shipments" and not all(
                _order_key(r) in ready for r in item.records if not isinstance(r, Rejected)):
            item.outcome, item.reason = "waiting", "waiting for the order to be confirmed"
        elif item.kind == "events" and not all(
                r.tracking_number in parcels for r in item.records if not isinstance(r, Rejected)):
            item.outcome, item.reason = "waiting", "waiting for the parcel's fulfillment"


def _order_key(record: Any) -> tuple[str, str]:
    return record.order_source, record.order_external_id


def _shippable_orders(session: Session, routed: list[_Routed]) -> set[tuple[str, str]]:
    from tasks.tracking.ingest import SHIPPABLE

    keys = {_order_key(r) for item in routed if item.kind == "shipments" and not item.outcome
            for r in item.records if not isinstance(r, Rejected)}
    if not keys:
        return set()
    query = select(Order.source, Order.external_id).where(
        Order.external_id.in_({ext for _, ext in keys}), Order.state.in_(SHIPPABLE))
    return {tuple(row) for row in session.execute(query)} & keys


def _known_parcels(session: Session, routed: list[_Routed]) -> set[str]:
    numbers = {r.tracking_number for item in routed if item.kind == "events" and not item.outcome
               for r in item.records if not isinstance(r, Rejected)}
    if not numbers:
        return set()
    query = select(Shipment.tracking_number).where(Shipment.tracking_number.in_(numbers))
    return set(session.scalars(query))


def record_outcomes(session: Session, routed: list[_Routed], now: datetime) -> None:
    """Each row's outcome; waiting rows stay pending with their reason and one more attempt."""
    table = InboxDelivery.__table__
    statement = (update(table).where(table.c.id == bindparam("b_id"))
                 .values(status=bindparam("b_status"), reason=bindparam("b_reason"),
                         attempts=table.c.attempts + 1, processed_at=bindparam("b_at")))
    session.connection().execute(statement, [
        {"b_id": item.row.id, "b_reason": item.reason and item.reason[:500],
         "b_status": PENDING if item.outcome == "waiting" else item.outcome,
         "b_at": None if item.outcome == "waiting" else now}
        for item in routed])


# ---------------------------------------------------------------- reporting


def inbox_summary(session: Session) -> dict[str, dict[str, Any]]:
    """For `journeys report`: deliveries by provider and topic (by status), the reasons rows
    are waiting or were not acted on, and when the last delivery of each provider arrived."""
    table = InboxDelivery.__table__
    by_status = select(table.c.provider, table.c.topic, table.c.status, func.count()).group_by(
        table.c.provider, table.c.topic, table.c.status).order_by(table.c.provider, table.c.topic)
    counts: dict[str, dict[str, int]] = {}
    for provider, topic, status, count in session.execute(by_status):
        counts.setdefault(f"{provider} {topic}", {})[status] = count
    reasons = (select(table.c.status, table.c.reason, func.count())
               .where(table.c.reason.is_not(None),
                      table.c.status.in_((PENDING, IGNORED, FAILED)))
               .group_by(table.c.status, table.c.reason))
    last = (select(table.c.provider, func.max(table.c.received_at))
            .group_by(table.c.provider))
    return {"inbox": counts,
            "inbox_reasons": {f"{'waiting' if s == PENDING else s}: {r}": n
                              for s, r, n in session.execute(reasons)},
            "inbox_last_delivery": {p: at.isoformat() for p, at in session.execute(last)}}


def requeue(session: Session, statuses: Sequence[str], topic: str | None = None) -> int:
    """Settled deliveries back to pending (after a fix, or a topic journeys now acts on)."""
    table = InboxDelivery.__table__
    statement = (update(table).where(table.c.status.in_(statuses), table.c.body != b"")
                 .values(status=PENDING, reason=None, processed_at=None))
    if topic:
        statement = statement.where(table.c.topic == topic)
    return session.execute(statement).rowcount


RETENTION = timedelta(days=30)


def purge_bodies(session: Session, now: datetime, keep: timedelta = RETENTION) -> int:
    """Empty the bodies of deliveries settled more than `keep` ago (they hold customers'
    addresses); the rows stay, so counts and delivery ids still answer "did this arrive?"."""
    table = InboxDelivery.__table__
    statement = (update(table).where(table.c.status != PENDING,
                                     table.c.processed_at < now - keep, table.c.body != b"")
                 .values(body=b""))
    return session.execute(statement).rowcount


def store_file(session: Session, path: Path, provider: str, topic: str | None, now: datetime
               ) -> int:
    """Each JSON line of a file as a delivery of `topic` (AfterShip: the body's `event`).

    The delivery id is the body's digest, so ingesting a file twice stores it once; a webhook
    with the same body is a separate delivery, which intake then counts as a duplicate.
    """
    from tasks import webhooks

    deliveries = []
    with path.open("rb") as handle:
        for line in handle:
            body = line.strip()
            if not body:
                continue
            delivery = (webhooks.aftership_delivery(body) if provider == "aftership"
                        else Delivery(provider, topic or "", webhooks.body_digest(body), body))
            deliveries.append(replace(delivery, delivery_id="file:" + webhooks.body_digest(body)))
    for chunk in chunks(deliveries, 1000):
        store(session, chunk, now)
    return len(deliveries)
